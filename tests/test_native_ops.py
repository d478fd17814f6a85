"""Every op of tests/_cases.py's table whose targets include "native", compiled to native code,
against its numpy reference on the same inputs, within tests/_tolerance.py's tolerance for the
op: each dtype the op takes, broadcasting, size-1 and prime sizes, symbolic sizes at two
bindings, and edge values (NaN, inf, -0.0, division by zero, negative indices).

The cases of one group go into one native model (one graph node each), so a group compiles
once. The convolution, pooling, normalization and matmul groups run in test_native_nn.py.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
from _cases import BINDINGS, SYMBOLIC, cases, one_case, random_divmod_inputs
from _nativetest import assembly, check, check_native_only
from _tolerance import assert_agree

import kiln
from kiln import KilnError
from kiln.compiler.types import NUMPY_DTYPES as NP


# the table, group by group ------------------------------------------------------------------
@pytest.mark.parametrize("group", ["unary", "binary", "reduce", "movement", "index", "creation"])
def test_table(group):
    check(cases("native", group))


@pytest.mark.parametrize("groups", [("unary", "binary"), ("reduce",),
                                    ("movement", "index", "creation")])
def test_table_on_symbolic_sizes(groups):
    check([c for g in groups for c in cases("native", g, SYMBOLIC)], BINDINGS)


def test_floor_division_matches_numpy_bit_for_bit_on_random_floats():
    a, b = random_divmod_inputs()
    check([one_case("floor_div", a, b), one_case("mod", a, b)])


def test_integer_pow_with_negative_exponents_is_refused():
    """numpy and torch refuse these, and so does native code (K0505), as every target: the
    truncated 1 / x^-y it once gave silently is no integer power."""
    cases = [one_case("pow", np.array([1, -1, -1, 2, 0, -3], np.int32),
                      np.array([-5, -3, -2, -1, -1, -2**31], np.int32))]
    with pytest.raises(KilnError) as info:
        check_native_only(cases)
    assert info.value.code == "K0505" and "negative integer power" in info.value.message


def test_out_of_range_indices_are_reported_and_never_read_or_written():
    """The reference stops with K0505 on these; native code goes on safely (clamping the index,
    or skipping the element) and the call then raises K0505 too."""
    x = np.arange(5, dtype=np.float32) * 10
    for c in (one_case("gather", x, np.array([7, -9, 2, 5, -6])),
              one_case("take_along_axis", x[None], np.array([[9, -9]]), axis=1),
              one_case("scatter", np.array([1.0, 2.0, 4.0, 8.0], np.float32),
                       np.array([3, 9, -9, 0]), 4, reduce="max"),
              one_case("one_hot", np.array([1, 3, -1]), 3, dtype="i32")):
        with pytest.raises(KilnError) as info:
            check_native_only([c])
        assert info.value.code == "K0505" and c.op in info.value.message
    x_ok = check_native_only([one_case("gather", x, np.array([4, -5, 2]))])[0]
    np.testing.assert_array_equal(x_ok, [40, 0, 20])  # in range (negative wraps): no error


MIX = """
model Mix {
  param table: [10, 4] = init.normal()
  forward(x: f32[B, T, 4], ids: i64[N]) -> (f32[B, 4], f32[B, T - 2, 4], f32[T, 1, 4], f32[N, 4], f32[B, 4], i64[B, T], f32[B, T, 4], f32[B, T, 4], f32[B, 2 * T, 4], f32[4, 10]) {
    first = x[:, 0]
    inner = x[:, 1:T - 1]
    back = x[-1, ::-1, none]
    rows = table[ids]
    pooled = mean(x, axis = 1)
    best = argmax(x, axis = -1)
    return first, inner, back, rows, pooled, best, x * T, where(x > 0, x, 0.0) // 0.5, concat([x, x], axis = 1), table.T
  }
}
"""
# the op that computes each output last, whose tolerance it takes
MIX_OPS = ["slice", "slice", "slice", "gather", "mean", "argmax", "mul", "floor_div", "concat",
           "transpose"]


def test_indexing_and_sizes_written_in_kiln_agree_end_to_end():
    """x[...] and sizes used as values, as the elaborator emits them (slice, dim_value)."""
    native, ref = kiln.compile(MIX, target="native"), kiln.compile(MIX, target="reference")
    rng = np.random.default_rng(0)
    for b, t, n in ((1, 3, 2), (4, 7, 5)):
        x, ids = rng.standard_normal((b, t, 4)).astype(np.float32), rng.integers(0, 10, n)
        outputs = zip(MIX_OPS, native(x, ids), ref(x, ids), strict=True)
        for k, (op, g, w) in enumerate(outputs):
            assert_agree(g, w, op, f"output {k} at B={b}, T={t}")


# fused half-precision chains -------------------------------------------------------------------
HALF_CHAIN = """
model Chain {{
  forward(x: f32[N], y: f32[N]) -> f32[N] {{
    a = cast(x, "{dtype}")
    b = cast(y, "{dtype}")
    return cast((a * b + a) / (b + 3.0) - a * b * 0.1, "f32")
  }}
}}
"""


def half_chain(x: np.ndarray, y: np.ndarray, dtype: str, rounded: bool) -> np.ndarray:
    """HALF_CHAIN in numpy, in f32, each op's result rounded to `dtype` (as numpy's half
    arithmetic and separate kernels store it) or, rounded=False, only the last."""
    half = NP[dtype]

    def r(v):
        return v.astype(half).astype(np.float32) if rounded else v

    a, b = x.astype(half).astype(np.float32), y.astype(half).astype(np.float32)
    tenth = np.float32(np.array(0.1).astype(half))  # Python scalars take the tensor's dtype
    ab = r(a * b)
    out = r(r(r(ab + a) / r(b + np.float32(3.0))) - r(ab * tenth))
    return out.astype(half).astype(np.float32)


@pytest.mark.parametrize("dtype", ["f16", "bf16"])
def test_fused_half_chains_round_between_ops_as_separate_kernels(dtype):
    """One fused kernel computes the chain in f32 registers; it must round every intermediate
    to the half dtype as separate kernels (and numpy's half arithmetic) would: each op here is
    exact in f32 before that rounding, so the result is bit for bit numpy's. Without the
    rounding (or with mul and add contracted into one FMA) about a third of the values land
    one or more half ulps away, which no tolerance should hide."""
    native = kiln.compile(HALF_CHAIN.format(dtype=dtype), target="native")
    graph = native.lowered().graph
    fused = [graph.node(n)["attrs"]["ops"] for n in graph.order() if graph.op(n) == "fused"]
    assert any({"mul", "add", "div", "sub"} <= set(ops) for ops in fused), fused
    rng = np.random.default_rng(5)
    x, y = (rng.uniform(low, 4, 4099).astype(NP[dtype]).astype(np.float32) for low in (-4, -2.5))
    want = half_chain(x, y, dtype, rounded=True)
    unrounded = half_chain(x, y, dtype, rounded=False)
    assert (want != unrounded).mean() > 0.1  # the inputs tell the two apart
    np.testing.assert_array_equal(kiln.compile(HALF_CHAIN.format(dtype=dtype),
                                               target="reference", opt_level=0)(x, y), want)
    assert_agree(native(x, y), want, "sub", f"fused {dtype} chain", exact=True)


@pytest.mark.parametrize("op", ["softmax", "log_softmax"])
def test_softmax_rows_of_every_length_and_special_value_agree_with_numpy(op):
    """The last axis in f32 runs as explicit vectors per row (a tail mask for lengths that are
    not a multiple of the vector width) whose rows threads share: every length about the
    width, rows with NaN, +-inf and all -inf, on one and two threads, against the reference."""
    src = (f"model S {{ forward(x: f32[R, L]) -> f32[R, L] {{ return {op}(x, axis = -1) }} }}")
    ref = kiln.compile(src, target="reference")
    one, two = kiln.compile(src, threads=1), kiln.compile(src, threads=2)
    rng = np.random.default_rng(7)
    special = [np.nan, np.inf, -np.inf, 80.0, -80.0]
    for length in (1, 3, 7, 8, 9, 15, 16, 17, 31, 33, 64, 100, 129):
        rows = 700 if length in (64, 100) else 37  # 700 x 64: enough to start the threads
        x = rng.uniform(-30, 30, (rows, length)).astype(np.float32)
        x[1, rng.integers(length)] = np.nan
        x[2, :] = -np.inf
        x[3, rng.integers(length)] = np.inf
        x[4, rng.integers(length, size=length // 2 + 1)] = -np.inf
        x[5, rng.integers(length)] = special[length % len(special)]
        want = ref(x)
        for native in (one, two):
            got = native(x)
            np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg=f"L={length}")
            assert_agree(got, want, op, f"L={length}")
    np.testing.assert_array_equal(two(np.zeros((0, 5), np.float32)), np.zeros((0, 5)))
    assert one(np.zeros((4, 0), np.float32)).shape == (4, 0)


def test_exp_across_its_whole_range_and_past_both_ends():
    """Native f32 exp (a polynomial of kiln's own) against
    numpy's f64 exp rounded to f32: relative error at most a few ulp where the result is
    normal, denormal results within a denormal step or two, and 0, inf, NaN exactly where
    they belong (below -103.972 the result is 0, computed without producing denormals)."""
    grid = np.concatenate([np.linspace(-110, 90, 200_001), [-np.inf, np.inf, np.nan, -103.972,
                           -103.97, -103.9, -87.34, -87.33, 88.72, 88.7228, 88.7229, 88.73, 0.0,
                           -0.0, 1e-30, -1e-30]]).astype(np.float32)
    native = kiln.compile("model E { forward(x: f32[N]) -> f32[N] { return exp(x) } }")
    got = native(grid).astype(np.float64)
    with np.errstate(over="ignore"):
        want = np.exp(grid.astype(np.float64)).astype(np.float32).astype(np.float64)
    tiny = np.finfo(np.float32).tiny
    normal = want >= tiny
    np.testing.assert_allclose(got[normal], want[normal], rtol=4e-7)
    low = (want < tiny) & (want > 0)
    np.testing.assert_allclose(got[low], want[low], rtol=0, atol=3e-45)
    for pick in (want == 0, np.isinf(want), np.isnan(want)):
        np.testing.assert_array_equal(got[pick], want[pick])


@pytest.mark.parametrize("op", ["tanh", "sigmoid"])
def test_tanh_and_sigmoid_across_their_whole_range(op):
    """Native f32 tanh and sigmoid (kiln's own polynomials, e^x without exp's guards on a
    clamped argument) against numpy in f64 on a dense grid past both ends and on small
    magnitudes: within 3 ulp where the result is a normal float; sigmoid's denormal results
    (a in [-88.72, -88)) within 6.1e-39, and exactly 0 below -88.72 and at -inf; tanh odd to
    the sign of zero; +-inf and NaN exactly."""
    small = np.geomspace(1e-30, 1.0, 20_001)
    grid = np.concatenate([np.linspace(-110, 110, 400_001), small, -small,
                           [-np.inf, np.inf, np.nan, 0.0, -0.0, 0.4, 0.39999998, -87.0, -88.0,
                            -88.5, -88.7228, -88.7229, 9.99, 10.0, 10.01]]).astype(np.float32)
    native = kiln.compile(f"model E {{ forward(x: f32[N]) -> f32[N] {{ return {op}(x) }} }}")
    got = native(grid).astype(np.float64)
    x = grid.astype(np.float64)
    with np.errstate(over="ignore"):
        want = np.tanh(x) if op == "tanh" else 1 / (1 + np.exp(-x))
    tiny = np.finfo(np.float32).tiny
    normal = np.isfinite(want) & (np.abs(want) >= tiny)
    ulp = np.spacing(np.abs(want[normal]).astype(np.float32)).astype(np.float64)
    assert np.all(np.abs(got[normal] - want[normal]) <= 3 * ulp)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(grid))
    np.testing.assert_array_equal(np.signbit(got[grid == 0]), np.signbit(want[grid == 0]))
    if op == "sigmoid":
        denormal = (want < tiny) & (grid >= -88.72283935546875)
        np.testing.assert_allclose(got[denormal], want[denormal], rtol=0, atol=6.1e-39)
        assert np.all(got[grid < -88.72283935546875] == 0)
    else:
        np.testing.assert_array_equal(got[np.abs(grid) >= 10], np.sign(grid[np.abs(grid) >= 10]))


def test_exact_gelu_across_its_range_against_the_reference():
    """Native exact gelu, x/2 erfc(-x/sqrt2) with kiln's own vectorisable f32 erfc, against
    the reference (erf in f64) on a dense grid: a few 1e-6 of the value where it is above
    1e-6, and within 1e-11 below (x < -5.3, where erfc's argument squared rounds in f32)."""
    src = "model G { forward(x: f32[N]) -> f32[N] { return gelu(x) } }"
    x = np.concatenate([np.linspace(-20, 20, 100_001), [np.inf, np.nan, 0.0]]).astype(np.float32)
    with np.errstate(invalid="ignore"):
        got = kiln.compile(src)(x).astype(np.float64)
        want = kiln.compile(src, target="reference")(x).astype(np.float64)
    big = np.abs(want) >= 1e-6
    np.testing.assert_allclose(got[big], want[big], rtol=3e-6)
    np.testing.assert_allclose(got[~big], want[~big], rtol=0, atol=1e-11)


def _native_for(src: str, cpu: str | None):
    """src's model in native code for `cpu` (None: this CPU); skips where this CPU cannot
    run that code."""
    from kiln.compiler.codegen.llvm import target as targets
    from kiln.compiler.driver import Compilation
    from kiln.runtime.native import NativeModel

    target = targets.named(cpu) if cpu else targets.host()
    if target.missing_on(targets.host()):
        pytest.skip(f"this CPU cannot run code for {cpu}")
    return NativeModel(Compilation.of(kiln.load(src), cpu=target), {}, threads=1)


def _erf_grid() -> np.ndarray:
    """A dense f32 grid over [-10, 10], magnitudes from the smallest denormal to 10 of both
    signs, both sides of the erf's branch at |x| = 1, and the special values."""
    span = np.geomspace(1e-45, 10, 100_001)
    one = np.float32(1.0)
    edges = [np.nextafter(one, np.float32(0)), one, np.nextafter(one, np.float32(2)),
             0.0, -0.0, np.inf, -np.inf, np.nan, 3.92, 3.925, 3.93, 10.0, 1e30, -1e30]
    edges += [-e for e in edges[:3]]
    return np.concatenate([np.linspace(-10, 10, 400_001), span, -span,
                           edges]).astype(np.float32)


@pytest.mark.parametrize("cpu", [None, "x86-64-v3", "x86-64"])
def test_erf_across_its_whole_range_against_math_erf(cpu):
    """Native f32 erf (kiln's own vectorisable form: a + a R(a^2) below |a| = 1, sign(a)
    (1 - e^L(|a| - 1)) beyond) against math.erf in f64, in code for this CPU, for AVX2 with
    FMA and for SSE2 without it: relative error within 1e-7 where erf is a normal float
    (measured: 8.4e-8; a coefficient wrong in its 7th digit is off by more), absolute error
    within 8e-8 everywhere (measured: 6.8e-8), denormal results within half a denormal step
    of f64's; odd to the sign of zero and denormals; +-1 at +-inf; NaN kept."""
    x = _erf_grid()
    got = _native_for("model E { forward(x: f32[N]) -> f32[N] { return erf(x) } }", cpu)(x)
    got = got.astype(np.float64)
    want = np.array([math.erf(v) for v in x.astype(np.float64)])
    finite = np.isfinite(x)
    tiny = np.finfo(np.float32).tiny
    normal = finite & (np.abs(want) >= tiny)
    error = np.abs(got - want)
    assert error[normal].max() <= 8e-8
    assert (error[normal] / np.abs(want[normal])).max() <= 1e-7
    assert error[finite & ~normal].max() <= 7.1e-46
    np.testing.assert_array_equal(np.signbit(got[finite]), np.signbit(x[finite]))
    np.testing.assert_array_equal(got[np.isinf(x)], np.sign(x[np.isinf(x)]))
    assert np.isnan(got[np.isnan(x)]).all() and not np.isnan(got[~np.isnan(x)]).any()


@pytest.mark.parametrize("cpu", [None, "x86-64-v3", "x86-64"])
def test_log_of_every_magnitude_against_numpy(cpu):
    """Native f32 log (kiln's own: the exponent from the bits, Cephes' polynomial on the
    mantissa) on every 61st positive f32 bit pattern, denormals included, against numpy's f64
    log: within 1.7 ulp of f32 (measured: 1.61); 0 and -0 give -inf, +inf itself, NaN for
    negatives, -inf and NaN."""
    x = np.arange(1, 0x7F800000, 61, dtype=np.uint32).view(np.float32)
    native = _native_for("model L { forward(x: f32[N]) -> f32[N] { return log(x) } }", cpu)
    got = native(x).astype(np.float64)
    want = np.log(x.astype(np.float64))
    ulp = np.spacing(np.abs(want).astype(np.float32)).astype(np.float64)
    assert (np.abs(got - want) / ulp).max() <= 1.7
    special = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, -1.0, -1e-45, 1.0], np.float32)
    np.testing.assert_array_equal(native(special), [-np.inf, -np.inf, np.inf, np.nan, np.nan,
                                                    np.nan, np.nan, 0.0])


def _scalar_math(name: str):
    """ScalarMath.NAME on each element of an f32 array, in a loop of scalar calls compiled
    for this CPU (the functions no op reaches over their whole domain)."""
    import ctypes

    import llvmlite.binding as llvm
    from llvmlite import ir

    from kiln.compiler.codegen.llvm import target
    from kiln.compiler.codegen.llvm.loader import LoadedObject
    from kiln.compiler.codegen.llvm.mathlib import ScalarMath

    f32, i64 = ir.FloatType(), ir.IntType(64)
    module = ir.Module("m")
    module.triple = llvm.get_process_triple()
    fn = ir.Function(module, ir.FunctionType(ir.VoidType(), [f32.as_pointer()] * 2 + [i64]),
                     "f")
    entry, loop, done = (fn.append_basic_block(n) for n in ("entry", "loop", "done"))
    b = ir.IRBuilder(entry)
    x, y, n = fn.args
    b.cbranch(b.icmp_signed(">", n, ir.Constant(i64, 0)), loop, done)
    b.position_at_end(loop)
    i = b.phi(i64)
    i.add_incoming(ir.Constant(i64, 0), entry)
    b.store(getattr(ScalarMath(b), name)(b.load(b.gep(x, [i]))), b.gep(y, [i]))
    following = b.add(i, ir.Constant(i64, 1))
    i.add_incoming(following, loop)
    b.cbranch(b.icmp_signed("<", following, n), loop, done)
    b.position_at_end(done)
    b.ret_void()
    code = target.host().machine().emit_object(llvm.parse_assembly(str(module)))
    library = LoadedObject((code,), ["f"])
    call = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)(
        library.address("f"))

    def run(values: np.ndarray) -> np.ndarray:
        values = np.ascontiguousarray(values, np.float32)
        out = np.empty_like(values)
        call(values.ctypes.data, out.ctypes.data, values.size)
        return out

    run.library = library  # the code lives as long as run
    return run


