"""resize: the spatial axes of an NC(L)/NCHW tensor resized (nearest, nearest-exact, (bi)linear
or bicubic) as PyTorch's F.interpolate.
"""

from __future__ import annotations

import math

import numpy as np

from ..dims import Dim
from ..errors import KilnError
from ..types import TensorType, shape_str
from ._common import (
    attr_error,
    attrs,
    check_channels_first,
    choice,
    dtype_name,
    is_list,
    nn_native,
    number,
    tensors,
    to_dims,
    upcast,
)
from ._emit import trimmed, widened
from .registry import OpError, OpRecord, register
from .views import fold_border, pads_on


# resize -----------------------------------------------------------------------------------
def _resize_sizes(x: TensorType, a: dict) -> tuple[Dim, ...]:
    """Output spatial sizes from `size` or `scale_factor` (floor(in * scale), as PyTorch)."""
    check_channels_first(x, 3)
    n = x.rank - 2
    mode = choice(a["mode"], "mode", ("nearest", "nearest-exact", "bilinear", "bicubic"))
    if a["align_corners"] and mode not in ("bilinear", "bicubic"):
        raise attr_error("align_corners", "align_corners only applies to bilinear and bicubic "
                                          "resize")
    if (a["size"] is None) == (a["scale_factor"] is None):
        raise attr_error("size", "give exactly one of size and scale_factor")
    if a["size"] is not None:
        sizes = to_dims(a["size"], "size")
        if len(sizes) == 1:
            sizes = sizes * n
        if len(sizes) != n:
            raise attr_error("size", f"size needs 1 or {n} values, got {len(sizes)}")
        return sizes
    scales = _scales(a, n)
    out = []
    for size, scale in zip(x.shape[2:], scales, strict=False):
        if float(scale).is_integer():
            out.append(size * int(scale))
        elif size.is_const:
            out.append(Dim.of(math.floor(size.value * scale)))
        else:
            raise OpError(f"floor({size} * {scale}) is not a symbolic size; give size instead")
    return tuple(out)


def _scales(a: dict, n: int) -> tuple[float, ...]:
    values = a["scale_factor"] if is_list(a["scale_factor"]) else [a["scale_factor"]]
    scales = tuple(number(v, "scale_factor") for v in values)
    if len(scales) == 1:
        scales = scales * n
    if len(scales) != n or any(s <= 0 for s in scales):
        raise attr_error("scale_factor", f"scale_factor needs 1 or {n} positive values")
    return scales


def _resize_infer(types, a):
    (x,) = types
    return [TensorType(x.dtype, x.shape[:2] + _resize_sizes(x, a))]


def _source_ratio(a, i: int, size: int, out: int, n: int, for_corners: bool) -> np.float32:
    """PyTorch's area_pixel_compute_scale: 1/scale_factor when given, else in/out."""
    if for_corners:
        return np.float32((size - 1) / (out - 1) if out > 1 else 0)
    if a["scale_factor"] is not None:
        return np.float32(1 / _scales(a, n)[i])
    return np.float32(size / out)


# PyTorch's bicubic convolution coefficient (Keys, 1981, with A = -0.75 as OpenCV)
CUBIC_A = -0.75


def cubic_weights(t):
    """The weights of inputs lo - 1 .. lo + 2 at fraction t past lo (PyTorch's
    get_cubic_upsample_coefficients); `t` an f32 array, or the native kernel's f32 value (any
    number type with + - *: the same polynomials, the same f32 operations)."""
    def near(x):  # |x| <= 1
        return ((CUBIC_A + 2) * x - (CUBIC_A + 3)) * x * x + 1

    def far(x):  # 1 < |x| < 2
        return ((CUBIC_A * x - 5 * CUBIC_A) * x + 8 * CUBIC_A) * x - 4 * CUBIC_A
    return [far(t + 1), near(t), near(1 - t), far(2 - t)]


def _interpolate(y: np.ndarray, a: dict, i: int, out: int, n: int) -> np.ndarray:
    """y resized along spatial axis i (axis 2 + i) to `out`: the nearest row, or a blend of
    the two (bilinear) or four (bicubic) nearest rows."""
    axis = 2 + i
    size = y.shape[axis]
    corners = bool(a["align_corners"])
    ratio = _source_ratio(a, i, size, out, n, corners)
    dst = np.arange(out, dtype=np.float32)
    if a["mode"] == "bicubic":  # PyTorch: source not clamped at 0, the four reads clamped
        src = dst * ratio if corners else ratio * (dst + np.float32(0.5)) - np.float32(0.5)
        lo = np.floor(src)
        shape = [-1] + [1] * (y.ndim - 1 - axis)
        weights = cubic_weights((src - lo).astype(np.float32))
        lo = lo.astype(np.int64)
        return sum(np.take(y, np.clip(lo - 1 + k, 0, size - 1), axis=axis)
                   * w.astype(y.dtype).reshape(shape) for k, w in enumerate(weights))
    if a["mode"] != "bilinear":  # nearest-exact: pixel centres, floor((dst + 0.5) * ratio)
        src = (dst + np.float32(0.5)) * ratio if a["mode"] == "nearest-exact" else dst * ratio
        return np.take(y, np.minimum(np.floor(src).astype(np.int64), size - 1), axis=axis)
    src = dst * ratio if corners else np.maximum(ratio * (dst + 0.5) - 0.5, 0)
    lo = src.astype(np.int64)
    hi = np.minimum(lo + 1, size - 1)
    lam = (src - lo).astype(y.dtype).reshape([-1] + [1] * (y.ndim - 1 - axis))
    return np.take(y, lo, axis=axis) * (1 - lam) + np.take(y, hi, axis=axis) * lam


