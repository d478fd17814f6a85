"""The op cases every target's op tests share: one table.

`CASES`: one op applied to arrays and attributes (as _optest.run takes them), with the targets
that run it: test_onnx_ops.py exports each "onnx" case and runs it in onnxruntime (and onnx's
ReferenceEvaluator), test_native_ops.py and test_native_nn.py compile the "native" cases of a
group into one model; each compares with the op's numpy reference on the same inputs, within
_tolerance.py's table. `SYMBOLIC`: cases on symbolic input types, whose tensor arguments are
functions of the bindings (`BINDINGS`). `UNARY`, `BINARY`, `COMPARE`: the elementwise ops with
the scalar definitions test_ops_elementwise.py checks the reference against.

Adding an op: its record, a row in docs/language.md's op table, and its cases here (the
section of its family); tests/test_ops_registry.py fails until every op has a case on every
target.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from _optest import T, infer1, rand

from kiln.compiler.dims import Dim
from kiln.compiler.types import NUMPY_DTYPES as NP

TARGETS = frozenset({"onnx", "native"})
NATIVE = frozenset({"native"})  # a case onnxruntime computes otherwise: said why at the case
# graph-holding ops made by the elaborator and the passes, tested with whole models:
# tests/test_language.py and the scan examples (scan), tests/test_fuse.py (fused)
STRUCTURAL = {"scan", "fused"}
B, N, L = Dim.of("B"), Dim.of("N"), Dim.of("T")
HALVES = ("f16", "bf16")
FLOATS = ("f32", "f64", *HALVES)
INTS = ("i32", "i64")
# f64 ops onnxruntime 1.32 cannot check: no double kernel (Atan, Erf, GlobalAveragePool), or a
# float attribute (HardSigmoid's alpha, LeakyRelu's alpha: f32 in ONNX) that rounds the f64 math
ORT_NO_F64 = {"atan", "erf", "gelu", "hard_sigmoid", "hard_swish", "leaky_relu", "global_avg_pool"}
BINDINGS = [{"B": 1, "H": 9, "W": 8, "T": 4, "N": 3}, {"B": 3, "H": 6, "W": 13, "T": 7, "N": 2}]


@dataclass
class Case:
    """One op applied to `args`/`kwargs`; `group` names the native model it compiles into;
    `types` (symbolic cases) are the input types, and the tensor arguments then functions of
    the bindings; `second_oracle` False where onnx's ReferenceEvaluator cannot run the emitted
    graph (said why at the case)."""

    op: str
    args: tuple
    kwargs: dict
    id: str
    group: str
    targets: frozenset[str] = TARGETS
    types: list | None = None
    second_oracle: bool = True


def _f64_targets(op: str, dtype: str) -> frozenset[str]:
    """Where a case of `op` in `dtype` runs: not in onnxruntime for ORT_NO_F64's f64 ops."""
    return NATIVE if dtype == "f64" and op in ORT_NO_F64 else TARGETS


def one_case(op: str, *args, id: str | None = None, **kwargs) -> Case:
    """A case outside the table (a test's own: inputs a reference refuses, a random sweep)."""
    return Case(op, args, kwargs, id or op, "")


CASES: list[Case] = []
SYMBOLIC: list[Case] = []
_group = ""


def case(op: str, *args, id: str | None = None, targets=TARGETS, second_oracle=True,
         **kwargs) -> None:
    """Add one case of the current section's group to CASES."""
    CASES.append(Case(op, args, kwargs, id or op, _group, frozenset(targets),
                      second_oracle=second_oracle))


def symbolic(op: str, types: list, *args, id: str | None = None, targets=TARGETS,
             **kwargs) -> None:
    """Add a case on symbolic `types` to SYMBOLIC; its tensor arguments give each array for a
    binding (`lambda e: rand(e["B"], 3)`)."""
    SYMBOLIC.append(Case(op, args, kwargs, id or f"{op}-{len(SYMBOLIC)}", _group,
                         frozenset(targets), list(types)))


def cases(target: str, group: str, table: list[Case] | None = None) -> list[Case]:
    """The cases of `group` that run on `target`."""
    return [c for c in (CASES if table is None else table)
            if target in c.targets and c.group == group]


def with_edges(x: np.ndarray, edges) -> np.ndarray:
    """x flattened, with the edge values appended (in x's dtype)."""
    return np.concatenate([x.ravel(), np.asarray(edges).astype(x.dtype)])


def _rng(start=None, stop=None, step=1):
    """A slice item start:stop:step, as the elaborator gives it to the slice op."""
    return ("range", start, stop, step)


FLOAT_EDGES = [np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-7, -1e-7, 30.0, -30.0, 0.5, -2.5]
INT_EDGES = {"i32": [0, 1, -1, 2**31 - 1, -2**31], "i64": [0, 1, -1, 2**63 - 1, -2**63]}


# elementwise: the scalar definitions ----------------------------------------------------------
def scalar_sigmoid(v):
    return 1 / (1 + math.exp(-v))


def scalar_hard_sigmoid(v):
    return min(max(v / 6 + 0.5, 0.0), 1.0)


# op -> (scalar definition in Python's math, attrs, input range)
UNARY: dict[str, tuple[Callable, dict, tuple[float, float]]] = {
    "neg": (lambda v: -v, {}, (-3, 3)),
    "detach": (lambda v: v, {}, (-3, 3)),
    "abs": (abs, {}, (-3, 3)),
    "exp": (math.exp, {}, (-3, 3)),
    "log": (math.log, {}, (0.1, 5)),
    "sqrt": (math.sqrt, {}, (0, 5)),
    "rsqrt": (lambda v: 1 / math.sqrt(v), {}, (0.1, 5)),
    "sin": (math.sin, {}, (-4, 4)),
    "cos": (math.cos, {}, (-4, 4)),
    "atan": (math.atan, {}, (-6, 6)),
    "tanh": (math.tanh, {}, (-3, 3)),
    "sigmoid": (scalar_sigmoid, {}, (-8, 8)),
    "relu": (lambda v: max(v, 0.0), {}, (-3, 3)),
    "leaky_relu": (lambda v: v if v >= 0 else 0.2 * v, {"negative_slope": 0.2}, (-3, 3)),
    "elu": (lambda v: v if v > 0 else 1.5 * (math.exp(v) - 1), {"alpha": 1.5}, (-3, 3)),
    "gelu": (lambda v: 0.5 * v * (1 + math.erf(v / math.sqrt(2))), {}, (-6, 6)),
    "silu": (lambda v: v * scalar_sigmoid(v), {}, (-6, 6)),
    "softplus": (lambda v: math.log1p(math.exp(2 * v)) / 2, {"beta": 2.0}, (-12, 12)),
    "erf": (math.erf, {}, (-4, 4)),
    "floor": (math.floor, {}, (-3, 3)),
    "ceil": (math.ceil, {}, (-3, 3)),
    "sign": (lambda v: (v > 0) - (v < 0), {}, (-3, 3)),
    "reciprocal": (lambda v: 1 / v, {}, (0.5, 4)),
    "clip": (lambda v: min(max(v, -1.0), 0.5), {"min": -1.0, "max": 0.5}, (-3, 3)),
    "hard_sigmoid": (scalar_hard_sigmoid, {}, (-5, 5)),
    "hard_swish": (lambda v: v * scalar_hard_sigmoid(v), {}, (-5, 5)),
    "logical_not": (lambda v: v == 0, {}, (-1, 1)),
}
BINARY: dict[str, Callable] = {
    "add": operator.add, "sub": operator.sub, "mul": operator.mul, "div": operator.truediv,
    "floor_div": operator.floordiv, "mod": operator.mod, "pow": operator.pow,
    "maximum": max, "minimum": min,
}
COMPARE: dict[str, Callable] = {
    "equal": operator.eq, "not_equal": operator.ne, "less": operator.lt,
    "greater": operator.gt, "less_equal": operator.le, "greater_equal": operator.ge,
}


