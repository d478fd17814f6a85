"""The inputs of a model a trainer feeds besides the examples: noise and whole arrays.

- **Noise** (`Trainer(noise=["eps"])`, `kiln train --noise eps`): a float input of shape
  [batch, fixed sizes...], such as a VAE's reparameterisation noise eps ~ N(0, 1), is drawn by
  the trainer for every batch from numpy's Generator seeded by [seed, step] (the same key as
  training-mode dropout's), and at evaluation by [seed, 0, first example of the batch], so the
  same run draws the same noise and every evaluation the same. step and evaluate take the
  other inputs only.
- **Per-example inputs** are those whose axis 0 is the first input's (the batch B, or the
  node count N of a graph): evaluate slices them in batches. An input that is not (a graph's
  edge_index [2, E]) is given whole, and a model that has one is evaluated in one batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from kiln.compiler.dims import Dim, known_value
from kiln.compiler.errors import KilnError
from kiln.compiler.types import NUMPY_DTYPES

FLOAT_DTYPES = ("f16", "f32", "f64")


def per_example(inputs: list) -> set[str]:
    """The names of the input Ports whose axis 0 is the first input's axis 0."""
    first = inputs[0].type.shape if inputs else ()
    if not first:
        return set()
    return {p.name for p in inputs if p.type.shape and p.type.shape[0] == first[0]}


def noise_inputs(inputs: list, names: Sequence[str]) -> dict:
    """The Ports of the inputs `names` to draw as noise, checked: each an input of the model
    but not its first (K0846), a float of shape [batch, fixed sizes...] (K0847)."""
    names = [names] if isinstance(names, str) else list(names)
    by_name = {p.name: p for p in inputs}
    noise = {}
    for name in names:
        port = by_name.get(name)
        if port is None or port is inputs[0]:
            raise KilnError("K0846", f"noise input {name!r} is not an input of the model after "
                            "its first", hint=f"its inputs: {', '.join(by_name)}")
        rest = [known_value(Dim.of(d)) for d in port.type.shape[1:]]
        if (port.type.dtype not in FLOAT_DTYPES or name not in per_example(inputs)
                or None in rest):
            first = inputs[0].type.shape
            raise KilnError("K0847", f"noise input {port} must be a float of shape [batch, "
                            "fixed sizes...], its axis 0 the first input's "
                            f"({first[0] if first else 'none'})",
                            hint="fix its other sizes with the model's arguments")
        noise[name] = port
    return noise


def draw_noise(noise: dict, rows: int, key: list[int]) -> dict[str, np.ndarray]:
    """Standard normal arrays for the noise Ports `noise` (in order), `rows` examples each,
    from numpy's Generator seeded by `key`."""
    if not noise:
        return {}
    rng = np.random.default_rng(key)
    return {name: rng.standard_normal(
                (rows, *(known_value(Dim.of(d)) for d in port.type.shape[1:])))
            .astype(NUMPY_DTYPES[port.type.dtype])
            for name, port in noise.items()}


__all__ = ["draw_noise", "noise_inputs", "per_example"]