@pytest.mark.parametrize(("name", "ref", "rtol"), [("log1p", np.log1p, 2.2e-7),
                                                   ("expm1", np.expm1, 1.25e-7)])
def test_log1p_and_expm1_over_their_whole_domain(name, ref, rtol):
    """kiln's f32 log1p (log(1 + a) with Goldberg's correction) and expm1 (a polynomial below
    |a| = ln2, e^a - 1 beyond) against numpy's f64 on [-100, 100], every magnitude of both
    signs and just above -1: relative error within `rtol` (measured: 2.1e-7, 1.2e-7) where
    the f32 result is a normal float, tiny arguments exactly themselves, the signed zeros
    kept, and the ends: log1p(-1) = -inf, NaN below -1, expm1(-inf) = -1, +inf past 88.72."""
    span = np.geomspace(1e-45, 3e38, 200_001)
    x = np.concatenate([np.linspace(-100, 100, 400_001), span, -span,
                        np.geomspace(1e-8, 1, 20_001) - 1]).astype(np.float32)
    fn = _scalar_math(name)
    got = fn(x).astype(np.float64)
    with np.errstate(all="ignore"):
        want = ref(x.astype(np.float64))
        want32 = want.astype(np.float32)
    normal = np.isfinite(want32) & (np.abs(want32) >= np.finfo(np.float32).tiny)
    assert (np.abs(got[normal] - want[normal]) / np.abs(want[normal])).max() <= rtol
    tiny = np.abs(x) < 1e-38
    np.testing.assert_array_equal(got[tiny], x[tiny])
    np.testing.assert_array_equal(np.isinf(got), np.isinf(want32))
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want32))
    special = np.array([0.0, -0.0, -1.0, -2.0, np.inf, -np.inf, np.nan], np.float32)
    with np.errstate(all="ignore"):
        np.testing.assert_array_equal(fn(special), ref(special))
    np.testing.assert_array_equal(np.signbit(fn(special[:2])), [False, True])