# elementwise: unary ---------------------------------------------------------------------------
_group = "unary"
for op, (_fn, attrs, (low, high)) in sorted(UNARY.items()):
    for dtype in FLOATS:
        x = with_edges(rand(3, 7, dtype=dtype, seed=2, low=low, high=high), FLOAT_EDGES)
        case(op, x.reshape(4, 8), id=f"{op}-{dtype}", targets=_f64_targets(op, dtype), **attrs)
case("gelu", rand(5, 7, low=-8, high=8), approximate="tanh", id="gelu-tanh")
case("gelu", with_edges(rand(2, dtype="f16"), FLOAT_EDGES), approximate="tanh",
     id="gelu-tanh-f16")
case("softplus", rand(4, 5, low=-3, high=3), beta=3.0, threshold=2.0, id="softplus-threshold")
case("softplus", np.array([-1000, -60, 0, 60, 1000], np.float32), id="softplus-extremes")
case("sigmoid", np.array([-1000, -60, 0, 60, 1000], np.float32), id="sigmoid-extremes")
case("clip", rand(3, 4), min=-0.5, id="clip-min-only")
case("clip", rand(3, 4, dtype="bf16"), max=0.25, id="clip-max-only-bf16")
case("clip", rand(8, dtype="i32", low=-5, high=5), min=-1.5, max=2.5, id="clip-int-float-bounds")
case("elu", with_edges(rand(3, low=-3, high=3), FLOAT_EDGES), id="elu-default")
case("leaky_relu", rand(3, 4, dtype="bf16"), id="leaky_relu-default-bf16")
case("gelu", np.array(-0.7, np.float32), id="gelu-0d")
case("hard_swish", np.array(1.25, np.float32), id="hard_swish-0d")
for dtype in INTS:
    x = with_edges(rand(2, 5, dtype=dtype, low=-9, high=9), INT_EDGES[dtype])
    for op in ("neg", "detach", "abs", "relu", "sign", "floor", "ceil", "logical_not"):
        case(op, x, id=f"{op}-{dtype}")
    case("clip", x, min=-1, max=1, id=f"clip-{dtype}")
    case("clip", x, min=-1.5, max=2.5, id=f"clip-float-bounds-{dtype}")
    case("clip", x, max=-3, id=f"clip-max-{dtype}")
# float bounds clip an i64 through f64, as numpy (onnxruntime's Clip keeps it exact)
case("clip", np.array([2**53 + 1, -2**62], np.int64), min=-1.5, id="clip-i64-through-f64",
     targets=NATIVE)
for dtype in ("f32", "bf16", "i32", "bool"):
    case("logical_not", rand(2, 3, dtype=dtype, low=-1, high=1), id=f"logical_not-{dtype}-small")
case("logical_not", np.array([0.0, -0.0, 2.0, np.nan], np.float32), id="logical_not-nan")
CASTS = [("f32", "i32"), ("f32", "i64"), ("f32", "bool"), ("i64", "f32"), ("f32", "bf16"),
         ("bf16", "f16"), ("f16", "i32"), ("bool", "f32"), ("i32", "bool"), ("f32", "f32")]
for src, dst in CASTS:
    case("cast", rand(3, 4, dtype=src, seed=3, low=-3, high=3), dtype=dst, id=f"cast-{src}-{dst}")
case("dropout", rand(2, 3), p=0.3)
case("dropout", rand(2, 3, dtype="bf16"), id="dropout-bf16")
# training-mode dropout: the same Philox words on every target (a negative seed: all 64 bits)
KEY = np.array([-1234, (5 << 32) + 7], np.int64)
for p, dtype in ((0.3, "f32"), (0.5, "bf16"), (0.0, "f32"), (1.0, "f32"), (0.25, "f16")):
    case("dropout_keyed", rand(5, 37, dtype=dtype), KEY, p=p, stream=3,
         id=f"dropout_keyed-{p}-{dtype}")


# elementwise: binary --------------------------------------------------------------------------
_group = "binary"
PAIR = ((3, 1, 4), (5, 4))  # broadcasting both ways
for op in sorted(BINARY) + sorted(COMPARE):
    for dtype in FLOATS:
        a = rand(*PAIR[0], dtype=dtype, seed=4, low=0.5, high=3)
        b = rand(*PAIR[1], dtype=dtype, seed=5, low=0.5, high=3)
        if op not in ("pow", "div"):
            b = (b.astype(np.float32) * np.where(rand(*PAIR[1], dtype="bool"), 1, -1)
                 ).astype(b.dtype)
        case(op, a, b, id=f"{op}-{dtype}")
# every pair of these (rows against columns): signs, zeros, infinities, NaN, exact multiples
DIVIDENDS = np.array([7, -7, 0.0, -0.0, 6, 0.3, -0.3, 1e30, np.inf, -np.inf, np.nan, -2.5, 1, -1])
DIVISORS = np.array([3, -3, 0.0, -0.0, 2, 0.1, -0.1, 1e-30, np.inf, -np.inf, np.nan, 0.5, 4])
for op in sorted(BINARY) + sorted(COMPARE):
    for dtype in ("f32", "f16"):
        with np.errstate(over="ignore"):
            a, b = (v.astype(NP[dtype]) for v in (DIVIDENDS[:, None], DIVISORS[None, :]))
        case(op, a, b, id=f"{op}-edges-{dtype}")
for op in ("floor_div", "mod"):
    case(op, np.array(-7.5, np.float32), np.array([2.0, -2.0], np.float32), id=f"{op}-0d")


