"""Sizes that overflow: element counts and byte sizes past what int64 or the address space can
hold, from the inputs of a call (checked before native code or onnxruntime runs: K0505) or
written in the model (refused at compile time: K0304); input values that do not fit the input's
dtype (K0502); and the AOT library's `kiln_plan`, which reports such sizes with -1."""

from __future__ import annotations

import ctypes
import shutil
import subprocess
import sys

import numpy as np
import pytest
from _hostile import assert_kiln_error, run_child

import kiln
from kiln import KilnError

TARGETS = ["reference", "native", "onnx"]

# std.transformer's causal attention: the [T, T] mask does not depend on the batch, so a
# zero-byte input of T = 2**32 makes a mask of 2**64 elements (wrapping int64 to 0)
CAUSAL = """
import std.transformer

model Causal {
  attn = transformer.MultiheadAttention(8, 2, batch_first = true, is_causal = true)
  forward(x: f32[B, T, 8]) -> f32[B, T, 8] {
    y, w = attn(x, x, x)
    return y
  }
}
"""

# a child's last line is `KilnError <code>` when the attack ended in a KilnError
CALL = """
import numpy as np, kiln
try:
    m = kiln.compile({src!r}, target={target!r})
    {call}
    print("no error")
except kiln.KilnError as e:
    print(e)
    print("KilnError", e.code)
"""


# a 4 GiB address space: an allocation beyond it fails, whatever the host's memory
LIMIT_MEMORY = "import resource\nresource.setrlimit(resource.RLIMIT_AS, (1 << 32, 1 << 32))\n"


def _child(src: str, target: str, call: str, limit_memory: bool = False):
    code = CALL.format(src=src, target=target, call=call)
    return run_child(LIMIT_MEMORY + code if limit_memory else code, timeout=300)


@pytest.mark.parametrize("target", TARGETS)
def test_a_zero_byte_input_whose_sizes_overflow_an_intermediate_is_refused(target):
    outcome = _child(CAUSAL, target, "m(np.zeros((0, 2**32, 8), np.float32))")
    assert_kiln_error(outcome, "K0505")
    assert "2**32" in outcome.stdout or "4294967296" in outcome.stdout  # it names the sizes


@pytest.mark.parametrize("target", TARGETS)
def test_the_same_model_still_runs_at_ordinary_sizes(target):
    m = kiln.compile(CAUSAL, target=target)
    y = m(np.ones((0, 3, 8), np.float32))
    assert y.shape == (0, 3, 8)
    assert m(np.ones((2, 3, 8), np.float32)).shape == (2, 3, 8)


# a [N, N] mask that does not depend on the batch: a zero-byte input can make it huge
OUTER = """
model Outer {
  forward(x: f32[B, N]) -> f32[B] {
    m = arange(N)[none, :] > arange(N)[:, none]
    return sum(x, axis = 1) + sum(where(m, 1.0, 0.0))
  }
}
"""


@pytest.mark.parametrize("target", ["reference", "native"])
def test_a_size_within_limits_that_memory_cannot_hold_is_a_kiln_error(target):
    """2**23 x 2**23 bools (64 TiB) fit int64 and the address space, but not this process."""
    outcome = _child(OUTER, target, "m(np.zeros((0, 2**23), np.float32))", limit_memory=True)
    assert_kiln_error(outcome, "K0505")


def test_a_kernel_whose_heap_block_cannot_be_allocated_reports_it():
    """scatter folds into heap blocks of its result's size: 3 GiB here, past the child's
    4 GiB address space with the inputs; a null block was written through (SIGSEGV)."""
    src = ("model S { forward(x: f32[N], i: i64[N], y: f32[M]) -> f32[M] "
           "{ return scatter(x, i, M) } }")
    outcome = _child(src, "native", "m(np.ones(2, np.float32), np.array([0, 1]), "
                     "np.zeros(1 << 28, np.float32))", limit_memory=True)
    assert_kiln_error(outcome, "K0505")
    assert "out of memory" in outcome.stdout


