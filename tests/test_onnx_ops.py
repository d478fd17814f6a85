"""Every op record's ONNX emitter: the exported one-op graph passes onnx's full check and strict
shape inference, and onnxruntime (and, where it runs the op, onnx's ReferenceEvaluator) computes
what the op's numpy reference computes, for each dtype the op takes and for symbolic sizes.

Inputs and attributes are mostly those of tests/test_ops_*.py.
"""

from __future__ import annotations

import numpy as np
import pytest
from _onnxtest import check, compare, export_op
from _optest import T, bind, rand
from test_ops_elementwise import BINARY, COMPARE, UNARY
from test_ops_nn import CONV_CASES, HALF_CASES, POOL_CASES

import kiln
from kiln.compiler.dims import Dim
from kiln.compiler.errors import KilnError
from kiln.compiler.ops import REGISTRY
from kiln.compiler.types import NUMPY_DTYPES as NP

B, N, L = Dim.of("B"), Dim.of("N"), Dim.of("T")
HALVES = ("f16", "bf16")
# scan is emitted by codegen/onnx.py itself and tested with whole models; fused nodes are made
# by the fuse pass, and tests/test_fuse.py runs them through onnxruntime
EMITTED_ELSEWHERE = {"scan", "fused"}
# onnx's ReferenceEvaluator, the second oracle, runs every case but these (onnxruntime still
# checks them): conv_transpose with groups (its ConvTranspose has none), pad with negative pads
# (its Pad cannot crop), log_softmax of extremes (its LogSoftmax is log(softmax): -inf for -1000)
CASES = []


def case(op, *args, id=None, second_oracle=True, **kwargs):
    """One parametrized case of `check`: op, its arguments, an id. second_oracle=False where
    onnx's ReferenceEvaluator cannot run the emitted graph (said why at the case)."""
    CASES.append(pytest.param(op, args, kwargs, second_oracle, id=id or op))


# elementwise ------------------------------------------------------------------------------
for op, (_fn, attrs, (low, high)) in sorted(UNARY.items()):
    for dtype in ("f32", *HALVES):
        case(op, rand(3, 4, dtype=dtype, seed=1, low=low, high=high), id=f"{op}-{dtype}", **attrs)
for op in ("neg", "abs", "relu", "sign", "floor", "ceil", "clip"):
    for dtype in ("i32", "i64"):
        extra = {"min": -1, "max": 1} if op == "clip" else {}
        case(op, rand(2, 5, dtype=dtype, seed=2, low=-4, high=4), id=f"{op}-{dtype}", **extra)
case("gelu", rand(4, 5, low=-4, high=4), approximate="tanh", id="gelu-tanh")
case("gelu", rand(4, 5, dtype="f16", low=-4, high=4), approximate="tanh", id="gelu-tanh-f16")
case("softplus", rand(4, 5, low=-3, high=3), beta=3.0, threshold=2.0, id="softplus-threshold")
case("softplus", np.array([-1000, -60, 0, 60, 1000], np.float32), id="softplus-extremes")
case("sigmoid", np.array([-1000, -60, 0, 60, 1000], np.float32), id="sigmoid-extremes")
case("clip", rand(3, 4), min=-0.5, id="clip-min-only")
case("clip", rand(3, 4, dtype="bf16"), max=0.25, id="clip-max-only-bf16")
case("clip", rand(8, dtype="i32", low=-5, high=5), min=-1.5, max=2.5, id="clip-int-float-bounds")
case("elu", rand(3, 4, low=-3, high=3), id="elu-default")
case("leaky_relu", rand(3, 4, dtype="bf16"), id="leaky_relu-default-bf16")
for dtype in ("f32", "bf16", "i32", "bool"):
    case("logical_not", rand(2, 3, dtype=dtype, low=-1, high=1), id=f"logical_not-{dtype}")
case("logical_not", np.array([0.0, -0.0, 2.0, np.nan], np.float32), id="logical_not-nan")
CASTS = [("f32", "i32"), ("f32", "i64"), ("f32", "bool"), ("i64", "f32"), ("f32", "bf16"),
         ("bf16", "f16"), ("f16", "i32"), ("bool", "f32"), ("i32", "bool"), ("f32", "f32")]