def random_divmod_inputs(n: int = 4000, seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Random f32 dividends and divisors over many magnitudes and both signs, with exact
    multiples, values next to multiples and divisors that are integers: floor division and
    modulo on them must match
    numpy's bit for bit (its divmod rounds the quotient and corrects the step of floor)."""
    rng = np.random.default_rng(seed)
    a = (rng.standard_normal(n) * 10 ** rng.uniform(-3, 6, n)).astype(np.float32)
    b = (rng.standard_normal(n) * 10 ** rng.uniform(-3, 3, n)).astype(np.float32)
    b[::17] = np.round(b[::17])  # exact multiples and the like
    a[::13] = b[::13] * np.round(rng.uniform(-9, 9, a[::13].size)).astype(np.float32)
    # one ulp either side of a multiple: quotients just off an integer, where a floor of the
    # rounded quotient without numpy's correction lands one off
    near = b[5::11] * np.round(rng.uniform(-99, 99, b[5::11].size)).astype(np.float32)
    a[5::11] = np.nextafter(near, np.where(rng.random(near.size) < 0.5, -np.inf, np.inf)
                            ).astype(np.float32)
    return a, b
for dtype in INTS:
    edges = np.array(INT_EDGES[dtype] + [7, -7], NP[dtype])
    for op in ("add", "sub", "mul", "div", "floor_div", "mod", "maximum", "minimum",
               *sorted(COMPARE)):
        a = rand(*PAIR[0], dtype=dtype, seed=6, low=-20, high=20)
        b = rand(*PAIR[1], dtype=dtype, seed=7, low=-6, high=6)  # zeros included
        case(op, a, b, id=f"{op}-{dtype}")
        # onnx: floor_div by the most negative integer overflows in (a - a mod b) / b
        case(op, edges[:, None], edges[None, :], id=f"{op}-edges-{dtype}",
             targets=NATIVE if op == "floor_div" else TARGETS)
    case("pow", rand(*PAIR[0], dtype=dtype, seed=8, low=-5, high=5),
         rand(*PAIR[1], dtype=dtype, low=0, high=9), id=f"pow-{dtype}")
    case("pow", edges[:, None], np.array([0, 1, 2, 3, 31, 62, 63], NP[dtype]),
         id=f"pow-overflow-{dtype}", targets=NATIVE)  # onnxruntime's Pow does not wrap
    for op in ("floor_div", "mod"):  # numpy's answers where integer Div and Mod trap
        low = np.iinfo(NP[dtype]).min
        case(op, np.array([low, low, 7, -7, low, 0], NP[dtype]),
             np.array([-1, 0, 0, 0, 1, -1], NP[dtype]), id=f"{op}-traps-{dtype}")
case("div", np.array([2**40 + 1, -7, 2**53 + 2], np.int64), np.array([3, 2, 7], np.int64),
     id="div-large-i64")
NAN = np.array([np.nan, 1.0, np.nan, -np.inf], np.float32)
for op in ("maximum", "minimum"):
    case(op, NAN, np.array([0.0, np.nan, np.nan, 2.0], np.float32), id=f"{op}-nan")
for op in ("add", "mul", "maximum", "minimum", *sorted(COMPARE), "logical_and", "logical_or"):
    case(op, np.array([True, True, False]), np.array([[True], [False]]), id=f"{op}-bool")
for dtype in (*FLOATS, *INTS, "bool"):
    case("where", rand(2, 1, dtype="bool"), rand(3, dtype=dtype, seed=1),
         rand(2, 3, dtype=dtype, seed=2), id=f"where-{dtype}")
EDGE_ROW = np.array([np.nan, -0.0, np.inf], np.float32)
case("where", np.array([True, False, True]), EDGE_ROW, EDGE_ROW[::-1].copy(), id="where-edges")


# reductions -----------------------------------------------------------------------------------
_group = "reduce"
REDUCTIONS = ("sum", "mean", "max", "min", "prod", "logsumexp")
for op in REDUCTIONS:
    for axis in (None, 0, -1, [-1, 0], [0, 1], [], 1):
        for keepdims in (False, True):
            case(op, rand(2, 3, 5, low=0.5, high=1.5), axis=axis, keepdims=keepdims,
                 id=f"{op}-{axis}-{keepdims}")
    for dtype in HALVES:
        case(op, rand(3, 7, dtype=dtype, low=0.5, high=1.5), axis=1, id=f"{op}-{dtype}")
    if op not in ("mean", "logsumexp"):
        for dtype in (*INTS, "bool"):
            x = rand(3, 5, dtype=dtype, low=-5, high=5)
            case(op, x, axis=0, id=f"{op}-{dtype}")
            case(op, x, id=f"{op}-{dtype}-all")
EXTREMES = np.array([[1.0, np.nan, 3.0], [np.inf, 2.0, -np.inf], [-np.inf, -np.inf, -np.inf],
                     [np.inf, np.inf, 1.0]], np.float32)
for op in REDUCTIONS:
    case(op, EXTREMES, axis=1, id=f"{op}-extremes")
    case(op, EXTREMES, axis=0, id=f"{op}-extremes-rows")
case("sum", np.array(2.5, np.float32), id="sum-0d")
case("max", np.array([[2**31 - 1, -2**31]], np.int32), axis=1, id="max-i32-ends")
case("prod", np.array([2**40, 2**40], np.int64), id="prod-wraps",
     targets=NATIVE)  # onnxruntime's ReduceProd does not wrap
case("logsumexp", np.array([[1000.0, 1000.0], [-1000.0, 0.0], [-np.inf, 0.0], [-np.inf, -np.inf]],
                           np.float32), axis=1, id="logsumexp-large")
LONG = rand(3, 1031, low=0.5, high=1.5)  # a prime length: vector body and scalar tail
for op in ("sum", "mean", "max", "min", "logsumexp", "argmax", "argmin"):
    case(op, LONG, axis=-1, id=f"{op}-long")  # one loop per output element
    case(op, LONG.T.copy(), axis=0, id=f"{op}-long-rows")  # over rows
case("sum", rand(1031, dtype="bf16"), id="sum-long-bf16")
TIES = np.array([[1.0, 5.0, 5.0], [7.0, -1.0, 7.0]], np.float32)
# a NaN wins wherever it is, as numpy's
NAN_ROWS = np.array([[1.0, np.nan, 9.0, np.nan], [np.nan, 1.0, 2.0, 3.0],
                     [-np.inf, -np.inf, np.inf, np.inf], [2.0, 1.0, -np.inf, np.inf]], np.float32)
for op in ("argmax", "argmin"):
    for axis in (None, 0, 1, -1):
        for keepdims in (False, True):
            case(op, TIES, axis=axis, keepdims=keepdims, id=f"{op}-{axis}-{keepdims}")
    for dtype in (*HALVES, *INTS, "bool"):
        case(op, rand(3, 4, dtype=dtype, low=-3, high=3), axis=1, id=f"{op}-{dtype}")
    case(op, rand(3, 4, dtype="bool"), id=f"{op}-bool-flat")
    case(op, np.array([[-2**31, -2**31, 2**31 - 1, 2**31 - 1]], np.int32), axis=1,
         id=f"{op}-int-ends")
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


# data movement --------------------------------------------------------------------------------
_group = "movement"
GRID = np.arange(24, dtype=np.int64).reshape(2, 3, 4)
case("reshape", GRID, [4, -1])
case("reshape", rand(1, 1), [], id="reshape-0d")
case("reshape", rand(2, 0, 3), [0, 5], id="reshape-empty")
for start, end in ((1, -1), (0, -1), (0, 1), (1, 1), (-2, -1)):
    case("flatten", GRID, start=start, end=end, id=f"flatten-{start}-{end}")
case("transpose", GRID, 0, -1)
case("permute", GRID, [1, 2, 0])
# x's contiguous axis not the result's last: square blocks (16 a side for 4-byte elements on
# AVX-512, else 8) and the edges past whole ones
case("permute", rand(2, 35, 3, 19, seed=34), [0, 2, 3, 1], id="permute-blocks-f32")
case("permute", np.arange(37 * 21, dtype=np.int32).reshape(37, 21), [1, 0],
     id="permute-blocks-i32")
case("transpose", rand(33, 40, dtype="f64", seed=35), 0, 1, id="transpose-blocks-f64")
# the last axis kept: contiguous runs copied whole (a known length: inline moves)
case("permute", rand(2, 3, 5, 21, seed=36), [0, 2, 1, 3], id="permute-runs")
case("permute", rand(3, 2, 17, dtype="f16", seed=37), [1, 0, 2], id="permute-runs-f16")
case("flip", GRID, [0, 2])
case("flip", np.arange(3, dtype=np.int32), 0, id="flip-1d")
case("flip", rand(2, 3, dtype="bf16"), -1, id="flip-bf16")
case("flip", rand(2, 1, 5, dtype="bool"), [0, 1, 2], id="flip-all")
X1 = rand(1, 3, 1, 2)
case("squeeze", X1)
case("squeeze", X1, 2, id="squeeze-2")
case("squeeze", X1, [0, -2], id="squeeze-list")
case("squeeze", rand(3, 2), id="squeeze-nothing")
case("unsqueeze", rand(3, 2, dtype="f16"), -1)
case("unsqueeze", rand(3, 2), [0, 2], id="unsqueeze-list")
for dtype in ("f32", "bf16", "bool", "i32"):
    case("broadcast_to", rand(2, 1, dtype=dtype), [3, 2, 5], id=f"broadcast_to-{dtype}")
case("broadcast_to", rand(1, 1, 1), [2, 1, 3], id="broadcast_to-size-1")
case("tile", np.array([[1, 2]]), [2, 2])
case("tile", np.array([1, 2]), [3, 1, 2], id="tile-more-reps")
case("tile", rand(2, 3, dtype="bf16"), [2], id="tile-fewer-reps-bf16")
case("tile", rand(2, 1, 3, dtype="bool"), [1, 3, 1], id="tile-bool")
for op in ("tril", "triu"):
    for k in (-1, 0, 2, 7):
        case(op, rand(2, 3, 5, seed=3), k, id=f"{op}-{k}")
    for dtype in ("bf16", "i32", "bool"):
        case(op, rand(3, 3, dtype=dtype), id=f"{op}-{dtype}")
ROW = np.array([[1.0, 2.0, 3.0]], np.float32)
case("pad", ROW, [2, 1], value=9, id="pad-constant")
case("pad", ROW, [2, 1], mode="reflect", id="pad-reflect")
case("pad", ROW, [2, 1], mode="replicate", id="pad-replicate")
case("pad", ROW, [0, 0, 1, 0], id="pad-first-axis")
case("pad", ROW, [-1, 1], id="pad-crop", second_oracle=False)  # its Pad cannot crop
case("pad", rand(4, 7), [-2, 3, 1, -1], value=-0.0, id="pad-crop-both", second_oracle=False)
case("pad", rand(2, 3, 4, dtype="bf16"), [1, 2, 0, 1], mode="reflect", id="pad-bf16")
case("pad", rand(2, 5, 4, dtype="f16"), [3, 2, 4, 1], mode="reflect", id="pad-reflect-2")
case("pad", rand(2, 3, 4), [3, 2, 4, 1, 1, 1], mode="replicate", id="pad-replicate-3")
# a permute inside a border of zeros (pads per result axis): channels last with a border and
# appended samples (x's contiguous axis not last: 8 x 8 tiles, sizes past whole tiles), the
# contiguous axis kept last (element by element), and ints
case("padded_permute", rand(3, 5, 11, 13, seed=31), [0, 2, 3, 1],
     [0, 2, 1, 1, 2, 1, 0, 0], id="padded_permute-channels-last")
case("padded_permute", rand(3, 9, 10, 17, seed=32), [2, 0, 3, 1],
     [1, 2, 0, 0, 3, 0, 0, 1], id="padded_permute-rows-first")
case("padded_permute", rand(4, 3, 6, 7, seed=33), [1, 0, 2, 3],
     [0, 0, 0, 0, 0, 2, 0, 3], id="padded_permute-inner-kept")
case("padded_permute", GRID, [1, 2, 0], [1, 0, 0, 2, 1, 1], id="padded_permute-i64")
case("pad", rand(2, 3, dtype="i32"), [1, 1], value=2.7, id="pad-int-value")
case("pad", rand(2, 3, dtype="bool"), [1, 0], id="pad-bool")
case("pad", rand(2, 3, dtype="f16"), [1, 0], value=1e-5, id="pad-f16-rounds-value")
X60 = np.arange(60).reshape(3, 4, 5)
SLICES = [  # x[items] on X60 [3, 4, 5]
    [("int", 1), _rng(None, None, -2)],  # x[1, ::-2]
    [_rng(), ("new",), ("int", -1), ("int", 0)],  # x[:, None, -1, 0]
    [("ellipsis",), _rng(1, -1)],  # x[..., 1:-1]
    [("ellipsis",), _rng(1, -1), ("new",)],  # x[..., 1:-1, None]
    [("new",), _rng(None, None, -1), ("new",), ("int", -2), _rng(-100, 100, 3)],
    [_rng(-1, -4, -1), _rng(3, None, -2)],  # x[-1:-4:-1, 3::-2]
    [("int", -1), ("ellipsis",), ("int", -1)],  # x[-1, ..., -1]
    [("int", 2), ("int", 3), ("int", 4)],  # one element, 0-d
    [_rng(5, 9)],  # empty
    [("ellipsis",), ("new",)],
    [],  # all of it
]
for i, items in enumerate(SLICES):
    case("slice", X60, items, id=f"slice-{i}")
case("slice", rand(7, 5, dtype="bf16"), [_rng(-2, -8, -3), _rng(4, 0, -1)],
     id="slice-negative-steps")
case("slice", rand(7), [_rng(None, None, -1)], id="slice-reverse")
case("slice", rand(7), [_rng(10, 2, -2)], id="slice-start-past-end")
case("slice", rand(7, dtype="bool"), [("int", -7)], id="slice-first-by-negative")
A, C = np.arange(6).reshape(2, 3), np.arange(6, 10).reshape(2, 2)
case("concat", [A, C], axis=-1)
case("concat", [rand(2, dtype="bf16"), rand(3, dtype="bf16")], id="concat-bf16")
case("concat", [rand(2, 1, 3), rand(2, 4, 3), rand(2, 1, 3)], axis=1, id="concat-3")
case("stack", [A, A + 1], axis=1)
case("stack", [rand(2), rand(2), rand(2)], axis=-1, id="stack-last")
case("stack", [np.array(1.0, np.float32), np.array(2.0, np.float32)], id="stack-0d")
case("split", np.arange(12).reshape(2, 6), 3)
case("split", np.arange(12).reshape(2, 6), axis=1, sizes=[1, 5], id="split-sizes")
case("split", rand(4, 3, dtype="bf16"), 2, axis=0, id="split-bf16")
case("split", rand(2, 7, 3, dtype="bool"), axis=1, sizes=[2, 0, 5], id="split-empty")


# indexing -------------------------------------------------------------------------------------
_group = "index"
GATHER_X = np.arange(12).reshape(3, 4)
case("gather", GATHER_X, np.array([[2, -1], [0, 0]]), axis=1)
case("gather", rand(5, 3), np.array(-2, np.int32), id="gather-0d-index")
case("gather", rand(5, 3, dtype="bf16"), np.array([4, 0, 4]), id="gather-bf16")
case("gather", rand(2, 5, 3, dtype="bool"), np.array([[-5, 4, 1]]), axis=1, id="gather-middle")
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
    case("scatter", SRC.T.copy(), SEGMENTS, 4, axis=1, reduce=reduce, id=f"scatter-{reduce}-axis1")
    case("scatter", SRC, FULL, 4, reduce=reduce, id=f"scatter-{reduce}-full")
    case("scatter", rand(4, 2, dtype="bf16"), np.array([1, 1, 0, 1]), 3, reduce=reduce,
         id=f"scatter-{reduce}-bf16")
    case("scatter", rand(4, 2, dtype="f16"), np.array([1, 1, 0, 1], np.int32), 3, reduce=reduce,
         id=f"scatter-{reduce}-f16")
    if reduce != "mean":
        for dtype in INTS:
            case("scatter", np.array([3, 7, 5, -2], NP[dtype]), np.array([1, 1, 0, 1]), 3,
                 reduce=reduce, id=f"scatter-{reduce}-{dtype}")
for reduce in ("sum", "max", "min"):  # onnxruntime's max and min reductions skip a NaN
    case("scatter", np.array([1.0, np.nan, -np.inf, 2.0], np.float32), np.array([0, 0, 1, 1]), 3,
         reduce=reduce, id=f"scatter-nan-{reduce}", targets=TARGETS if reduce == "sum" else NATIVE)
case("scatter_add", np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], np.float32),
     np.array([2, 0, 2]), 4)