def _resize_reference(env, inputs, a):
    """Separable: along each spatial axis take the nearest, or blend the two nearest, rows."""
    (x,) = inputs
    y = upcast(x)
    sizes = [env.eval_dim(d) for d in _resize_sizes(TensorType(dtype_name(x), x.shape), a)]
    for i, out in enumerate(sizes):
        y = _interpolate(y, a, i, out, x.ndim - 2)
    return [y.astype(x.dtype)]


def _resize_vjp(gb, node, cts):
    """The adjoint of the interpolation, axis by axis (the last first). Along an axis of
    constant sizes the forward is a matrix M [out, in] of blend weights (the reference's own,
    read off by resizing the identity), so the gradient is ct times M, a matmul over that
    axis. Along an axis of symbolic size scaled by an integer s (scale_factor, not
    align_corners), output s * i + j reads the same inputs around i for every i, so the
    gradient is a stencil per phase j (`_phase_adjoint`)."""
    (ct,), (x,) = cts, node.inputs
    t, y, a = x.type, node.outputs[0].type, node.attrs
    n = t.rank - 2
    grad = ct
    for i in reversed(range(n)):
        size, out = t.shape[2 + i], y.shape[2 + i]
        if size.is_const and out.is_const:
            grad = _matrix_adjoint(gb, grad, a, i, n, size.value, out.value, t)
            continue
        phases = _phases(a, i, n)
        if phases is None:
            raise KilnError("K0815", f"resize's gradient needs constant spatial sizes or an "
                            f"integer scale_factor (without align_corners), not "
                            f"{shape_str(t.shape)} -> {shape_str(y.shape)}", gb.span,
                            hint="declare the input's spatial sizes as numbers "
                                 "(f32[B, 3, 32, 32])")
        grad = _phase_adjoint(gb, grad, 2 + i, size, phases)
    return [grad]


def _matrix_adjoint(gb, grad, a: dict, i: int, n: int, size: int, out: int, t: TensorType):
    """ct times the blend matrix [out, size] of spatial axis i (constant sizes)."""
    # identity rows as a [1, size, size] tensor resized along its last axis: [1, size, out]
    eye = np.eye(size, dtype=upcast(np.zeros(0, t.np_dtype)).dtype)[None]
    blend = _interpolate(eye, {**a, "scale_factor": _axis_scale(a, i, n)}, 0, out, 1)
    perm = [*range(2 + i), *range(3 + i, t.rank), 2 + i]  # axis 2 + i last
    back = [*range(2 + i), t.rank - 1, *range(2 + i, t.rank - 1)]
    moved = gb.permute(grad, perm)
    weights = gb.constant(blend[0].T.astype(t.np_dtype))  # [out, size]
    return gb.permute(gb.matmul(moved, weights), back)


# input sizes at which the periodic pattern is checked against the reference before it is
# relied on for every size (in f32, a scale that is not a power of 2 drifts a linear blend's
# weights along the axis, which the largest one catches)
_SIZES_CHECKED = (1, 2, 3, 4, 1024)
# an output s * m + j of an integer scale s reads inputs m - REACH .. m + REACH at most
# (nearest one, linear two, cubic four of them)
REACH = 2


def _phases(a: dict, i: int, n: int) -> np.ndarray | None:
    """For an integer scale s of spatial axis i: weights w [2 * REACH + 1, s] such that output
    s * m + j is sum_k w[k, j] * x[clamp(m - REACH + k)], as the reference computes it (checked at
    _SIZES_CHECKED); None for another resize, or where the reference's weights drift."""
    if a["scale_factor"] is None or a["align_corners"]:
        return None
    scale = _scales(a, n)[i]
    if not float(scale).is_integer():
        return None
    s = int(scale)
    taps = 2 * REACH + 1  # output rows of m = REACH read x[0 .. taps - 1]
    weights = _blend(a, scale, taps, s)[REACH * s:(REACH + 1) * s, :taps].T.astype(np.float64)
    for rows in _SIZES_CHECKED:
        if not np.allclose(_blend(a, scale, rows, s), _periodic(weights, rows, s), rtol=0,
                           atol=1e-6):
            return None
    return weights


def _blend(a: dict, scale: float, rows: int, s: int) -> np.ndarray:
    """The reference's blend matrix [rows * s, rows] along one axis (resizing the identity)."""
    eye = np.eye(rows, dtype=np.float32)[None]
    return _interpolate(eye, {**a, "scale_factor": scale}, 0, rows * s, 1)[0].T