def _f32_ulps(got: np.ndarray, want: np.ndarray) -> np.ndarray:
    """|got - want| in ulps of f32 at want (want in f64)."""
    spacing = np.spacing(np.abs(want).astype(np.float32)).astype(np.float64)
    return np.abs(got.astype(np.float64) - want) / spacing


def _trig_grid() -> np.ndarray:
    """Every 997th f32 bit pattern of both signs (denormals to FLT_MAX), and the f32 nearest
    k pi/2 with their 3 neighbours each side, k to 2^16 one by one and on to 2^126."""
    bits = np.arange(0, 0x7F800000, 997, dtype=np.uint32).view(np.float32)
    k = np.concatenate([np.arange(1.0, 65536.0), np.geomspace(65536.0, 2.0**126, 20_000)])
    near = (k * (np.pi / 2)).astype(np.float32).view(np.uint32).astype(np.int64)
    near = np.concatenate([near + d for d in range(-3, 4)]).astype(np.uint32).view(np.float32)
    grid = np.concatenate([bits, near])
    return np.concatenate([grid, -grid])


@pytest.mark.parametrize("cpu", [None, "x86-64-v3", "x86-64"])
@pytest.mark.parametrize(("name", "ref"), [("sin", np.sin), ("cos", np.cos)])
def test_sin_and_cos_of_every_magnitude_against_numpy(name, ref, cpu):
    """Native f32 sin and cos (kiln's own, in f64: Cody-Waite by pi/2 below 2^19, Payne-Hanek
    from 2/pi's bits beyond, Cephes' polynomials) against numpy's f64 on `_trig_grid`, in
    code for this CPU, for AVX2 and for SSE2: within 0.6 ulp of f32 at every size (measured:
    0.563; the cubic or quartic coefficient off in its 6th digit gives 1.9); -0 kept by
    sin; NaN at +-inf and NaN."""
    x = _trig_grid()
    native = _native_for(f"model T {{ forward(x: f32[N]) -> f32[N] {{ return {name}(x) }} }}",
                         cpu)
    assert _f32_ulps(native(x), ref(x.astype(np.float64))).max() <= 0.6
    special = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1e-45, -1e-45], np.float32)
    got = native(special)
    with np.errstate(invalid="ignore"):
        np.testing.assert_array_equal(got, ref(special))
    np.testing.assert_array_equal(np.signbit(got[:2]), np.signbit(ref(special[:2])))