for src, dst in CASTS:
    case("cast", rand(3, 4, dtype=src, seed=3, low=-3, high=3), dtype=dst, id=f"cast-{src}-{dst}")
case("dropout", rand(2, 3), p=0.3)
case("dropout", rand(2, 3, dtype="bf16"), id="dropout-bf16")

PAIR = ((3, 1, 4), (5, 4))  # broadcasting both ways
for op in sorted(BINARY):
    for dtype in ("f32", *HALVES):
        a = rand(*PAIR[0], dtype=dtype, seed=4, low=0.5, high=3)
        b = rand(*PAIR[1], dtype=dtype, seed=5, low=0.5, high=3)
        if op not in ("pow", "div"):
            b = (b.astype(np.float32) * np.where(rand(*PAIR[1], dtype="bool"), 1, -1)
                 ).astype(b.dtype)
        case(op, a, b, id=f"{op}-{dtype}")
for op in ("add", "sub", "mul", "floor_div", "mod", "maximum", "minimum", "div", "pow"):
    for dtype in ("i32", "i64"):
        a = rand(*PAIR[0], dtype=dtype, seed=6, low=-20, high=20)
        b = rand(*PAIR[1], dtype=dtype, seed=7, low=1, high=6)
        if op != "pow":
            b = b * np.where(rand(*PAIR[1], dtype="bool", seed=8), 1, -1).astype(b.dtype)
        else:
            a, b = a // 4, b % 4
        case(op, a, b, id=f"{op}-{dtype}")
# floor semantics exactly at and near the discontinuities, and division by zero
DIVIDEND = np.array([7, -7, 7, -7, 1, -1, 0.3, -0.3, 6, 5, 0, -2.5], np.float32)
DIVISOR = np.array([3, 3, -3, -3, 0.1, 0.1, 0.1, -0.1, 2, 0, 4, 0.5], np.float32)
for op in ("floor_div", "mod"):
    for dtype in ("f32", "f16"):
        case(op, DIVIDEND.astype(NP[dtype]), DIVISOR.astype(NP[dtype]), id=f"{op}-edges-{dtype}")
    case(op, np.array(-7.5, np.float32), np.array([2.0, -2.0], np.float32), id=f"{op}-0d")
    for dtype in ("i32", "i64"):  # numpy's answers where integer Div and Mod trap
        low = np.iinfo(NP[dtype]).min
        case(op, np.array([low, low, 7, -7, low, 0], NP[dtype]),
             np.array([-1, 0, 0, 0, 1, -1], NP[dtype]), id=f"{op}-int-edges-{dtype}")
NAN = np.array([np.nan, 1.0, np.nan, -np.inf], np.float32)
for op in ("maximum", "minimum"):
    case(op, NAN, np.array([0.0, np.nan, np.nan, 2.0], np.float32), id=f"{op}-nan")
case("div", np.array([2**40 + 1, -7, 2**53 + 2], np.int64), np.array([3, 2, 7], np.int64),
     id="div-large-i64")
case("gelu", np.array(-0.7, np.float32), id="gelu-0d")
case("hard_swish", np.array(1.25, np.float32), id="hard_swish-0d")
for op in ("add", "mul", "maximum", "minimum", *COMPARE, "logical_and", "logical_or"):
    case(op, np.array([True, True, False]), np.array([[True], [False]]), id=f"{op}-bool")
for op in sorted(COMPARE):
    for dtype in ("f32", "bf16", "i32"):
        a = rand(3, 1, 4, dtype=dtype, seed=9, low=-2, high=2)
        case(op, a, np.round(rand(5, 4, dtype=dtype, seed=10, low=-2, high=2)), id=f"{op}-{dtype}")
for dtype in ("f32", "f16", "bf16", "i32", "i64", "bool"):
    case("where", rand(2, 1, dtype="bool"), rand(3, dtype=dtype, seed=1),
         rand(2, 3, dtype=dtype, seed=2), id=f"where-{dtype}")