# creation -------------------------------------------------------------------------------------
_group = "creation"
ARANGES = [((5,), {}), ((2, 11, 3), {}), ((5, -4, -2), {}), ((5, 2), {}),
           ((0.0, 1.0, 0.25), {"dtype": "f32"}), ((0, 1, 0.3), {"dtype": "f32"}),
           ((0.1, -0.35, -0.05), {"dtype": "f32"}), ((3,), {"dtype": "bf16"}),
           ((1, 9, 2), {"dtype": "i32"}), ((0.5, 4), {"dtype": "f16"}),
           ((0.1, 30.0, 0.7), {"dtype": "f16"}), ((0.1, 30.0, 0.7), {"dtype": "bf16"}),
           ((1 + 2**-11 + 2**-40, 2.0, 1.0), {"dtype": "f16"})]
for i, (bounds, attrs) in enumerate(ARANGES):
    # the last: just above a tie of f16, which rounding through f32 first (onnx) lands on
    case("arange", *bounds, id=f"arange-{i}", targets=NATIVE if i == 12 else TARGETS, **attrs)
for op, extra in (("zeros", ()), ("ones", ()), ("full", (7,)), ("full", (-2.5,))):
    for dtype in (*FLOATS, *INTS, "bool"):
        case(op, [2, 3], *extra, dtype=dtype, id=f"{op}{extra}-{dtype}")
