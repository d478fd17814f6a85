"""The registry as a whole: every op has a one-line docstring, a coherent signature and tests."""

from __future__ import annotations

import pathlib

from kiln.compiler import ops
from kiln.compiler.ops import REGISTRY, REQUIRED, lookup

# the primitives of the language design, by family module
FAMILY_OPS = {
    "elementwise": """neg abs exp log sqrt rsqrt sin cos tanh sigmoid relu leaky_relu elu gelu silu
        softplus erf floor ceil sign reciprocal clip hard_sigmoid hard_swish logical_not cast
        add sub mul div floor_div mod pow maximum minimum equal not_equal less greater less_equal
        greater_equal logical_and logical_or where""",
    "reduce": "sum mean max min prod argmax argmin softmax log_softmax logsumexp",
    "nn": """layer_norm batch_norm group_norm instance_norm dropout conv conv_transpose max_pool
        avg_pool global_avg_pool resize""",
    "linalg": "matmul",
    "shape": """reshape flatten transpose permute concat stack split flip gather take_along_axis
        scatter scatter_add pad broadcast_to squeeze unsqueeze tile tril triu arange zeros ones
        full one_hot dim_value slice""",
}
PRIMITIVES = {name for names in FAMILY_OPS.values() for name in names.split()}


def test_package_exports_and_lookup():
    assert {"REGISTRY", "lookup", "OpRecord", "Arg", "OpError", "REQUIRED"} <= set(ops.__all__)
    for family in FAMILY_OPS:
        assert hasattr(ops, family)
    assert lookup("conv") is REGISTRY["conv"] and lookup("no_such_op") is None
    assert len(PRIMITIVES) == 92 and PRIMITIVES <= set(REGISTRY)


def test_every_record_is_well_formed():
    for name in PRIMITIVES:
        record = REGISTRY[name]
        assert record.name == name
        assert record.doc and "\n" not in record.doc, name
        names = [a.name for a in record.args]
        assert len(names) == len(set(names)), name
        assert sum(a.kind == "tensors" for a in record.args) <= 1, name
        assert all(a.kind in ("tensor", "tensor?", "tensors", "attr") for a in record.args)
        optional = [a for a in record.args if a.kind == "tensor?"]
        assert all(a.default is None for a in optional), name
        assert all(a.default is not REQUIRED or a.kind == "attr" or a.kind.startswith("tensor")
                   for a in record.args)


def test_flags():
    macs = {n for n in PRIMITIVES if REGISTRY[n].macs is not None}
    assert macs == {"matmul", "conv", "conv_transpose"}
    for name in ("add", "sub", "mul", "div", "pow", "less", "equal", "where", "maximum"):
        assert REGISTRY[name].promote and REGISTRY[name].elementwise, name
    assert not REGISTRY["exp"].promote and REGISTRY["exp"].elementwise
    assert not REGISTRY["sum"].elementwise
    assert "movement" in REGISTRY["reshape"].tags
    multi = {n for n in PRIMITIVES if "multi_output" in REGISTRY[n].tags}
    assert multi == {"split"}


def test_every_op_is_exercised_by_a_test():
    text = "".join(p.read_text() for p in pathlib.Path(__file__).parent.glob("test_ops_*.py"))
    untested = [n for n in PRIMITIVES if f'"{n}"' not in text]
    assert not untested, untested
