"""How closely two computations of one op must agree, written once for every target's op tests.

An op's float results are compared in one of three classes, chosen by the op (`op_class`):

- exact: the code computes these without rounding, or rounds once in a way every target
  shares: integer and bool results, data movement and indexing, scatter (its sums in index
  order), comparisons, maximum and minimum, abs, neg, floor, ceil, sign, clip, where, cast,
  floor division and modulo on floats (numpy's divmod: an exact fmod, then an exact
  correction), creation; and add, sub, mul and div, which IEEE arithmetic rounds correctly
  (in f32 for halves, then once to the half, as numpy). Compared bit for bit: NaN at the same
  places and, except where numpy itself leaves it open, the same sign of zero. Against an
  oracle computed in f64 (test_ops_*.py), add, sub, mul and div are "rounded": the oracle's
  result is not rounded to the dtype.
- rounded: one float result per element from a formula each target evaluates with its own math
  library (numpy's, the native backend's, onnxruntime's), in f32 for f32 and half inputs and in
  f64 for f64, rounded once to the result's dtype.
- accumulated: sums over many terms (reductions, softmax, matmul, convolutions, normalizations,
  pooling averages, interpolation), which targets add in different orders.
"""

from __future__ import annotations

import numpy as np

from kiln.compiler.types import dtype_of_numpy

# (rtol, atol) per class and dtype. Why each is what it is:
# - f16 has 10 fraction bits: one unit in the last place is at most 2**-10 = 9.8e-4 of a value,
#   so rtol 1e-3 admits one ulp (a result computed in f32 a few f32 ulps apart from another
#   rounds the other way once) and no more; bf16 has 7: 2**-7 = 7.8e-3, rtol 8e-3. The atol of
#   a half covers its subnormals and results that cancel to near zero in f32 before rounding.
# - f32 formulas from different math libraries agree to a few ulp (2**-23 = 1.2e-7 each):
#   rtol 1e-5 leaves room for the libraries' worst cases (erf, the tanh form of gelu) and still
#   catches any wrong term or constant; atol 1e-6 for results that cancel to about 0 (sin(pi)).
# - accumulated f32 sums of a few hundred terms differ in order: each partial sum rounds, so
#   1e-5 of the result, and atol 1e-5 where terms of both signs cancel; halves accumulate in f32
#   and round once at the end, so two ulp (the f32 sums differ in their last bits and the
#   rounding can land on either side of a tie, then the reference rounds its f32 inputs too).
# - f64 is computed in f64 everywhere: 1e-12 of the value.
TOLERANCES: dict[str, dict[str, tuple[float, float]]] = {
    "exact": {"f64": (0.0, 0.0), "f32": (0.0, 0.0), "f16": (0.0, 0.0), "bf16": (0.0, 0.0)},
    "rounded": {"f64": (1e-12, 1e-12), "f32": (1e-5, 1e-6), "f16": (1e-3, 1e-5),
                "bf16": (8e-3, 1e-5)},
    "accumulated": {"f64": (1e-12, 1e-12), "f32": (1e-5, 1e-5), "f16": (2e-3, 2e-3),
                    "bf16": (1.6e-2, 1.6e-2)},
}

MOVEMENT = {"reshape", "flatten", "transpose", "permute", "flip", "squeeze", "unsqueeze",
            "broadcast_to", "tile", "tril", "triu", "pad", "slice", "concat", "stack", "split",
            "gather", "take_along_axis", "dropout"}
CREATION = {"arange", "zeros", "ones", "full", "one_hot", "dim_value"}
CORRECTLY_ROUNDED = {"add", "sub", "mul", "div"}
COMPARISONS = {"equal", "not_equal", "less", "greater", "less_equal", "greater_equal",
               "logical_and", "logical_or", "logical_not"}
EXACT = (MOVEMENT | CREATION | COMPARISONS
         | {"neg", "abs", "relu", "floor", "ceil", "sign", "clip", "where", "maximum", "minimum",
            "floor_div", "mod", "max", "min", "argmax", "argmin", "max_pool", "cast", "scatter",
            "scatter_add"}
         | CORRECTLY_ROUNDED)
ACCUMULATED = {"sum", "mean", "prod", "logsumexp", "softmax", "log_softmax", "matmul",
               "matmul_at", "matmul_bt", "conv", "conv_transpose", "layer_norm", "batch_norm", "group_norm", "instance_norm",
               "avg_pool", "global_avg_pool", "resize"}
# numpy leaves the sign of a zero result open here (maximum(0.0, -0.0) is whichever operand
# its SIMD loop returns), so an exact comparison checks values only
ZERO_SIGN_OPEN = {"maximum", "minimum", "max", "min", "max_pool"}
# ... and targets differ from numpy in it here: the ONNX emitters of floor_div and mod start
# from fmod, whose zero takes the dividend's sign (numpy's the divisor's), and onnxruntime's
# Relu keeps -0.0; their values agree bit for bit
ZERO_SIGN_OPEN_ON = {"onnx": {"floor_div", "mod", "relu"}, "native": set()}
FLOAT_DTYPES = ("f64", "f32", "f16", "bf16")


def op_class(op: str, oracle: bool = False) -> str:
    """The class of an op's float results: "exact", "rounded" or "accumulated"; against an
    unrounded `oracle` (f64 math), correctly rounded arithmetic is "rounded"."""
    if op in EXACT and not (oracle and op in CORRECTLY_ROUNDED):
        return "exact"
    return "accumulated" if op in ACCUMULATED else "rounded"


def tolerance(op: str, dtype: str, oracle: bool = False) -> tuple[float, float]:
    """(rtol, atol) for a result of `op` in `dtype` (integers and bools: exact)."""
    if dtype not in FLOAT_DTYPES:
        return 0.0, 0.0
    return TOLERANCES[op_class(op, oracle)][dtype]


def assert_agree(got, want, op: str, what: str = "", *, dtype: str | None = None,
                 exact: bool | None = None, scale: float = 1.0, same_type: bool = True,
                 target: str = "native") -> None:
    """`got` agrees with `want` as `op`'s class says: same dtype and shape (unless
    same_type=False: an oracle in another dtype), and values exact or within the tolerance of
    `dtype` (default: want's) times `scale` (sums longer than an op test's). `exact`
    overrides the op's class for one comparison; `target` computed `got`."""
    got, want = np.asarray(got), np.asarray(want)
    what = what or op
    if same_type:
        assert got.dtype == want.dtype and got.shape == want.shape, (
            what, got.dtype, got.shape, want.dtype, want.shape)
    dtype = dtype or dtype_of_numpy(want.dtype)
    if dtype not in FLOAT_DTYPES:  # as they are: i64 beyond 2**53 has no f64
        np.testing.assert_array_equal(got, want, err_msg=what)
        return
    g, w = got.astype(np.float64), want.astype(np.float64)
    if exact if exact is not None else op_class(op, oracle=not same_type) == "exact":
        np.testing.assert_array_equal(g, w, err_msg=what)
        # a NaN's sign bit is no part of its value; an oracle of Python ints has no -0
        if same_type and op not in ZERO_SIGN_OPEN | ZERO_SIGN_OPEN_ON[target]:
            number = ~np.isnan(w)
            np.testing.assert_array_equal(np.signbit(g[number]), np.signbit(w[number]),
                                          err_msg=what + ": signs")
        return
    rtol, atol = tolerance(op, dtype, oracle=not same_type)
    np.testing.assert_allclose(g, w, rtol=rtol * scale, atol=atol * scale, err_msg=what)