case("ones", [], dtype="i64", id="ones-0d")
case("full", [2], 2.5, dtype="i64", id="full-truncates")
case("full", [2], 0.1, dtype="bf16", id="full-bf16-rounds")
case("one_hot", np.array([[0, 2]]), 3)
case("one_hot", np.array([1, 0, 3], np.int32), 4, dtype="f32", id="one_hot-f32")
case("one_hot", np.array([1, 0]), 2, dtype="bf16", id="one_hot-bf16")
case("one_hot", np.array([1, 0]), 2, dtype="bool", id="one_hot-bool")


# neural-network ops and matmul ----------------------------------------------------------------
_group = "nn"
CONV_CASES = [
    # x shape, weight shape, stride, padding, dilation, groups
    ((1, 3, 7, 6), (4, 3, 3, 3), 1, 0, 1, 1),
    ((2, 4, 9, 8), (6, 2, 3, 2), (2, 1), (1, 2), 1, 2),
    ((1, 4, 8, 7), (4, 1, 3, 3), 2, 1, (2, 1), 4),
    ((2, 3, 5, 5), (2, 3, 1, 1), 3, 0, 1, 1),
    ((1, 2, 6, 7), (3, 2, 4, 3), 1, "same", (1, 2), 1),
    ((1, 2, 6, 7), (3, 2, 4, 3), 1, "valid", 1, 1),
    # depthwise at stride 1: the input gradient is a depthwise convolution of the flipped
    # filters (two a channel in the second)
    ((2, 3, 7, 8), (3, 1, 3, 3), 1, 1, 1, 3),
    ((1, 2, 6, 7), (6, 1, 5, 3), 1, (4, 1), (2, 1), 2),
    # depthwise, strided: the weight gradient is depthwise_weight_grad (every depthwise one is)
    ((2, 3, 9, 8), (6, 1, 3, 3), 2, 1, 1, 3),
    ((1, 4, 8, 9), (4, 1, 5, 5), (2, 1), 2, (1, 2), 4),
]
CONV_T_CASES = [
    # x shape, weight shape, stride, padding, output_padding, dilation, groups
    ((1, 2, 3, 4), (2, 3, 3, 3), 2, 1, 1, 1, 1),
    ((2, 4, 3, 3), (4, 1, 2, 3), (2, 3), (0, 1), (1, 2), 1, 2),
    ((1, 2, 4, 3), (2, 2, 3, 2), 1, 0, 0, (2, 1), 1),
    ((1, 1, 2, 2), (1, 1, 4, 4), 2, 1, 0, 1, 1),
    ((1, 2, 3, 3), (2, 1, 3, 3), 1, 1, 1, 2, 1),  # output_padding under dilation, over stride
    ((1, 2, 3, 4), (2, 3, 3, 2), 1, 0, (1, 0), 2, 1),  # ... and over the padding
    ((3, 5, 1, 1), (5, 4, 4, 3), 1, 0, 0, 1, 1),  # 1x1 inputs: the output is the kernel's
    ((3, 5, 1, 1), (5, 4, 3, 3), 2, 1, 0, 1, 1),  # ... or a scatter of it (padding)
]
POOL_CASES = [
    # kernel, stride, padding, dilation, ceil_mode
    ((2, 2), None, (0, 0), (1, 1), False),
    ((3, 3), (2, 2), (1, 1), (1, 1), False),
    ((3, 2), (2, 1), (1, 0), (1, 1), True),
    ((2, 2), (3, 3), (1, 1), (1, 1), True),
    ((3, 3), (2, 2), (1, 0), (2, 1), True),
    ((1, 1), (2, 2), (0, 0), (1, 1), True),
]
# op, its arguments made from a half input x [1, 2, 5, 5], attributes
HALF_CASES = [
    ("conv", lambda x: (x, rand(4, 2, 3, 3, seed=5).astype(x.dtype), None), {"padding": 1}),
    ("conv_transpose", lambda x: (x, rand(2, 3, 2, 2, seed=5).astype(x.dtype), None),
     {"stride": 2}),
    ("max_pool", lambda x: (x,), {"kernel_size": 3, "stride": 2, "padding": 1}),
    ("avg_pool", lambda x: (x,), {"kernel_size": 2, "ceil_mode": True}),
    ("resize", lambda x: (x,), {"size": 7, "mode": "bilinear"}),
    ("layer_norm", lambda x: (x, 5), {}),
    ("group_norm", lambda x: (x, 2), {}),
    ("instance_norm", lambda x: (x,), {}),
]
for i, (xs, ws, stride, padding, dilation, groups) in enumerate(CONV_CASES):
    case("conv", rand(*xs, seed=1), rand(*ws, seed=2), rand(ws[0], seed=3), stride=stride,
         padding=padding, dilation=dilation, groups=groups, id=f"conv-{i}")