def _periodic(weights: np.ndarray, rows: int, s: int) -> np.ndarray:
    """The blend matrix [rows * s, rows] of weights [taps, s] read at m - REACH + k, clamped."""
    m, j = np.divmod(np.arange(rows * s), s)
    out = np.zeros((rows * s, rows))
    for k in range(len(weights)):
        np.add.at(out, (m * s + j, np.clip(m - REACH + k, 0, rows - 1)), weights[k, j])
    return out


def _phase_adjoint(gb, ct, axis: int, size, weights: np.ndarray):
    """The adjoint along `axis` (of symbolic `size`) of y[s * m + j] = sum_k w[k, j] *
    x[clamp(m - REACH + k)]: ct as [.., size, s, ..], each shift k's weighted sum over the
    phases placed at offset k of the input padded by REACH on each side, then that border
    folded back onto the first and last inputs (the adjoint of the clamp, a replicate pad's)."""
    s = weights.shape[1]
    shape = list(ct.type.shape)
    split = gb.reshape(ct, shape[:axis] + [size, s] + shape[axis + 1:])
    rank = len(shape)
    padded = None
    for k in range(len(weights)):
        if not weights[k].any():
            continue
        w = weights[k].reshape([s] + [1] * (rank - axis - 1)).astype(ct.type.np_dtype)
        g = gb.op("sum", gb.mul(split, gb.constant(w)), axis=axis + 1)
        g = gb.op("pad", g, pads=pads_on(rank, axis, k, 2 * REACH - k))
        padded = g if padded is None else gb.add(padded, g)
    return fold_border(gb, padded, axis, size, Dim.of(REACH), Dim.of(REACH), False)


def _axis_scale(a: dict, i: int, n: int):
    """The scale_factor of spatial axis i alone (None when the sizes were given)."""
    return None if a["scale_factor"] is None else _scales(a, n)[i]


def _onnx_scale(size: Dim, scale: float, out: Dim) -> np.float32:
    """The f32 scale ONNX reads `scale` as, nudged up where onnx's shape inference would floor
    size * that f32 one below Python's floor of size * scale (10 * 1.3)."""
    s = np.float32(scale)
    if size.is_const and math.floor(size.value * float(s)) < out.value:
        s = np.nextafter(s, np.float32(np.inf))
    return s


def _resize_onnx(b, n):
    """Resize. nearest: PyTorch's legacy nearest (asymmetric, floor); nearest-exact: half_pixel
    rounding halves up, floor((dst + 0.5) / scale) as PyTorch's; bilinear: half_pixel,
    whose negative source coordinates linear mode clamps to 0 as PyTorch, or align_corners.
    With scale_factor the scales go in, as PyTorch reads source dst / scale, not dst * in / out."""
    (x,), t, a = n.inputs, n.in_types[0], n.attrs
    scales, sizes = None, b.shape(n.out_types[0].shape)
    if a["scale_factor"] is not None:
        spatial_out = zip(t.shape[2:], _scales(a, t.rank - 2), n.out_types[0].shape[2:],
                          strict=True)
        scales = b.const(np.array([1, 1, *(_onnx_scale(*s) for s in spatial_out)], np.float32))
        sizes = None
    if a["mode"] == "nearest":
        mode = {"mode": "nearest", "coordinate_transformation_mode": "asymmetric",
                "nearest_mode": "floor"}
    elif a["mode"] == "nearest-exact":
        mode = {"mode": "nearest", "coordinate_transformation_mode": "half_pixel",
                "nearest_mode": "round_prefer_ceil"}
    else:
        corners = "align_corners" if a["align_corners"] else "half_pixel"
        mode = {"mode": "linear", "coordinate_transformation_mode": corners}
        if a["mode"] == "bicubic":  # edge values past the ends, as PyTorch's clamped reads
            mode.update(mode="cubic", cubic_coeff_a=CUBIC_A, exclude_outside=0)
    b.node("Resize", trimmed([x, None, scales, sizes]), n.outputs, **mode)


def _resize_llvm(kb, n):
    """Source ratios known at compile time are computed as the reference does; the others
    (symbolic sizes) at run time."""
    x, y, a = n.in_types[0], n.out_types[0], n.attrs
    corners = bool(a["align_corners"])
    ratios = []
    for i, (size, out) in enumerate(zip(x.shape[2:], y.shape[2:], strict=True)):
        known = (size.is_const and out.is_const) or (a["scale_factor"] is not None
                                                     and not corners)
        ratios.append(_source_ratio(a, i, size.value if size.is_const else 0,
                                    out.value if out.is_const else 1, x.rank - 2, corners)
                      if known else None)
    nn_native("resize").resize(kb, n, ratios, a["mode"], corners, cubic_weights)


register(OpRecord(
    "resize",
    tensors("x") + attrs(("size", None), ("scale_factor", None), ("mode", "nearest"),
                         ("align_corners", False)),
    _resize_infer, _resize_reference,
    "Resize the spatial axes (nearest, nearest-exact, bilinear, bicubic), as F.interpolate.",
    onnx=widened(_resize_onnx), llvm=_resize_llvm, vjp=_resize_vjp))