@pytest.mark.parametrize("cpu", [None, "x86-64-v3", "x86-64"])
def test_atan_of_every_magnitude_against_numpy(cpu):
    """Native f32 atan (in f64: reduced to |x| <= tan(pi/8), an odd polynomial) against
    numpy's f64 arctan on every 997th f32 bit pattern of both signs and around tan(pi/8) and
    tan(3pi/8), in code for this CPU, for AVX2 and for SSE2: within 0.52 ulp (measured:
    0.509; the first coefficient off in its 6th digit gives 1.3); -0 kept, +-pi/2 at +-inf,
    NaN kept."""
    bits = np.arange(0, 0x7F800000, 997, dtype=np.uint32).view(np.float32)
    x = np.concatenate([bits, np.linspace(0.3, 0.5, 100_001, dtype=np.float32),
                        np.linspace(2.3, 2.5, 100_001, dtype=np.float32)])
    x = np.concatenate([x, -x])
    native = _native_for("model A { forward(x: f32[N]) -> f32[N] { return atan(x) } }", cpu)
    assert _f32_ulps(native(x), np.arctan(x.astype(np.float64))).max() <= 0.52
    special = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1e-45, -1e-45], np.float32)
    got = native(special)
    np.testing.assert_array_equal(got, np.arctan(special))
    np.testing.assert_array_equal(np.signbit(got[:2]), [False, True])