def test_onnxruntime_failing_on_sizes_within_the_limit_is_a_kiln_error():
    """tile to 12 TiB: within kiln's limit, past onnxruntime's own (or this child's memory);
    its InvalidArgument or Fail reached the caller raw."""
    src = "model M { forward(x: f32[B]) { return tile(x, [2**40]) } }"
    outcome = _child(src, "onnx", "m(np.ones(3, np.float32))", limit_memory=True)
    assert_kiln_error(outcome, "K0505")
    assert "onnxruntime could not run this call" in outcome.stdout


@pytest.mark.parametrize("target", TARGETS)
def test_constant_sizes_that_overflow_are_refused_at_compile_time(target):
    """`zeros([2**32, 2**32]) + x` once wrapped to an empty tensor in native code (-inf)."""
    src = ("model Z {\n  forward(x: f32[1]) -> f32[] {\n"
           "    z = zeros([2**32, 2**32]) + x\n    return max(z)\n  }\n}\n")
    outcome = _child(src, target, "m(np.ones(1, np.float32))")
    assert_kiln_error(outcome, "K0304")
    assert "3 |" in outcome.stdout  # located at the expression


@pytest.mark.parametrize("source, line", [
    ("model M {\n  forward(x: f32[4]) -> f32[4] {\n    z = zeros([2**62])\n"
     "    return x + z[0:4]\n  }\n}\n", 3),
    ("model M {\n  forward(x: f32[4]) -> f32[4] {\n    z = zeros([0, 2**62])\n"
     "    return x\n  }\n}\n", 3),
    ("model M {\n  forward(x: f32[2**62]) -> f32[2**62] {\n    return x\n  }\n}\n", 2),
    ("model M {\n  forward(x: f32[B, 2**40, 2**40]) -> f32[B] {\n    return x[:, 0, 0]\n"
     "  }\n}\n", 2),
    ("model M {\n  param w: [2**32, 2**32] = init.zeros()\n"
     "  forward(x: f32[4]) -> f32[4] {\n    return x\n  }\n}\n", 2),
    ("model M {\n  forward(x: f32[4]) -> f32[4] {\n    z = arange(2**61)\n"
     "    return x\n  }\n}\n", 3),
    ("model M {\n  forward(x: f32[B], y: f32[B + 2**62]) -> f32[B] {\n    return x\n"
     "  }\n}\n", 2),
    ("model M {\n  forward(x: f32[B], y: f32[2**62 * B]) -> f32[B] {\n    return x\n"
     "  }\n}\n", 2),
])
def test_sizes_past_the_limit_in_a_source_are_located_errors(source, line):
    with pytest.raises(KilnError) as info:
        kiln.compile(source, target="reference")
    assert info.value.code == "K0304", info.value
    assert info.value.span is not None and info.value.span.line == line


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("expr", ["x[2**62]", "x[0:4:2**62]", "x[:2**62]", "x[-2**62:]",
                                  "arange(0, 2**62, 2**61)", "tril(ones([B, B]), 2**62)",
                                  "max_pool(reshape(x, [1, 1, B]), 2, stride = 2**62)"])
def test_integer_attributes_past_the_attribute_limit_are_located_errors(target, expr):
    """Once: x[2**70] wrapped to x[0] and arange(0, 2**70, 2**69) wrapped its values in
    native code; the ONNX export and the reference raised OverflowError or ValueError. A literal
    past int64 is now the source's own K0206 (test_hostile_sources); these fit int64 but not
    the attribute limit of 2**62."""
    src = f"model M {{\n  forward(x: f32[B]) {{\n    return {expr}\n  }}\n}}\n"
    with pytest.raises(KilnError) as info:
        kiln.compile(src, target=target)
    assert info.value.code in ("K0303", "K0304") and info.value.span.line == 3


@pytest.mark.parametrize("init", ["zeros", "normal"])
def test_parameters_too_large_for_memory_are_a_located_error(init):
    """4 TiB of f32 is within the size limit but not this child's 4 GiB (MemoryError)."""
    src = (f"model M {{\n  param w: [2**20, 2**20] = init.{init}()\n"
           "  forward(x: f32[4]) -> f32[4] {\n    return x\n  }\n}\n")
    outcome = _child(src, "reference", "pass", limit_memory=True)
    assert_kiln_error(outcome, "K0304")
    assert "2 |" in outcome.stdout