# reductions ---------------------------------------------------------------------------------
AXES = [None, 0, -1, [-1, 0], []]
for op in ("sum", "mean", "max", "min", "prod", "logsumexp"):
    for axis in AXES:
        for keepdims in (False, True):
            case(op, rand(2, 3, 4, low=0.5, high=1.5), axis=axis, keepdims=keepdims,
                 id=f"{op}-{axis}-{keepdims}")
    for dtype in HALVES:
        case(op, rand(3, 5, dtype=dtype, low=0.5, high=1.5), axis=1, id=f"{op}-{dtype}")
    if op != "mean" and op != "logsumexp":
        for dtype in ("i32", "i64", "bool"):
            case(op, rand(3, 4, dtype=dtype, low=-5, high=5), axis=0, id=f"{op}-{dtype}")
            case(op, rand(3, 4, dtype=dtype, low=-5, high=5), id=f"{op}-{dtype}-all")
case("sum", np.array(2.5, np.float32), id="sum-0d")
case("logsumexp", np.array([[1000.0, 1000.0], [-1000.0, 0.0], [-np.inf, 0.0], [-np.inf, -np.inf]],
                           np.float32), axis=1, id="logsumexp-extremes")
TIES = np.array([[1.0, 5.0, 5.0], [7.0, -1.0, 7.0]], np.float32)
for op in ("argmax", "argmin"):
    for axis in (None, 0, 1, -1):
        for keepdims in (False, True):
            case(op, TIES, axis=axis, keepdims=keepdims, id=f"{op}-{axis}-{keepdims}")
    for dtype in ("bf16", "f16", "i32", "i64", "bool"):
        case(op, rand(3, 4, dtype=dtype, low=-3, high=3), axis=1, id=f"{op}-{dtype}")
    case(op, rand(3, 4, dtype="bool"), id=f"{op}-bool-flat")
# a NaN wins wherever it is (numpy); onnxruntime's reductions skip one that is not first
NAN_ROWS = np.array([[1.0, np.nan, 5.0, np.nan], [3.0, 2.0, 1.0, 0.0]], np.float32)
for op in ("max", "min", "argmax", "argmin"):
    for axis in (None, 1, 0):
        case(op, NAN_ROWS, axis=axis, id=f"{op}-nan-{axis}")
    case(op, NAN_ROWS.astype(NP["bf16"]), axis=1, id=f"{op}-nan-bf16")
for op in ("softmax", "log_softmax"):
    for axis in (0, 1, -1):
        case(op, rand(3, 4, 2, low=-5, high=5), axis=axis, id=f"{op}-{axis}")
    for dtype in HALVES:
        case(op, rand(3, 4, dtype=dtype, low=-5, high=5), id=f"{op}-{dtype}")
    case(op, np.array(1.5, np.float32), id=f"{op}-0d")
    case(op, np.array([[1000.0, 1000.0], [-1000.0, 0.0], [-np.inf, 0.0]], np.float32),
         id=f"{op}-extremes", second_oracle=op == "softmax")  # its LogSoftmax: log(softmax)


# neural-network ops -------------------------------------------------------------------------
for i, (xs, ws, stride, padding, dilation, groups) in enumerate(CONV_CASES):
    case("conv", rand(*xs, seed=1), rand(*ws, seed=2), rand(ws[0], seed=3), stride=stride,
         padding=padding, dilation=dilation, groups=groups, id=f"conv-{i}")
case("conv", rand(2, 4, 11, seed=4), rand(6, 2, 3, seed=5), None, stride=2, padding=2,
     dilation=2, groups=2, id="conv-1d")