@pytest.mark.parametrize(("body", "symbol"), [("sin(x)", "sinf"), ("cos(x)", "cosf"),
                                              ("atan(x)", "atanf"), ("x ** y", "powf")])
def test_sin_cos_atan_and_pow_loops_are_vector_code(body, symbol):
    """In code for AVX2 the f32 loop of sin, cos, atan and pow is vector code with FMAs and
    calls no libm function (a table lookup in sin's long reduction, a gather, kept it scalar)."""
    asm = assembly(f"model V {{ forward(x: f32[N], y: f32[N]) -> f32[N] {{ return {body} }} }}",
                   "x86-64-v3")
    assert re.search(r"vfmadd\w+\s+%ymm", asm), "no vector FMA"
    called = {name.split("@")[0] for name in re.findall(r"call\w*\s+\*?([\w@.]+)", asm)}
    assert not called & {symbol, "expf", "logf", "exp", "log", "sin", "cos", "atan", "pow"}

def _pow_specials() -> tuple[np.ndarray, np.ndarray]:
    """Every pair of C99 pow's special arguments: signed zeros and infinities, NaN, +-1, odd
    and even integers, non-integers, denormals, 2^24 (the first f32 with no odd neighbour) and
    its neighbours, huge values."""
    values = np.array([0.0, -0.0, 1.0, -1.0, 0.5, -0.5, 2.0, -2.0, 3.0, -3.0, 0.25, 2.5, -2.5,
                       np.inf, -np.inf, np.nan, 1e-45, -1e-45, 3e38, -3e38, 16777216.0,
                       16777215.0, -16777215.0, 16777218.0, 1e30, -1e30, 1.0000001, 0.9999999],
                      np.float32)
    x, y = np.meshgrid(values, values)
    return x.ravel(), y.ravel()