case("conv", rand(2, 4, 11, seed=4), rand(6, 2, 3, seed=5), None, stride=2, padding=2,
     dilation=2, groups=2, id="conv-1d")
case("conv", rand(1, 2, 6, 7), rand(3, 2, 4, 3), None, padding="same", id="conv-same-even-k")
for i, (xs, ws, stride, padding, out_pad, dilation, groups) in enumerate(CONV_T_CASES):
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


def pooled_like(x: np.ndarray, seed: int, **attrs) -> np.ndarray:
    """A random cotangent of max_pool(x, **attrs)'s shape (max_pool_grad's grad)."""
    return rand(*(d.value for d in infer1("max_pool", T(list(x.shape)), **attrs).shape), seed=seed)


for i, (k, s, p, d, ceil_mode) in enumerate(POOL_CASES):
    x = rand(1, 2, 7, 6, seed=13)
    window = {"kernel_size": k, "stride": s, "padding": p, "dilation": d, "ceil_mode": ceil_mode}
    case("max_pool_grad", x, pooled_like(x, 14, **window), **window, id=f"max_pool_grad-{i}")
LINE_X = rand(2, 3, 9, seed=15)
case("max_pool_grad", LINE_X, pooled_like(LINE_X, 16, kernel_size=3, stride=2, padding=1),
     kernel_size=3, stride=2, padding=1, id="max_pool_grad-1d")
# depthwise_weight_grad: x, then a cotangent of the depthwise convolution's output shape
case("depthwise_weight_grad", rand(2, 3, 7, 9, seed=17), rand(2, 3, 7, 9, seed=18),
     kernel_size=3, pads=1, id="depthwise_weight_grad-3x3")
case("depthwise_weight_grad", rand(1, 2, 9, 8, seed=17), rand(1, 4, 4, 4, seed=18),
     kernel_size=[3, 2], stride=2, pads=[1, 0, 2, 0], dilation=[1, 2],
     id="depthwise_weight_grad-strided")  # asymmetric pads, two filters a channel
case("depthwise_weight_grad", rand(2, 4, 11, seed=17), rand(2, 4, 5, seed=18), kernel_size=5,
     stride=2, pads=[2, 1], id="depthwise_weight_grad-1d")
case("depthwise_weight_grad", rand(1, 2, 7, 10, seed=17), rand(1, 2, 4, 3, seed=18),
     kernel_size=3, stride=[2, 3], pads=[1, 1, 0, 0],
     id="depthwise_weight_grad-stride-3")  # the native kernel's direct loops
INT_LINE = np.array([[[3, -1, 4, 1, -5, 9, 2]]], np.int32)
case("max_pool", INT_LINE, kernel_size=3, stride=2, padding=1, id="max_pool-i32")
case("max_pool", INT_LINE.astype(np.int64), kernel_size=2, ceil_mode=True, id="max_pool-i64")
case("avg_pool", INT_LINE.astype(np.float32), kernel_size=3, stride=2, padding=1,
     ceil_mode=True, id="avg_pool-1d")
for dtype in FLOATS:
    case("global_avg_pool", rand(2, 3, 4, 5, dtype=dtype), id=f"global_avg_pool-{dtype}",
         targets=_f64_targets("global_avg_pool", dtype))
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
# running variances near eps: a dropped or misplaced eps changes the result by far more than
# the tolerance (var 1e-3 with eps 1e-3 halves the variance the scale divides by)
MEAN, SCALE, SHIFT = (np.array(v, np.float32) for v in ([0.5, -1, 0], [1, 2, 3], [0, 1, -1]))
VAR = np.array([1e-3, 4e-3, 2e-2], np.float32)
case("batch_norm", rand(2, 3, 2, 2), MEAN, VAR, SCALE, SHIFT, eps=1e-3, id="batch_norm-affine")
case("batch_norm", rand(4, 3), MEAN, VAR, id="batch_norm-2d-plain")
case("batch_norm", rand(2, 3, 5), MEAN, VAR, None, SHIFT, id="batch_norm-bias-only")
for dtype in HALVES:
    half = [a.astype(NP[dtype]) for a in (MEAN, VAR, SCALE, SHIFT)]
    case("batch_norm", rand(2, 3, 4, dtype=dtype), *half, eps=1e-3, id=f"batch_norm-{dtype}")
    case("batch_norm", rand(2, 3, 4, dtype=dtype), *half, training=True,
         id=f"batch_norm-training-{dtype}")
# training mode: the batch's statistics (the running ones are not read)
case("batch_norm", rand(2, 3, 2, 2), MEAN, VAR, SCALE, SHIFT, training=True, eps=1e-3,
     id="batch_norm-training-affine")
case("batch_norm", rand(5, 3), MEAN, VAR, training=True, id="batch_norm-training-2d-plain")
case("batch_norm", rand(2, 3, 5), MEAN, VAR, None, SHIFT, training=True,
     id="batch_norm-training-bias-only")
case("group_norm", rand(2, 6, 3, seed=4), 3, rand(6, seed=5), rand(6, seed=6), id="group_norm")
case("group_norm", rand(2, 6, 2, 2, seed=4), 2, eps=1e-2, id="group_norm-plain")
case("group_norm", rand(3, 4, seed=4), 2, None, rand(4, seed=6), id="group_norm-2d-bias")
case("instance_norm", rand(2, 6, 3, 1, seed=4), id="instance_norm-plain")
case("instance_norm", rand(2, 3, 5, seed=4), rand(3, seed=5), rand(3, seed=6), eps=1e-3,
     id="instance_norm-affine")
for op, make, attrs in HALF_CASES:
    for dtype in HALVES:
        case(op, *make(rand(1, 2, 5, 5, dtype=dtype, seed=8)), id=f"{op}-{dtype}", **attrs)
for dtype in (*FLOATS, *INTS):
    case("matmul", rand(2, 1, 3, 4, dtype=dtype, seed=1), rand(3, 4, 2, dtype=dtype, seed=2),
         id=f"matmul-{dtype}")
case("matmul", rand(4), rand(2, 4, 3), id="matmul-vector-left")
case("matmul", rand(2, 3, 4), rand(4), id="matmul-vector-right")
case("matmul", rand(4), rand(4), id="matmul-dot")
# a [K, M] read transposed: odd sizes (the packing's 8 x 8 tiles and their edges), more rows
# than the streamed path takes, and a K over several of the GEMM's KC slices
for k, m, n, seed in ((5, 3, 2, 1), (37, 19, 23, 3), (300, 43, 17, 5)):
    case("matmul_at", rand(k, m, seed=seed), rand(k, n, seed=seed + 1), id=f"matmul_at-{m}")