case("conv", rand(1, 2, 6, 7), rand(3, 2, 4, 3), None, padding="same", id="conv-same-even-k")
CONV_T = [
    # x shape, weight shape, stride, padding, output_padding, dilation, groups
    ((1, 2, 3, 4), (2, 3, 3, 3), 2, 1, 1, 1, 1),
    ((2, 4, 3, 3), (4, 1, 2, 3), (2, 3), (0, 1), (1, 2), 1, 2),
    ((1, 2, 4, 3), (2, 2, 3, 2), 1, 0, 0, (2, 1), 1),
    ((1, 1, 2, 2), (1, 1, 4, 4), 2, 1, 0, 1, 1),
    ((1, 2, 3, 3), (2, 1, 3, 3), 1, 1, 1, 2, 1),  # output_padding under dilation, over stride
    ((1, 2, 3, 4), (2, 3, 3, 2), 1, 0, (1, 0), 2, 1),  # ... and over the padding
]
for i, (xs, ws, stride, padding, out_pad, dilation, groups) in enumerate(CONV_T):
    case("conv_transpose", rand(*xs, seed=1), rand(*ws, seed=2), rand(ws[1] * groups, seed=3),
         stride=stride, padding=padding, output_padding=out_pad, dilation=dilation,
         groups=groups, id=f"conv_transpose-{i}",
         second_oracle=groups == 1)  # its ConvTranspose has no groups
case("conv_transpose", rand(1, 2, 5), rand(2, 3, 3, seed=9), stride=2, padding=1,
     output_padding=1, id="conv_transpose-1d")
for i, (k, s, p, d, ceil_mode) in enumerate(POOL_CASES):
    for shape in ((1, 2, 7, 6), (2, 1, 8, 9)):
        case("max_pool", rand(*shape, seed=11), kernel_size=k, stride=s, padding=p, dilation=d,
             ceil_mode=ceil_mode, id=f"max_pool-{i}-{shape[2]}")
        if d == (1, 1):
            for counted in (True, False):
                case("avg_pool", rand(*shape, seed=12), kernel_size=k, stride=s, padding=p,
                     ceil_mode=ceil_mode, count_include_pad=counted,
                     id=f"avg_pool-{i}-{shape[2]}-{counted}")
INT_LINE = np.array([[[3, -1, 4, 1, -5, 9, 2]]], np.int32)
case("max_pool", INT_LINE, kernel_size=3, stride=2, padding=1, id="max_pool-i32")
case("max_pool", INT_LINE.astype(np.int64), kernel_size=2, ceil_mode=True, id="max_pool-i64")
case("avg_pool", INT_LINE.astype(np.float32), kernel_size=3, stride=2, padding=1,
     ceil_mode=True, id="avg_pool-1d")
for dtype in ("f32", *HALVES):
    case("global_avg_pool", rand(2, 3, 4, 5, dtype=dtype), id=f"global_avg_pool-{dtype}")
case("global_avg_pool", rand(2, 3, 7), id="global_avg_pool-1d")
X22 = np.array([[[[1.0, 2.0], [3.0, 4.0]]]], np.float32)
LINE = np.arange(5, dtype=np.float32).reshape(1, 1, 5)
RESIZES = [
    (X22, {"size": 4, "mode": "bilinear"}),
    (X22, {"scale_factor": 2.0, "mode": "bilinear"}),
    (X22, {"size": [4, 4], "mode": "bilinear", "align_corners": True}),
    (np.arange(6, dtype=np.float32).reshape(1, 1, 2, 3), {"size": [4, 5]}),
    (LINE, {"scale_factor": 1.7}),
    (LINE, {"size": 8}),
    (LINE, {"size": 3, "mode": "bilinear"}),
    (LINE, {"size": 1, "mode": "bilinear"}),
    (LINE, {"size": 1, "mode": "bilinear", "align_corners": True}),
    (rand(1, 2, 10, 7), {"scale_factor": [1.3, 0.7], "mode": "bilinear"}),
    (rand(1, 2, 10, 7), {"scale_factor": [1.3, 2.3]}),
    (rand(2, 3, 5, 6), {"size": [7, 4], "mode": "bilinear"}),
    (rand(2, 3, 5, 6), {"size": [3, 9], "mode": "bilinear", "align_corners": True}),
]
for i, (x, attrs) in enumerate(RESIZES):
    case("resize", x, id=f"resize-{i}", **attrs)
case("resize", np.arange(16, dtype=np.float16).reshape(1, 1, 4, 4), size=[2, 2], mode="bilinear",
     id="resize-f16-down")
