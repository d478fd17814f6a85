"""Sizes for a compiled model's symbols that satisfy its `where X % k == 0` facts."""

from __future__ import annotations


def symbol_sizes(model, sizes: dict[str, int], default: int) -> dict[str, int]:
    """A size for every symbol of `model`: from `sizes` (else `default`), rounded up to the
    multiple its `where` facts ask for (a U-Net's H % 4 == 0 turns 3 into 4)."""
    facts = model.model.graph.size_facts()
    out = {}
    for s in model.model.symbols:
        k = facts.get(s, 1)
        out[s] = -(-sizes.get(s, default) // k) * k
    return out
