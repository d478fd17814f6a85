"""The registry as a whole: every op has a one-line docstring, a coherent signature, cases in
tests/_cases.py's table on every target, and a row in docs/language.md's op table."""

from __future__ import annotations

import re
from pathlib import Path

from _cases import BINARY, CASES, COMPARE, STRUCTURAL, SYMBOLIC, TARGETS, UNARY

from kiln.compiler import ops
from kiln.compiler.ops import REGISTRY, REQUIRED, Prop, lookup

LANGUAGE = Path(__file__).resolve().parent.parent / "docs" / "language.md"
# every op a model or the elaborator can use; the structural ones hold graphs and are tested
# with whole models
PRIMITIVES = set(REGISTRY) - STRUCTURAL


def test_package_exports_and_lookup():
    assert {"REGISTRY", "lookup", "OpRecord", "Arg", "OpError", "REQUIRED"} <= set(ops.__all__)
    assert lookup("conv") is REGISTRY["conv"] and lookup("no_such_op") is None
    assert STRUCTURAL <= set(REGISTRY)


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
    assert macs == {"matmul", "matmul_at", "matmul_bt", "matmul_strided", "attention_strided",
                    "shifted_matmul", "conv", "conv_transpose", "depthwise_weight_grad"}
    for name in ("add", "sub", "mul", "div", "pow", "less", "equal", "where", "maximum"):
        assert REGISTRY[name].promote and REGISTRY[name].has(Prop.ELEMENTWISE), name
    assert not REGISTRY["exp"].promote and REGISTRY["exp"].has(Prop.ELEMENTWISE)
    assert not REGISTRY["sum"].has(Prop.ELEMENTWISE)
    assert REGISTRY["reshape"].has(Prop.MOVEMENT)
    multi = {n for n in PRIMITIVES if REGISTRY[n].has(Prop.MULTI_OUTPUT)}
    assert multi == {"split"}


def test_every_op_has_cases_on_every_target():
    """Adding an op: its record, its cases in tests/_cases.py, its row in docs/language.md."""
    for target in sorted(TARGETS):
        tested = {c.op for c in CASES + SYMBOLIC if target in c.targets}
        untested = sorted(PRIMITIVES - tested)
        assert not untested, (f"ops without a case on the {target} target: {untested}; add "
                              "cases to tests/_cases.py, in the section of the op's family")
    unknown = sorted({c.op for c in CASES + SYMBOLIC} - PRIMITIVES)
    assert not unknown, f"tests/_cases.py has cases of ops that do not exist: {unknown}"


def test_every_op_is_checked_against_an_independent_oracle():
    """The reference itself: tests/test_ops_*.py hold loops and hand-computed cases, and
    test_ops_elementwise.py checks the ops of _cases.py's scalar tables against Python's math."""
    here = Path(__file__).parent
    text = "".join(p.read_text(encoding="utf-8") for p in here.glob("test_ops_*.py")
                   if p.name != Path(__file__).name)
    scalar = set(UNARY) | set(BINARY) | set(COMPARE)
    unchecked = sorted(n for n in PRIMITIVES - scalar if f'"{n}"' not in text)
    assert not unchecked, (f"ops the reference is never checked for: {unchecked}; add the scalar "
                           "definition to tests/_cases.py's UNARY or BINARY, or a test to "
                           "tests/test_ops_<family>.py")


def test_every_op_has_a_lowering_on_every_target():
    no_onnx = sorted(n for n in PRIMITIVES if REGISTRY[n].onnx is None)
    no_native = sorted(n for n in PRIMITIVES if REGISTRY[n].llvm is None)
    assert not no_onnx, f"ops without an ONNX emitter (OpRecord.onnx): {no_onnx}"
    assert not no_native, f"ops without a native lowering (OpRecord.llvm): {no_native}"


def test_every_op_is_in_the_docs_op_table():
    """tests/test_docs.py checks each row's signature and text; this, that no op lacks one."""
    listed = set(re.findall(r"^\| `(\w+)` \| `\w+\(", LANGUAGE.read_text(encoding="utf-8"),
                            re.M))
    missing = sorted(PRIMITIVES - listed)
    assert not missing, f"ops without a row in docs/language.md's op table: {missing}"