X, W, BIAS = rand(2, 3, 4, seed=1), rand(3, 4, seed=2), rand(3, 4, seed=3)
case("layer_norm", X, [3, 4], W, BIAS, eps=1e-3, id="layer_norm-2d-affine")
case("layer_norm", X, 4, id="layer_norm-plain")
case("layer_norm", X, 4, None, BIAS[0], id="layer_norm-bias-only")
case("layer_norm", X, [], id="layer_norm-no-axes")
MEAN, VAR = np.array([0.5, -1, 0], np.float32), np.array([1, 4, 0.25], np.float32)
SCALE, SHIFT = np.array([1, 2, 3], np.float32), np.array([0, 1, -1], np.float32)
case("batch_norm", rand(2, 3, 2, 2), MEAN, VAR, SCALE, SHIFT, eps=0.0, id="batch_norm-affine")
case("batch_norm", rand(4, 3), MEAN, VAR, id="batch_norm-2d-plain")
case("batch_norm", rand(2, 3, 5), MEAN, VAR, None, SHIFT, id="batch_norm-bias-only")
for dtype in HALVES:
    half = [a.astype(NP[dtype]) for a in (MEAN, VAR, SCALE, SHIFT)]
    case("batch_norm", rand(2, 3, 4, dtype=dtype), *half, id=f"batch_norm-{dtype}")
case("group_norm", rand(2, 6, 3, seed=4), 3, rand(6, seed=5), rand(6, seed=6), id="group_norm")
case("group_norm", rand(2, 6, 2, 2, seed=4), 2, eps=1e-2, id="group_norm-plain")
case("group_norm", rand(3, 4, seed=4), 2, None, rand(4, seed=6), id="group_norm-2d-bias")
case("instance_norm", rand(2, 6, 3, 1, seed=4), id="instance_norm-plain")
case("instance_norm", rand(2, 3, 5, seed=4), rand(3, seed=5), rand(3, seed=6), eps=1e-3,
     id="instance_norm-affine")
for op, make, attrs in HALF_CASES:
    for dtype in HALVES:
        case(op, *make(rand(1, 2, 5, 5, dtype=dtype, seed=8)), id=f"{op}-{dtype}", **attrs)
for dtype in ("f32", "f16", "bf16", "i32", "i64"):
    case("matmul", rand(2, 1, 3, 4, dtype=dtype, seed=1), rand(3, 4, 2, dtype=dtype, seed=2),
         id=f"matmul-{dtype}")
case("matmul", rand(4), rand(2, 4, 3), id="matmul-vector-left")
case("matmul", rand(2, 3, 4), rand(4), id="matmul-vector-right")
case("matmul", rand(4), rand(4), id="matmul-dot")


# shape and data movement --------------------------------------------------------------------
GRID = np.arange(24, dtype=np.int64).reshape(2, 3, 4)
case("reshape", GRID, [4, -1])
case("reshape", rand(1, 1), [], id="reshape-0d")
case("reshape", rand(2, 0, 3), [0, 5], id="reshape-empty")
for start, end in ((1, -1), (0, -1), (0, 1), (1, 1), (-2, -1)):
    case("flatten", GRID, start=start, end=end, id=f"flatten-{start}-{end}")
case("transpose", GRID, 0, -1)
case("permute", GRID, [1, 2, 0])
case("flip", GRID, [0, 2])
case("flip", np.arange(3, dtype=np.int32), 0, id="flip-1d")
case("flip", rand(2, 3, dtype="bf16"), -1, id="flip-bf16")
X1 = rand(1, 3, 1, 2)
case("squeeze", X1)
case("squeeze", X1, 2, id="squeeze-2")
case("squeeze", X1, [0, -2], id="squeeze-list")
case("squeeze", rand(3, 2), id="squeeze-nothing")
case("unsqueeze", rand(3, 2), -1)
case("unsqueeze", rand(3, 2), [0, 2], id="unsqueeze-list")
for dtype in ("f32", "bf16", "bool"):
    case("broadcast_to", rand(2, 1, dtype=dtype), [3, 2, 4], id=f"broadcast_to-{dtype}")