def test_a_size_just_below_the_limit_compiles():
    src = ("model M {\n  forward(x: f32[B, 2**20, 2**20]) -> f32[B] {\n"
           "    return x[:, 0, 0]\n  }\n}\n")
    m = kiln.compile(src, target="reference")
    assert m.inputs[0].type.shape[2].value == 2**20


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kiln.cli", *args], capture_output=True,
                          text=True, timeout=120)


def test_kiln_params_counts_exactly_and_refuses_impossible_sizes(tmp_path):
    big = tmp_path / "big.kiln"
    big.write_text("model M {\n  param w: [2**20, 2**20] = init.zeros()\n"
                   "  param v: [2**20, 2**20] = init.zeros()\n"
                   "  forward(x: f32[4]) -> f32[4] {\n    return x\n  }\n}\n")
    proc = _cli("params", str(big))
    assert proc.returncode == 0, proc.stderr
    assert f"total parameters: {2 * 2**40:,}" in proc.stdout
    huge = tmp_path / "huge.kiln"
    huge.write_text(big.read_text().replace("2**20, 2**20", "2**32, 2**32"))
    proc = _cli("params", str(huge))
    assert proc.returncode == 1 and "K0304" in proc.stderr, proc.stdout + proc.stderr


@pytest.mark.skipif(not shutil.which("cc"), reason="linking needs cc")
def test_kiln_plan_reports_sizes_that_overflow_instead_of_wrapping(tmp_path):
    path = tmp_path / "pairs.kiln"
    path.write_text(OUTER)
    from kiln.cli import main

    assert main(["compile", str(path), "--target", "native", "-o", str(tmp_path / "p.so")]) == 0
    lib = ctypes.CDLL(str(tmp_path / "p.so"))
    lib.kiln_plan.restype = ctypes.c_int64
    lib.kiln_plan.argtypes = [ctypes.POINTER(ctypes.c_int64), ctypes.POINTER(ctypes.c_int64)]
    offsets = (ctypes.c_int64 * 64)()

    def plan(b: int, n: int) -> int:
        return lib.kiln_plan((ctypes.c_int64 * 2)(b, n), offsets)

    assert plan(2, 5) > 25  # at least the [5, 5] mask
    assert plan(0, 5) > 25  # the mask does not depend on the batch
    for b, n in [(0, 2**32), (1, 2**32), (0, 2**31 + 1), (1, -1), (-1, 4), (2**62, 2**62),
                 (0, 2**62), (1, 2**24)]:
        assert plan(b, n) == -1, (b, n)
    header = (tmp_path / "p.h").read_text()
    assert "returns -1 when" in header  # the header says what -1 means
    m = kiln.load_compiled(tmp_path / "p.so")  # kiln's runtime asks kiln_plan too
    assert m(np.ones((2, 5), np.float32)).shape == (2,)
    with pytest.raises(KilnError) as info:
        m(np.zeros((0, 2**32), np.float32))
    assert info.value.code == "K0505"


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("dtype, value", [("i32", [2**40 + 1]), ("i32", [-(2**31) - 1]),
                                          ("i64", [2**63]), ("f32", [1e39]),
                                          ("f16", [70000]), ("f16", [1e300])])
def test_plain_numbers_that_do_not_fit_the_input_dtype_are_refused(target, dtype, value):
    m = kiln.compile(f"model M {{ forward(x: {dtype}[N]) -> {dtype}[N] {{ return x }} }}",
                     target=target)
    with pytest.raises(KilnError) as info:
        m(value)
    assert info.value.code == "K0502"


@pytest.mark.parametrize("target", TARGETS)
def test_plain_numbers_that_fit_still_convert(target):
    m = kiln.compile("model M { forward(x: i32[N], y: f32[N]) -> f32[N] { return y + x } }",
                     target=target)
    out = m([2**31 - 1, -(2**31)], [float("inf"), 0.5])
    np.testing.assert_array_equal(out, np.array([np.inf, -(2.0**31)], np.float32))