# a [M, K] @ w^T, w [N, K] packed from its rows: odd sizes (8 x 8 tiles and their edges, N
# past a panel), a batch of a's rows, a K over several KC slices
for shape, n, seed in (((3, 5), 2, 1), ((2, 19, 37), 23, 3), ((43, 300), 17, 5)):
    case("matmul_bt", rand(*shape, seed=seed), rand(n, shape[-1], seed=seed + 1),
         id=f"matmul_bt-{n}")
# views of flat operands (passes/views.py): attention's heads of one projection [2, 5, 24]
# (q @ k^T scaled, k^T read with rows of stride 1; then scores @ v's heads written merged
# into [2, 5, 8]), and a transposed A over several of the GEMM's tiles and KC slices
case("matmul_strided", rand(2, 5, 24, seed=3), rand(2, 5, 24, seed=3), batch=[2, 2], m=5, k=4,
     n=5, a_view=[0, 120, 4, 24, 1], b_view=[8, 120, 4, 1, 24], c_view=[0, 50, 25, 5, 1],
     shape=[2, 2, 5, 5], alpha=0.5, id="matmul_strided-scores")
case("matmul_strided", rand(2, 2, 5, 5, seed=4), rand(2, 5, 24, seed=5), batch=[2, 2], m=5,
     k=5, n=4, a_view=[0, 50, 25, 5, 1], b_view=[16, 120, 4, 24, 1], c_view=[0, 40, 4, 8, 1],
     shape=[2, 5, 8], id="matmul_strided-merged")
case("matmul_strided", rand(3, 300, 30, seed=6, low=-0.5, high=0.5),
     rand(3, 300, 20, seed=7, low=-0.5, high=0.5), batch=[3], m=30,
     k=300, n=20, a_view=[0, 9000, 1, 30], b_view=[0, 6000, 20, 1], c_view=[0, 600, 20, 1],
     shape=[3, 30, 20], id="matmul_strided-transposed-a")
# softmax(alpha * q' @ k') @ v' of views: attention's heads of one projection [2, 5, 24],
# written merged into [2, 5, 8]; and 70 queries and 40 keys (rows of several tiles, a row
# softmax over whole vectors and a masked tail), q, k and v separate tensors
case("attention_strided", *[rand(2, 5, 24, seed=3)] * 3, batch=[2, 2], m=5, d=4, s=5, n=4,
     q_view=[0, 120, 4, 24, 1], k_view=[8, 120, 4, 1, 24], v_view=[16, 120, 4, 24, 1],
     c_view=[0, 40, 4, 8, 1], shape=[2, 5, 8], alpha=0.5, id="attention_strided-heads")
case("attention_strided", rand(3, 70, 16, seed=8), rand(3, 16, 40, seed=9),
     rand(3, 40, 24, seed=10), batch=[3], m=70, d=16, s=40, n=24, q_view=[0, 1120, 16, 1],
     k_view=[0, 640, 40, 1], v_view=[0, 960, 24, 1], c_view=[0, 1680, 24, 1],
     shape=[3, 70, 24], id="attention_strided-rows")
# masked and biased: a causal bool mask [5, 5] shared by every head (strides 0), kept where
# true; a key-padding bias [2, 5] per sample; then a mask filled where true with a finite
# value, over 70 x 40 scores (whole vectors and a masked tail of its bytes)
causal = np.tril(np.ones((5, 5), bool))
case("attention_strided", *[rand(2, 5, 24, seed=3)] * 3, causal, rand(2, 5, seed=11),
     batch=[2, 2], m=5, d=4, s=5, n=4, q_view=[0, 120, 4, 24, 1], k_view=[8, 120, 4, 1, 24],
     v_view=[16, 120, 4, 24, 1], c_view=[0, 40, 4, 8, 1], shape=[2, 5, 8], alpha=0.5,
     mask_view=[0, 0, 0, 5, 1], bias_view=[0, 5, 0, 0, 1], id="attention_strided-causal")
case("attention_strided", rand(3, 70, 16, seed=8), rand(3, 16, 40, seed=9),
     rand(3, 40, 24, seed=10), np.random.default_rng(12).random((3, 70, 40)) < 0.3,
     batch=[3], m=70, d=16, s=40, n=24, q_view=[0, 1120, 16, 1], k_view=[0, 640, 40, 1],
     v_view=[0, 960, 24, 1], c_view=[0, 1680, 24, 1], shape=[3, 70, 24],
     mask_view=[0, 2800, 40, 1], fill=-1e9, keep=False, id="attention_strided-dropped")
# a [M, K] and b [K + max(shifts) + span - 1, C]: windows of b's rows, overlapping
case("shifted_matmul", rand(3, 5, seed=3), rand(9, 2, seed=4), shifts=[0, 4, 1],
     id="shifted_matmul")
case("shifted_matmul", rand(2, 4, seed=5), rand(8, 3, seed=6), shifts=[2, 0], span=3,
     id="shifted_matmul-span")
# rows past the furthest window (conv's weight gradient appends whole zero samples): unread
case("shifted_matmul", rand(3, 5, seed=7), rand(13, 2, seed=8), shifts=[0, 4, 1],
     id="shifted_matmul-spare-rows")
case("shifted_matmul", rand(2, 4, seed=9), rand(11, 3, seed=10), shifts=[2, 0], span=3,
     id="shifted_matmul-span-spare-rows")
case("shifted_matmul", rand(2, 4, seed=11), rand(13, 3, seed=12), shifts=[2, 0], span=3,
     step=2, id="shifted_matmul-step")  # every other row: a strided convolution's dw
# batch_norm's training-mode gradient statistics, at sizes no multiple of the vector width
case("batch_norm_stats", rand(3, 5, 7, 9, seed=11), rand(3, 5, 7, 9, seed=12),
     id="batch_norm_stats")
case("batch_norm_stats", rand(2, 3, 17, seed=13), rand(2, 3, 17, seed=14),
     id="batch_norm_stats-1d")


# symbolic sizes: one compiled model or exported file, run at each of BINDINGS -----------------
def _bt(e):
    return rand(e["B"], e["T"], seed=e["T"])


def _x(e):
    return rand(e["B"], 1, 7, seed=e["B"], low=-3, high=3)


def _y(e):
    return rand(e["T"], 7, seed=e["T"], low=-3, high=3)


def _btc(e):
    return rand(e["B"], e["T"], 3, seed=e["B"], low=0.5, high=1.5)


def _indices(n: str, size: str, dtype: str = "i64", negative: bool = False):
    """Indices in range (negative ones too) into a symbolic size `size`, `n` of them."""
    return lambda e: rand(e[n], dtype=dtype, low=-e[size] if negative else 0, high=e[size] - 1)


XT, YT, BT, BTC = T(["B", 1, 7]), T(["T", 7]), T(["B", "T"]), T(["B", "T", 3])
_group = "unary"
for op in ("abs", "gelu", "softplus", "sign"):
    symbolic(op, [XT], _x)
_group = "binary"
for op in ("add", "floor_div", "mod", "pow", "maximum", "less"):
    symbolic(op, [XT, YT], _x, _y)