case("tile", np.array([[1, 2]]), [2, 2])
case("tile", np.array([1, 2]), [3, 1, 2], id="tile-more-reps")
case("tile", rand(2, 3, dtype="bf16"), [2], id="tile-fewer-reps-bf16")
for op in ("tril", "triu"):
    for k in (-1, 0, 2):
        case(op, rand(2, 3, 4, seed=3), k, id=f"{op}-{k}")
    for dtype in ("bf16", "i32", "bool"):
        case(op, rand(3, 3, dtype=dtype), id=f"{op}-{dtype}")
ROW = np.array([[1.0, 2.0, 3.0]], np.float32)
case("pad", ROW, [2, 1], value=9, id="pad-constant")
case("pad", ROW, [2, 1], mode="reflect", id="pad-reflect")
case("pad", ROW, [2, 1], mode="replicate", id="pad-replicate")
case("pad", ROW, [0, 0, 1, 0], id="pad-first-axis")
case("pad", ROW, [-1, 1], id="pad-crop", second_oracle=False)  # its Pad cannot crop
case("pad", rand(2, 3, 4, dtype="bf16"), [1, 2, 0, 1], mode="reflect", id="pad-bf16")
case("pad", rand(2, 3, dtype="i32"), [1, 1], value=2.7, id="pad-int-value")
case("pad", rand(2, 3, dtype="bool"), [1, 0], id="pad-bool")


def _rng(start=None, stop=None, step=1):
    return ("range", start, stop, step)


X60 = np.arange(60).reshape(3, 4, 5)
SLICES = [
    [("int", 1), _rng(None, None, -2)],
    [("ellipsis",), _rng(1, -1)],
    [_rng(), ("new",), ("int", -1), ("int", 0)],
    [("int", 2), ("int", 3), ("int", 4)],
    [_rng(5, 9)],
    [("ellipsis",), ("new",)],
    [("new",), _rng(None, None, -1), ("new",), ("int", -2), _rng(-100, 100, 3)],
    [_rng(-1, -4, -1), _rng(3, None, -2)],
    [("int", -1), ("ellipsis",), ("int", -1)],
    [],
]
for i, items in enumerate(SLICES):
    case("slice", X60, items, id=f"slice-{i}")
A, C = np.arange(6).reshape(2, 3), np.arange(6, 10).reshape(2, 2)
case("concat", [A, C], axis=-1)
case("concat", [rand(2, dtype="bf16"), rand(3, dtype="bf16")], id="concat-bf16")
case("stack", [A, A + 1], axis=1)
case("stack", [rand(2), rand(2), rand(2)], axis=-1, id="stack-last")
case("stack", [np.array(1.0, np.float32), np.array(2.0, np.float32)], id="stack-0d")
case("split", np.arange(12).reshape(2, 6), 3)
case("split", np.arange(12).reshape(2, 6), axis=1, sizes=[1, 5], id="split-sizes")
case("split", rand(4, 3, dtype="bf16"), 2, axis=0, id="split-bf16")
GATHER_X = np.arange(12).reshape(3, 4)
case("gather", GATHER_X, np.array([[2, -1], [0, 0]]), axis=1)
case("gather", rand(5, 3), np.array(-2, np.int32), id="gather-0d-index")
case("gather", rand(5, 3, dtype="bf16"), np.array([4, 0, 4]), id="gather-bf16")
case("take_along_axis", GATHER_X, np.array([[3], [0], [1]]), 1)
case("take_along_axis", rand(3, 1, 4), np.array([[[2, -1], [0, 1]]]), axis=2,
     id="take_along_axis-broadcast")
case("take_along_axis", rand(3, 4, dtype="bf16"), np.array([[0, -1, 1, 2]], np.int32), axis=0,
     id="take_along_axis-bf16")
SRC = rand(5, 3, seed=1)
SEGMENTS = np.array([2, 0, 2, -1, 0])  # segment 1 stays empty; -1 is the last (3)
FULL = np.array([[0, 1, 2], [2, 2, 0], [0, -4, 1], [3, 3, 3], [1, 0, -1]])
for reduce in ("sum", "mean", "max", "min", "prod"):
    case("scatter", SRC, SEGMENTS, 4, reduce=reduce, id=f"scatter-{reduce}")
    case("scatter", SRC.T, SEGMENTS, 4, axis=1, reduce=reduce, id=f"scatter-{reduce}-axis1")
    case("scatter", SRC, FULL, 4, reduce=reduce, id=f"scatter-{reduce}-full")
    if reduce != "mean":
        case("scatter", np.array([3, 7, 5, -2], np.int32), np.array([1, 1, 0, 1]), 3,
             reduce=reduce, id=f"scatter-{reduce}-i32")
    case("scatter", rand(4, 2, dtype="bf16"), np.array([1, 1, 0, 1]), 3, reduce=reduce,
         id=f"scatter-{reduce}-bf16")
