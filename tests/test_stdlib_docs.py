"""docs/stdlib.md is generated from the stdlib sources and kept in step with them."""

from __future__ import annotations

from pathlib import Path

from kiln.stdlib_docs import generate

DOC = Path(__file__).resolve().parents[1] / "docs" / "stdlib.md"


def test_stdlib_reference_is_up_to_date():
    assert DOC.read_text(encoding="utf-8") == generate(), (
        "docs/stdlib.md is stale: regenerate it with `python -m kiln.stdlib_docs > docs/stdlib.md`"
    )


def test_every_public_block_is_documented():
    text = DOC.read_text(encoding="utf-8")
    for name in ("Linear", "Conv2d", "BatchNorm2d", "LayerNorm", "Embedding"):
        assert f"block {name}(" in text
