"""Every op record's ONNX emitter: the exported one-op graph passes onnx's full check and strict
shape inference, and onnxruntime (and, where it runs the op, onnx's ReferenceEvaluator) computes
what the op's numpy reference computes, for each dtype the op takes and for symbolic sizes.

The cases are tests/_cases.py's table (those whose targets include "onnx"); the tolerances
tests/_tolerance.py's.
"""

from __future__ import annotations

import pytest
from _cases import BINDINGS, CASES, SYMBOLIC, T, random_divmod_inputs
from _onnxtest import check, compare, export_op
from _optest import bind

import kiln
from kiln.compiler.errors import KilnError

ONNX_CASES = [c for c in CASES if "onnx" in c.targets]
ONNX_SYMBOLIC = [c for c in SYMBOLIC if "onnx" in c.targets]
# sizes that only attributes use (arange(T), scatter's N) come from an unused input
ANCHOR = (T(["B", "H", "W", "T", "N"]),)


@pytest.mark.parametrize("c", ONNX_CASES, ids=[c.id for c in ONNX_CASES])
def test_op_matches_reference(c):
    check(c.op, *c.args, second_oracle=c.second_oracle, **c.kwargs)


@pytest.mark.parametrize("c", ONNX_SYMBOLIC, ids=[c.id for c in ONNX_SYMBOLIC])
def test_symbolic_sizes_from_one_export(c):
    """Export once, run at each binding."""
    _, makers, attrs = bind(c.op, c.args, dict(c.kwargs))
    proto = export_op(c.op, c.types, attrs, anchors=ANCHOR)
    for env in BINDINGS:
        compare(proto, c.op, [None if m is None else m(env) for m in makers], attrs, env)


def test_floor_division_matches_numpy_bit_for_bit_on_random_floats():
    """The emitted divmod (fmod, the step toward -inf, the quotient rounded to an integer) on
    random f32 values of every magnitude: numpy's results exactly, as native code gives."""
    a, b = random_divmod_inputs()
    for op in ("floor_div", "mod"):
        check(op, a, b)


# what ONNX cannot say -------------------------------------------------------------------------
def test_padding_of_symbolic_size_is_a_located_error():
    """'same' padding of a kernel whose size is known only at run time: ONNX pads are
    attributes, so the export stops with K0701 at the conv instead of writing an invalid file."""
    source = """
model M {
  forward(x: f32[1, 3, 8, 8], w: f32[4, 3, K, K]) -> f32[1, 4, 8, 8] {
    return conv(x, w, padding = "same")
  }
}
"""
    with pytest.raises(KilnError) as info:
        kiln.compile(source, target="onnx")
    assert info.value.code == "K0701"
    assert "cannot express in ONNX: padding that depends on a symbolic size" in str(info.value)
    assert info.value.span is not None and info.value.span.line == 4