case("scatter_add", np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], np.float32),
     np.array([2, 0, 2]), 4)
ARANGES = [((5,), {}), ((2, 11, 3), {}), ((5, -4, -2), {}), ((5, 2), {}),
           ((0.0, 1.0, 0.25), {"dtype": "f32"}), ((0, 1, 0.3), {"dtype": "f32"}),
           ((0.1, -0.35, -0.05), {"dtype": "f32"}), ((3,), {"dtype": "bf16"}),
           ((1, 9, 2), {"dtype": "i32"}), ((0.5, 4), {"dtype": "f16"})]
for i, (bounds, attrs) in enumerate(ARANGES):
    case("arange", *bounds, id=f"arange-{i}", **attrs)
for op, extra in (("zeros", ()), ("ones", ()), ("full", (7,))):
    for dtype in ("f32", "bf16", "i32", "bool"):
        case(op, [2, 3], *extra, dtype=dtype, id=f"{op}-{dtype}")
case("ones", [], dtype="i64", id="ones-0d")
case("full", [2], 2.5, dtype="i64", id="full-truncates")
case("one_hot", np.array([[0, 2]]), 3)
case("one_hot", np.array([1, 0, 3], np.int32), 4, dtype="f32", id="one_hot-f32")
case("one_hot", np.array([1, 0]), 2, dtype="bf16", id="one_hot-bf16")
case("one_hot", np.array([1, 0]), 2, dtype="bool", id="one_hot-bool")


@pytest.mark.parametrize(("op", "args", "kwargs", "second_oracle"), CASES)
def test_op_matches_reference(op, args, kwargs, second_oracle):
    check(op, *args, second_oracle=second_oracle, **kwargs)