@pytest.mark.parametrize("cpu", [None, "x86-64-v3", "x86-64"])
def test_float_pow_against_numpy(cpu):
    """Native f32 x ** y (e^(y ln|x|) in f64, rounded to f32 once) against numpy's f64 power:
    within 0.51 ulp where the f32 result is a normal float (measured: 0.5002; numpy's own f32
    power is off by up to 1 ulp), within half a denormal step below; on every pair of special
    arguments (`_pow_specials`) NaN, infinities, zeros and signs as numpy's f32 power and its
    f64 power give them, and the finite results within 0.51 ulp of the f64 power."""
    rng = np.random.default_rng(0)
    n = 300_000
    x = np.concatenate([np.abs(rng.standard_normal(n) * 10.0 ** rng.uniform(-6, 6, n)),
                        rng.uniform(0, 3, n), -rng.integers(1, 30, n) * rng.uniform(0.5, 1.5, n)])
    y = np.concatenate([rng.standard_normal(n) * 10.0 ** rng.uniform(-3, 2, n),
                        rng.uniform(-60, 60, n), rng.integers(-30, 30, n)])
    x, y = x.astype(np.float32), y.astype(np.float32)
    native = _native_for("model P { forward(x: f32[N], y: f32[N]) -> f32[N] { return x ** y } }",
                         cpu)
    got = native(x, y)
    with np.errstate(all="ignore"):
        want = np.power(x.astype(np.float64), y.astype(np.float64))
        rounded = want.astype(np.float32)
    tiny = np.finfo(np.float32).tiny
    normal = np.isfinite(rounded) & (np.abs(want) >= tiny)
    assert _f32_ulps(got[normal], want[normal]).max() <= 0.51
    low = np.abs(want) < tiny
    assert np.abs(got[low] - want[low]).max() <= 7.1e-46
    np.testing.assert_array_equal(got[~np.isfinite(rounded)], rounded[~np.isfinite(rounded)])
    x, y = _pow_specials()
    got = native(x, y)
    with np.errstate(all="ignore"):
        rounded = np.power(x.astype(np.float64), y.astype(np.float64)).astype(np.float32)
        numpy32 = np.power(x, y)
    with np.errstate(all="ignore"):
        want = np.power(x.astype(np.float64), y.astype(np.float64))
    finite = np.isfinite(rounded) & (rounded != 0)
    assert _f32_ulps(got[finite], want[finite]).max() <= 0.51
    np.testing.assert_array_equal(got[~finite], rounded[~finite])
    number = ~np.isnan(rounded)  # (a NaN's sign is no part of pow's result)
    np.testing.assert_array_equal(np.signbit(got[number]), np.signbit(rounded[number]))
    exceptional = ~np.isfinite(numpy32) | (numpy32 == 0)
    np.testing.assert_array_equal(got[exceptional], numpy32[exceptional])
    exceptional &= number
    np.testing.assert_array_equal(np.signbit(got[exceptional]), np.signbit(numpy32[exceptional]))