symbolic("add", [T(["B", 1]), T([1, 4])], lambda e: rand(e["B"], 1), lambda e: rand(1, 4))
symbolic("where", [T(["B", 1, 1], "bool"), XT, YT], lambda e: rand(e["B"], 1, 1, dtype="bool"),
         _x, _y)
_group = "reduce"
for op in REDUCTIONS:
    symbolic(op, [BTC], _btc, axis=1)
for op in ("sum", "max"):
    symbolic(op, [BTC], _btc, axis=[0, 2], keepdims=True)
symbolic("argmax", [BTC], _btc)
symbolic("argmin", [BTC], _btc, axis=1)
symbolic("logsumexp", [BTC], _btc, axis=[0, 1])
symbolic("argmax", [BT], _bt)
symbolic("logsumexp", [BT], _bt, axis=[0, 1])
symbolic("softmax", [BT], _bt, axis=0)
_group = "movement"
symbolic("padded_permute", [T(["B", 3, "H", 9])], lambda e: rand(e["B"], 3, e["H"], 9),
         [0, 2, 3, 1], [0, 1, 1, 1, 1, 1, 0, 0])
symbolic("reshape", [T(["B", 4, 5])], lambda e: rand(e["B"], 4, 5), [B, -1])
symbolic("reshape", [T(["B", 4, 5])], lambda e: rand(e["B"], 4, 5), [-1, 10])
symbolic("flatten", [T(["B", 3, "H"])], lambda e: rand(e["B"], 3, e["H"]), start=0)
symbolic("slice", [T(["B", "T", 6])], lambda e: rand(e["B"], e["T"], 6),
         [_rng(), _rng(L - 2, None), ("int", -1)])
symbolic("slice", [BT], _bt, [("int", B - 1), _rng(1, None, 2)])
symbolic("slice", [BT], _bt, [_rng(None, None, -1), _rng(L - 1, 0, -2)])
symbolic("split", [T(["B", 4])], lambda e: rand(e["B"], 4), 2)
symbolic("split", [T(["T", 3])], lambda e: rand(e["T"], 3), axis=0, sizes=[L - 2, 2])
symbolic("pad", [BT], _bt, [1, 2], mode="reflect")
symbolic("pad", [BT], _bt, [2, 1, 1, 0], mode="replicate")
symbolic("pad", [BT], _bt, [B, 1], value=3.0)
symbolic("broadcast_to", [T([1, 4])], lambda e: rand(1, 4), [B, 4])
symbolic("tile", [T(["B", 2])], lambda e: rand(e["B"], 2), [2, B])
symbolic("flip", [BT], _bt, [0, 1])
symbolic("tril", [BT], _bt, 1)
symbolic("squeeze", [T(["B", 1, "T"])], lambda e: rand(e["B"], 1, e["T"]), 1)
symbolic("unsqueeze", [BT], _bt, 1)
symbolic("concat", [BT, T(["B", 2])], [_bt, lambda e: rand(e["B"], 2)], axis=1)
symbolic("stack", [BT, BT], [_bt, _bt], axis=1)
_group = "index"
symbolic("scatter", [T(["T", 2]), T(["T"], "i64")], lambda e: rand(e["T"], 2),
         _indices("T", "N", negative=True), N, reduce="max")
symbolic("scatter", [T(["T", 2]), T(["T"], "i64")], lambda e: rand(e["T"], 2),
         _indices("T", "N"), N, reduce="mean")
symbolic("gather", [T(["N", 3]), T(["B"], "i64")], lambda e: rand(e["N"], 3),
         _indices("B", "N", negative=True))
symbolic("take_along_axis", [BT, T(["B", 2], "i32")], _bt,
         lambda e: rand(e["B"], 2, dtype="i32", low=-e["T"], high=e["T"] - 1), axis=1)
_group = "creation"
symbolic("one_hot", [T(["B"], "i64")], _indices("B", "N"), N, dtype="f32")
symbolic("arange", [], 1, L + 1, 2, dtype="i32")
symbolic("arange", [], L, dtype="f32")
symbolic("arange", [], B, L + 3, dtype="i64")
symbolic("zeros", [], [B, 3])
symbolic("full", [], [2], N, dtype="i64")
symbolic("full", [], [B, N], N, dtype="f16")
symbolic("full", [], [B, N], True, dtype="bool")
symbolic("dim_value", [], B * L + 1)
_group = "nn"
symbolic("matmul", [T(["B", "T", 3]), T([3, 2])], lambda e: rand(e["B"], e["T"], 3),
         lambda e: rand(3, 2))
symbolic("shifted_matmul", [T([2, "T"]), T([L + 4, 3])], lambda e: rand(2, e["T"]),
         lambda e: rand(e["T"] + 4, 3), shifts=[3, 0], span=2)
symbolic("shifted_matmul", [T([2, "T"]), T([L * 2 + 4, 3])], lambda e: rand(2, e["T"]),
         lambda e: rand(e["T"] * 2 + 4, 3), shifts=[3, 0], span=2, step=2)
symbolic("conv", [T(["B", 3, "H", "H"]), T([4, 3, 3, 3]), None],
         lambda e: rand(e["B"], 3, e["H"], e["H"]), lambda e: rand(4, 3, 3, 3), None,
         stride=2, padding=1)
symbolic("max_pool", [T(["B", 2, "H"])], lambda e: rand(e["B"], 2, e["H"]), kernel_size=3,
         stride=2, padding=1, ceil_mode=True)
symbolic("max_pool_grad", [T(["B", 2, 7]), T(["B", 2, 4])], lambda e: rand(e["B"], 2, 7),
         lambda e: rand(e["B"], 2, 4, seed=1), kernel_size=3, stride=2, padding=1)
symbolic("depthwise_weight_grad", [T(["B", 3, "H", "W"]), T(["B", 3, "H", "W"])],
         lambda e: rand(e["B"], 3, e["H"], e["W"]), lambda e: rand(e["B"], 3, e["H"], e["W"],
                                                                  seed=1),
         kernel_size=3, pads=1)
_HALF = (Dim.of("H") - 1) // 2 + 1
symbolic("depthwise_weight_grad", [T(["B", 2, "H", "W"]), T(["B", 2, _HALF, "W"])],
         lambda e: rand(e["B"], 2, e["H"], e["W"]),
         lambda e: rand(e["B"], 2, (e["H"] - 1) // 2 + 1, e["W"], seed=1),
         kernel_size=[3, 5], stride=[2, 1], pads=[1, 1, 2, 2])
symbolic("avg_pool", [T(["B", 2, "H"])], lambda e: rand(e["B"], 2, e["H"]), kernel_size=2,
         stride=2, padding=1, ceil_mode=True)
symbolic("resize", [T(["B", 1, "H", 4])], lambda e: rand(e["B"], 1, e["H"], 4),
         scale_factor=2.0, mode="bilinear")
symbolic("layer_norm", [T(["B", "T", 4]), None, None], lambda e: rand(e["B"], e["T"], 4),
         [L, 4], None, None)
symbolic("group_norm", [T(["B", 4, "H"]), None, None], lambda e: rand(e["B"], 4, e["H"]), 2,
         None, None)
_group = ""

_ids = [c.id for c in CASES] + [c.id for c in SYMBOLIC]
assert len(_ids) == len(set(_ids)), sorted({i for i in _ids if _ids.count(i) > 1})