# symbolic sizes: export once, run at two sizes ----------------------------------------------
# op, input types and attributes (as _optest.run takes them), the input arrays for a binding
SYMBOLIC = [
    ("add", (T(["B", 1]), T([1, 4])), {}, lambda e: [rand(e["B"], 1), rand(1, 4)]),
    ("matmul", (T(["B", "T", 3]), T([3, 2])), {}, lambda e: [rand(e["B"], e["T"], 3), rand(3, 2)]),
    ("conv", (T(["B", 3, "H", "H"]), T([4, 3, 3, 3]), None), {"stride": 2, "padding": 1},
     lambda e: [rand(e["B"], 3, e["H"], e["H"]), rand(4, 3, 3, 3), None]),
    ("max_pool", (T(["B", 2, "H"]),), {"kernel_size": 3, "stride": 2, "padding": 1,
                                       "ceil_mode": True}, lambda e: [rand(e["B"], 2, e["H"])]),
    ("avg_pool", (T(["B", 2, "H"]),), {"kernel_size": 2, "stride": 2, "padding": 1,
                                       "ceil_mode": True}, lambda e: [rand(e["B"], 2, e["H"])]),
    ("resize", (T(["B", 1, "H", 4]),), {"scale_factor": 2.0, "mode": "bilinear"},
     lambda e: [rand(e["B"], 1, e["H"], 4)]),
    ("reshape", (T(["B", 4, 5]), [B, -1]), {}, lambda e: [rand(e["B"], 4, 5)]),
    ("reshape", (T(["B", 4, 5]), [-1, 10]), {}, lambda e: [rand(e["B"], 4, 5)]),
    ("flatten", (T(["B", 3, "H"]),), {"start": 0}, lambda e: [rand(e["B"], 3, e["H"])]),
    ("slice", (T(["B", "T", 6]), [_rng(), _rng(L - 2, None), ("int", -1)]), {},
     lambda e: [rand(e["B"], e["T"], 6)]),
    ("slice", (T(["B", "T"]), [("int", B - 1), _rng(1, None, 2)]), {},
     lambda e: [rand(e["B"], e["T"])]),
    ("split", (T(["B", 4]), 2), {}, lambda e: [rand(e["B"], 4)]),
    ("split", (T(["T", 3]),), {"axis": 0, "sizes": [L - 2, 2]}, lambda e: [rand(e["T"], 3)]),
    ("pad", (T(["B", "T"]), [1, 2]), {"mode": "reflect"}, lambda e: [rand(e["B"], e["T"])]),
    ("broadcast_to", (T([1, 4]), [B, 4]), {}, lambda e: [rand(1, 4)]),
    ("tile", (T(["B", 2]), [2, B]), {}, lambda e: [rand(e["B"], 2)]),
    ("sum", (T(["B", "T", 3]),), {"axis": 1}, lambda e: [rand(e["B"], e["T"], 3)]),
    ("argmax", (T(["B", "T"]),), {}, lambda e: [rand(e["B"], e["T"])]),
    ("logsumexp", (T(["B", "T"]),), {"axis": [0, 1]}, lambda e: [rand(e["B"], e["T"])]),
    ("softmax", (T(["B", "T"]),), {"axis": 0}, lambda e: [rand(e["B"], e["T"])]),
    ("layer_norm", (T(["B", "T", 4]), [L, 4]), {}, lambda e: [rand(e["B"], e["T"], 4), None, None]),
    ("group_norm", (T(["B", 4, "H"]), 2), {}, lambda e: [rand(e["B"], 4, e["H"]), None, None]),
    ("scatter", (T(["T", 2]), T(["T"], "i64"), N), {"reduce": "max"},
     lambda e: [rand(e["T"], 2), rand(e["T"], dtype="i64", low=0, high=e["N"] - 1)]),
    ("concat", ([T(["B", "T"]), T(["B", 2])],), {"axis": 1},
     lambda e: [rand(e["B"], e["T"]), rand(e["B"], 2)]),
    ("gather", (T(["N", 3]), T(["B"], "i64")), {},
     lambda e: [rand(e["N"], 3), rand(e["B"], dtype="i64", low=0, high=e["N"] - 1)]),
    ("one_hot", (T(["B"], "i64"), N), {"dtype": "f32"},
     lambda e: [rand(e["B"], dtype="i64", low=0, high=e["N"] - 1)]),
    ("arange", (1, L + 1, 2), {"dtype": "i32"}, lambda e: []),
    ("arange", (L,), {"dtype": "f32"}, lambda e: []),
    ("zeros", ([B, 3],), {}, lambda e: []),
    ("full", ([2], N), {"dtype": "i64"}, lambda e: []),
    ("full", ([B, N], True), {"dtype": "bool"}, lambda e: []),
    ("dim_value", (B * L + 1,), {}, lambda e: []),
]
BINDINGS = [{"B": 1, "H": 9, "T": 4, "N": 3}, {"B": 3, "H": 6, "T": 7, "N": 5}]
# sizes that only attributes use (arange(T), scatter's N) come from an unused input
ANCHOR = (T(["B", "H", "T", "N"]),)


@pytest.mark.parametrize(("op", "args", "kwargs", "make"), SYMBOLIC,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(SYMBOLIC)])
def test_symbolic_sizes_from_one_export(op, args, kwargs, make):
    _, types, attrs = bind(op, args, kwargs)
    proto = export_op(op, types, attrs, anchors=ANCHOR)
    for env in BINDINGS:
        compare(proto, op, make(env), attrs, env)


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


def test_every_op_has_an_emitter_and_a_test():
    ops = set(REGISTRY) - EMITTED_ELSEWHERE
    missing = sorted(n for n in ops if REGISTRY[n].onnx is None)
    assert not missing, f"ops without an ONNX emitter: {missing}"
    tested = {p.values[0] for p in CASES} | {c[0] for c in SYMBOLIC}
    untested = sorted(ops - tested)
    assert not untested, f"ops without an ONNX test: {untested}"