@pytest.mark.parametrize(("body", "ref"), [
    ("elu(x)", lambda v: np.where(v > 0, v, np.expm1(np.minimum(v, 0)))),
    ("softplus(x)", lambda v: np.logaddexp(0, v)),
    ("softplus(x, 2.0, 5.0)", lambda v: np.where(2 * v > 5, v, np.logaddexp(0, 2 * v) / 2)),
])
def test_elu_and_softplus_against_numpy_in_f64(body, ref):
    """elu (through kiln's expm1) and softplus (through its exp and log1p), native in f32,
    against numpy in f64 on a dense grid over [-100, 100]: relative error within 2.5e-7
    (measured: 9e-8 and 1.8e-7) where the result is a normal float, and within a denormal
    step below."""
    x = np.concatenate([np.linspace(-100, 100, 400_001), [np.inf, -np.inf, 0.0, -0.0]])
    x = x.astype(np.float32)
    native = kiln.compile(f"model A {{ forward(x: f32[N]) -> f32[N] {{ return {body} }} }}")
    got = native(x).astype(np.float64)
    want = ref(x.astype(np.float64))
    tiny = np.finfo(np.float32).tiny
    normal = np.isfinite(want) & (np.abs(want) >= tiny)
    assert (np.abs(got[normal] - want[normal]) / np.abs(want[normal])).max() <= 2.5e-7
    low = np.abs(want) < tiny
    assert np.abs(got[low] - want[low]).max() <= 1.5e-45
    np.testing.assert_array_equal(got[~np.isfinite(want)], want[~np.isfinite(want)])


