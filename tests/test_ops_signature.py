"""compiler/ops/signature.py on its own: a call's arguments bound to an op record's `Arg`s the way
the elaborator binds them, without the elaborator (a graph builder binds through it too)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from kiln.compiler.errors import KilnError, Span
from kiln.compiler.ops import REGISTRY
from kiln.compiler.ops.signature import bind_arguments, tensor_slot_names

CALL = Span("m.kiln", 3, 5, 3, 30)
ARG = Span("m.kiln", 3, 12, 3, 13)


def test_positional_keyword_and_default_arguments_bind_in_signature_order():
    rec = REGISTRY["softmax"]
    got = bind_arguments(rec, [("x", ARG)], {}, CALL)
    assert list(got) == [a.name for a in rec.args]
    assert got["x"] == ("x", ARG)
    assert got["axis"] == (-1, CALL)  # a default is located at the call
    got = bind_arguments(rec, [], {"axis": (1, ARG), "x": ("x", ARG)}, CALL)
    assert got["axis"] == (1, ARG)


@pytest.mark.parametrize("args, kwargs, message, where", [
    ([("x", ARG), (1, ARG), (2, CALL)], {}, "softmax takes at most 2 arguments (x, axis), got 3",
     CALL),
    ([("x", ARG)], {"axes": (1, ARG)}, "softmax has no argument axes", ARG),
    ([("x", ARG)], {"x": ("y", ARG)}, "softmax: argument x given twice", ARG),
    ([], {"axis": (1, ARG)}, "softmax is missing its argument x", CALL),
])
def test_each_binding_failure_is_a_located_k0201(args, kwargs, message, where):
    with pytest.raises(KilnError) as info:
        bind_arguments(REGISTRY["softmax"], args, kwargs, CALL)
    assert (info.value.code, info.value.message, info.value.span) == ("K0201", message, where)


def test_a_misspelled_keyword_gets_a_hint():
    with pytest.raises(KilnError) as info:
        bind_arguments(REGISTRY["softmax"], [("x", ARG)], {"axsi": (1, ARG)}, CALL)
    assert info.value.hint == "did you mean axis?"


def test_a_tensor_list_fills_as_many_slots_as_it_has_tensors():
    assert tensor_slot_names(REGISTRY["concat"], 3) == ["xs"] * 3
    assert tensor_slot_names(REGISTRY["where"], 3) == ["cond", "a", "b"]


def test_importing_it_does_not_import_the_elaborator():
    code = ("import sys; import kiln.compiler.ops.signature; "
            "print(any(m.startswith('kiln.compiler.elaborate') for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60)
    assert out.stdout.strip() == "False"