@pytest.mark.parametrize("affine", ["", ", w, b", ", w", ", bias = b"])
def test_layer_norm_rows_of_every_length_agree_with_the_reference(affine):
    """f32 layer norm runs as explicit vectors per row (a tail mask for lengths that are not
    a multiple of the vector width), rows shared by threads: every length about the width,
    with and without weight and bias, constant rows (variance 0), NaN and inf, on one and
    two threads, against the reference."""
    rng = np.random.default_rng(11)
    params = {"": "", ", w, b": ", w: f32[L], b: f32[L]", ", w": ", w: f32[L]",
              ", bias = b": ", b: f32[L]"}[affine]
    src = (f"model N {{ forward(x: f32[R, L]{params}) -> f32[R, L] "
           f"{{ return layer_norm(x, L{affine}, eps = 1e-5) }} }}")
    ref = kiln.compile(src, target="reference")
    one, two = kiln.compile(src, threads=1), kiln.compile(src, threads=2)
    for length in (1, 3, 15, 16, 17, 33, 64, 100, 768):
        rows = 600 if length in (64, 100) else 21  # 600 x 64: enough to start the threads
        x = (rng.standard_normal((rows, length)) * 3 + 5).astype(np.float32)
        x[1] = 2.5
        x[2, rng.integers(length)] = np.nan
        x[3, rng.integers(length)] = np.inf
        args = [x] + [rng.standard_normal(length).astype(np.float32)
                      for _ in range(params.count(":"))]
        want = ref(*args)
        for native in (one, two):
            got = native(*args)
            np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg=f"L={length}")
            assert_agree(got, want, "layer_norm", f"L={length}")


def test_strided_copies_of_contiguous_runs_at_run_time_lengths():
    """A view copy whose last axis is contiguous in x too (a permute keeping it, a slice of
    whole rows' middles) copies each run with one memcpy when it is at least RUN_COPY
    elements long, element by element when shorter: lengths known at run time on both
    sides of the threshold, against the reference exactly."""
    src = ("model V { forward(x: f32[B, N, W], i: i64[N, B, W]) { "
           "return permute(x, [1, 0, 2]), x[:, 1:, 2:], permute(i, [1, 0, 2]) } }")
    native, ref = kiln.compile(src), kiln.compile(src, target="reference")
    rng = np.random.default_rng(3)
    for b, n, w in ((2, 3, 3), (1, 4, 15), (3, 2, 16), (2, 5, 17), (2, 3, 40)):
        x = rng.standard_normal((b, n, w)).astype(np.float32)
        i = rng.integers(-2**40, 2**40, (n, b, w))
        for got, want in zip(native(x, i), ref(x, i), strict=True):
            assert got.dtype == want.dtype and got.shape == want.shape
            np.testing.assert_array_equal(got, want, err_msg=f"{b, n, w}")
