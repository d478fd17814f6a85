"""Converters of ONNX's tensor ops: shapes and views (Shape, Reshape, Flatten, Squeeze,
Unsqueeze, Transpose, Expand, Tile, DepthToSpace), joining and slicing (Concat, Split, Slice,
Pad, Trilu), indexing (Gather, GatherElements, GatherND, OneHot) and creation (Constant,
ConstantOfShape, Range, EyeLike), and Dropout at inference.

kiln takes shapes, axes and pads as compile-time attributes, so the ONNX inputs that carry them
must be known at import time (initializers, Constant nodes or values folded from them).
"""

from __future__ import annotations

import functools
import operator

import numpy as np

from ..builder import GraphBuilder
from ..dims import Dim
from ..ir import Value
from ..types import NUMPY_DTYPES, dtype_of_numpy
from .convert_base import (
    CONSTANT_NEEDED,
    INT_TYPES,
    OnnxNode,
    Unsupported,
    arg,
    attr,
    axis_of,
    choose,
    concrete_shape,
    const_input,
    const_ints,
    const_like,
    const_sizes,
    converter_table,
    dtype_of,
    index_relation,
    ints,
    kiln_dtype,
    known,
    need,
    require_dtype,
    required_sizes,
)

CONVERTERS, converter = converter_table()


def _prod(values) -> Dim:
    return functools.reduce(operator.mul, (Dim.of(v) for v in values), Dim.of(1))


def constant_of(gb: GraphBuilder, array: np.ndarray, what: str) -> Value:
    """A constant node holding `array`, whose element type must be kiln's."""
    array = np.asarray(array)
    if dtype_of_numpy(array.dtype) is None or array.dtype == np.float64:
        raise Unsupported(f"{what}: element type {array.dtype} is not one of kiln's")
    return gb.constant(array)


def shape_value(gb: GraphBuilder, shape) -> Value:
    """A 1-D i64 tensor of sizes: a constant when they are, else their run-time values."""
    shape = [Dim.of(d) for d in shape]
    if all(d.is_const for d in shape):
        return gb.constant(np.array([d.value for d in shape], dtype=np.int64))
    parts = [gb.op("dim_value", dim=d) for d in shape]
    return gb.op("stack", parts, axis=0)


# shapes -----------------------------------------------------------------------------------
@converter("Shape")
def _shape(gb, node):
    x = need(node, 0, "data")
    rank = x.type.rank
    start, end = attr(node, "start", 0), attr(node, "end", rank)
    # clamped into [0, rank] after counting negatives from the end (ONNX Shape-15)
    start, end = (min(max(v + rank if v < 0 else v, 0), rank) for v in (start, end))
    return [shape_value(gb, x.type.shape[start:end])]


@converter("Size")
def _size(gb, node):
    x = need(node, 0, "data")
    n = _prod(x.type.shape)
    if n.is_const:
        return [gb.constant(np.array(n.value, dtype=np.int64))]
    return [gb.op("dim_value", dim=n)]


@converter("Reshape")
def _reshape(gb, node):
    x = need(node, 0, "data")
    shape = required_sizes(gb, node, 1, "shape")
    allow_zero = bool(attr(node, "allowzero", 0))
    if not allow_zero:  # 0 copies the input's size at that position
        if any(s == 0 and i >= x.type.rank for i, s in enumerate(shape)):
            raise Unsupported("Reshape: a 0 in shape past the input's rank")
        shape = [x.type.shape[i] if s == 0 else s for i, s in enumerate(shape)]
    elif 0 in shape and -1 in shape:
        raise Unsupported("Reshape with allowzero=1 and both 0 and -1 in shape")
    return [gb.reshape(x, shape)]


@converter("Flatten")
def _flatten(gb, node):
    x = need(node, 0, "input")
    rank = x.type.rank
    axis = attr(node, "axis", 1)
    axis = axis + rank if axis < 0 else axis
    if not 0 <= axis <= rank:
        raise Unsupported(f"Flatten axis {attr(node, 'axis')} out of range for rank {rank}")
    return [gb.reshape(x, [_prod(x.type.shape[:axis]), _prod(x.type.shape[axis:])])]


def _axes(gb, node, slot: int, attr_name: str = "axes") -> list[int] | None:
    """Axes from the node's input `slot` (opset 13+) or its attribute."""
    if attr_name in node.attrs:
        return ints(node, attr_name)
    return const_ints(gb, node, slot, "axes")


@converter("Squeeze")
def _squeeze(gb, node):
    x = need(node, 0, "data")
    axes = _axes(gb, node, 1)
    if axes is not None and not axes:
        axes = None
    if axes is None and not x.type.is_concrete():
        raise Unsupported("Squeeze without axes of a tensor with symbolic sizes")
    return [gb.op("squeeze", x, axis=axes)]


@converter("Unsqueeze")
def _unsqueeze(gb, node):
    x = need(node, 0, "data")
    axes = _axes(gb, node, 1)
    if axes is None:
        raise Unsupported("Unsqueeze needs axes")
    return [gb.op("unsqueeze", x, axis=axes)]


@converter("Transpose")
def _transpose(gb, node):
    x = need(node, 0, "data")
    perm = ints(node, "perm", list(reversed(range(x.type.rank))))
    return [gb.permute(x, perm)]


def broadcast_dims(a, b) -> list[Dim]:
    """numpy's broadcast of two shapes of Dims (Unsupported where it depends on run time)."""
    a, b = [Dim.of(d) for d in a], [Dim.of(d) for d in b]
    n = max(len(a), len(b))
    a, b = [Dim.of(1)] * (n - len(a)) + a, [Dim.of(1)] * (n - len(b)) + b
    out = []
    for p, q in zip(a, b, strict=True):
        if p == q or q == 1:
            out.append(p)
        elif p == 1:
            out.append(q)
        else:
            raise Unsupported(f"sizes {p} and {q} do not broadcast at import time")
    return out


@converter("Expand")
def _expand(gb, node):
    x = need(node, 0, "input")
    shape = required_sizes(gb, node, 1, "shape")
    out = broadcast_dims(x.type.shape, shape)
    if list(out) == list(x.type.shape):
        return [x]
    return [gb.op("broadcast_to", x, shape=out)]


@converter("Tile")
def _tile(gb, node):
    x = need(node, 0, "input")
    reps = const_ints(gb, node, 1, "repeats")
    if reps is None or len(reps) != x.type.rank:
        raise Unsupported("Tile needs one repeat per axis")
    return [gb.op("tile", x, reps=reps)]


def _space_depth(gb, x: Value, block: int, to_space: bool, mode: str) -> Value:
    """DepthToSpace (DCR or CRD) or SpaceToDepth as reshape, permute, reshape (ONNX spec)."""
    if x.type.rank != 4:
        raise Unsupported(f"{'DepthToSpace' if to_space else 'SpaceToDepth'} needs a 4-D input")
    n, c, h, w = x.type.shape
    if to_space:
        if not c.is_const or c.value % (block * block):
            raise Unsupported("DepthToSpace needs constant channels divisible by blocksize^2")
        cb = c.value // (block * block)
        if mode == "DCR":
            y = gb.reshape(x, [n, block, block, cb, h, w])
            y = gb.permute(y, [0, 3, 4, 1, 5, 2])
        else:
            y = gb.reshape(x, [n, cb, block, block, h, w])
            y = gb.permute(y, [0, 1, 4, 2, 5, 3])
        return gb.reshape(y, [n, cb, h * block, w * block])
    if not (h.is_const and w.is_const) or h.value % block or w.value % block:
        raise Unsupported("SpaceToDepth needs constant spatial sizes divisible by blocksize")
    y = gb.reshape(x, [n, c, h.value // block, block, w.value // block, block])
    y = gb.permute(y, [0, 3, 5, 1, 2, 4] if mode == "DCR" else [0, 1, 3, 5, 2, 4])
    return gb.reshape(y, [n, c * block * block, h.value // block, w.value // block])


@converter("DepthToSpace")
def _depth_to_space(gb, node):
    mode = choose(node, "mode", "DCR", ("DCR", "CRD"))
    return [_space_depth(gb, need(node, 0, "input"), int(attr(node, "blocksize")), True, mode)]


@converter("SpaceToDepth")
def _space_to_depth(gb, node):
    mode = choose(node, "mode", "DCR", ("DCR", "CRD"))
    return [_space_depth(gb, need(node, 0, "input"), int(attr(node, "blocksize")), False, mode)]


# joining and slicing ----------------------------------------------------------------------
@converter("Concat")
def _concat(gb, node):
    values = [v for v in node.inputs if v is not None]
    rank = values[0].type.rank
    return [gb.op("concat", values, axis=axis_of(int(attr(node, "axis")), rank))]


@converter("Split")
def _split(gb, node):
    x = need(node, 0, "input")
    axis = axis_of(int(attr(node, "axis", 0)), x.type.rank)
    size = x.type.shape[axis]
    count = len(node.outputs)
    sizes = const_ints(gb, node, 1, "split")
    if sizes is None and "split" in node.attrs:
        sizes = ints(node, "split")
    if sizes is None:
        if not size.is_const:
            raise Unsupported("Split of a symbolic size without explicit split sizes")
        parts = int(attr(node, "num_outputs", count))
        chunk = -(-size.value // parts)  # ceil: the last part may be smaller (opset 18)
        sizes = [min(chunk, max(size.value - i * chunk, 0)) for i in range(parts)]
    if len(sizes) != count:
        raise Unsupported(f"Split into {len(sizes)} parts for {count} outputs")
    if count == 1:
        return [x]
    return list(gb.op("split", x, axis=axis, sizes=sizes))


_LIMIT = 2**61  # ONNX uses INT64_MAX/MIN for "to the end": past any size


@converter("Slice")
def _slice(gb, node):
    x = need(node, 0, "data")
    starts = _ints_or_sizes(const_sizes(gb, node, 1, "starts"))
    ends = _ints_or_sizes(const_sizes(gb, node, 2, "ends"))
    if starts is None or ends is None:
        raise Unsupported("Slice needs starts and ends")
    axes = const_ints(gb, node, 3, "axes") or list(range(len(starts)))
    steps = const_ints(gb, node, 4, "steps") or [1] * len(starts)
    rank = x.type.rank
    items = [("range", None, None, 1)] * rank
    for start, end, axis, step in zip(starts, ends, axes, steps, strict=True):
        if step == 0:
            raise Unsupported("Slice step 0")
        axis = axis_of(axis, rank)
        items[axis] = ("range", *_bounds(x.type.shape[axis], start, end, step), step)
    return [gb.op("slice", x, items=items)]


def _ints_or_sizes(values: list[Dim] | None) -> list[int | Dim] | None:
    """Sizes known as numbers as ints; symbolic ones (a slice up to `T`) stay Dims."""
    return None if values is None else [d.value if d.is_const else d for d in values]


def _bounds(size: Dim, start: int | Dim, end: int | Dim, step: int) -> tuple:
    """ONNX Slice bounds as Python slice bounds: clamped as Python clamps, which is what the
    ONNX spec says; a bound past every size ("to the end") is None. A symbolic bound (a size
    of an input) is taken as in range, as kiln's indexing takes it; one that is surely
    negative (minus a size: PyTorch's `x[:, -t:]`) counts from the end, as ONNX's do."""
    if isinstance(start, Dim) or isinstance(end, Dim):
        start, end = (size + b if isinstance(b, Dim) and _negative(b) else b
                      for b in (start, end))
        return tuple(b.value if isinstance(b, Dim) and b.is_const
                     else None if isinstance(b, int) and abs(b) >= _LIMIT else b
                     for b in (start, end))
    if size.is_const:
        first, stop, _ = slice(start, end, step).indices(size.value)
        # a negative step running off the front stops at -1, which Python would read as
        # "the last element": None says "to the front"
        return first, (None if stop < 0 else stop)
    return (None if abs(start) >= _LIMIT else start), (None if abs(end) >= _LIMIT else end)


def _negative(d: Dim) -> bool:
    """Whether d is below 0 for every value of its symbols (sizes, at least 1): a sum of
    negative multiples of symbols and a constant."""
    return not d.is_const and all(
        c < 0 and all(isinstance(atom, str) for atom, _ in mono) for mono, c in d.terms)


@converter("Pad")
def _pad(gb, node):
    x = need(node, 0, "data")
    mode = choose(node, "mode", "constant", ("constant", "reflect", "edge", "wrap"))
    pads = const_ints(gb, node, 1, "pads")
    if pads is None:
        raise Unsupported("Pad needs its pads input")
    rank = x.type.rank
    axes = const_ints(gb, node, 3, "axes")
    axes = list(range(rank)) if axes is None else [axis_of(a, rank) for a in axes]
    if len(pads) != 2 * len(axes):
        raise Unsupported(f"Pad: {len(pads)} pads for {len(axes)} axes")
    widths = [(0, 0)] * rank
    for i, axis in enumerate(axes):
        widths[axis] = (pads[i], pads[i + len(axes)])
    value = 0.0
    fill = known(gb, node, 2) if arg(node, 2) is not None else None
    if arg(node, 2) is not None and fill is None:
        raise Unsupported(f"Pad's constant_value must be a constant: {CONSTANT_NEEDED}")
    if fill is not None and fill.size:
        value = fill.reshape(-1)[0].item()
    if all(w == (0, 0) for w in widths):
        return [x]
    if mode == "wrap":
        return [_wrap_pad(gb, x, widths)]
    flat = [p for before, after in reversed(widths) for p in (before, after)]  # F.pad order
    kiln_mode = {"constant": "constant", "reflect": "reflect", "edge": "replicate"}[mode]
    return [gb.op("pad", x, pads=flat, mode=kiln_mode, value=value)]


def _wrap_pad(gb: GraphBuilder, x: Value, widths: list[tuple[int, int]]) -> Value:
    """Pad by wrapping around: the last `before` elements of each axis in front, its first
    `after` behind (a negative width crops)."""
    for axis, (before, after) in enumerate(widths):
        if (before, after) == (0, 0):
            continue
        size = x.type.shape[axis]
        if not size.is_const or max(before, after) > size.value:
            raise Unsupported("wrap Pad wider than the axis, or of a symbolic size")
        n = size.value
        index = np.arange(-before, n + after) % n
        x = gb.op("gather", x, gb.constant(index.astype(np.int64)), axis=axis)
    return x


@converter("Trilu")
def _trilu(gb, node):
    """kiln's triu / tril; a diagonal k computed from the inputs' sizes (a KV cache's causal
    mask, `tril(diagonal=total - t)`) keeps x where j - i >= k (upper) or <= k, a comparison
    of aranges with k's value at run time."""
    x = need(node, 0, "input")
    upper = attr(node, "upper", 1)
    k = const_sizes(gb, node, 1, "k")
    k = Dim.of(0) if k is None else k[0]
    if k.is_const:
        return [gb.op("triu" if upper else "tril", x, k=k.value)]
    rows, cols = (gb.op("arange", 0, end=d) for d in x.type.shape[-2:])
    diagonal = gb.op("sub", gb.op("unsqueeze", cols, axis=0), gb.op("unsqueeze", rows, axis=-1))
    keep = gb.op("greater_equal" if upper else "less_equal", diagonal,
                 gb.op("dim_value", dim=k))
    return [gb.op("where", keep, x, const_like(gb, 0, x.type.dtype))]


# indexing ---------------------------------------------------------------------------------
def _index(gb, node, slot: int) -> Value:
    index = need(node, slot, "indices")
    require_dtype(index, INT_TYPES, "indices")
    return index


@converter("Gather")
def _gather(gb, node):
    x = need(node, 0, "data")
    axis = axis_of(int(attr(node, "axis", 0)), x.type.rank)
    return [gb.op("gather", x, _index(gb, node, 1), axis=axis)]


@converter("GatherElements")
def _gather_elements(gb, node):
    x = need(node, 0, "data")
    axis = axis_of(int(attr(node, "axis", 0)), x.type.rank)
    return [gb.op("take_along_axis", x, _index(gb, node, 1), axis=axis)]


@converter("GatherND")
def _gather_nd(gb, node):
    """data[indices[..., 0], ..., indices[..., k-1]] as one gather on data with its first k
    axes merged, by the linear index sum(i_j * stride_j) (negative i_j counted from the end).
    With batch_dims b, the b batch axes are merged in front of those k: each index is offset
    by its batch position times the size of the k axes."""
    x = need(node, 0, "data")
    index = _index(gb, node, 1)
    b = int(attr(node, "batch_dims", 0))
    k_dim = index.type.shape[-1] if index.type.rank else Dim.of(0)
    if not 0 <= b < min(index.type.rank, x.type.rank):
        raise Unsupported(f"GatherND batch_dims {b} for ranks {x.type.rank} and "
                          f"{index.type.rank}")
    if not k_dim.is_const or k_dim.value > x.type.rank - b or k_dim.value == 0:
        raise Unsupported("GatherND needs a constant index depth within the data's rank")
    k = k_dim.value
    shape = concrete_shape(x, "GatherND's data") if b else x.type.shape
    batch, lead = shape[:b], shape[b:b + k]
    if b and tuple(index.type.shape[:b]) != tuple(Dim.of(n) for n in batch):
        raise Unsupported("GatherND's indices and data differ in their batch axes")
    linear = _linear_index(gb, index, lead)
    if b:
        offsets = np.arange(int(np.prod(batch)), dtype=NUMPY_DTYPES[dtype_of(linear)])
        offsets = offsets.reshape(*batch, *[1] * (index.type.rank - 1 - b)) * int(np.prod(lead))
        linear = gb.add(linear, gb.constant(offsets))
    flat = gb.reshape(x, [_prod(batch + lead), *x.type.shape[b + k:]])
    return [gb.op("gather", flat, linear, axis=0)]


def _linear_index(gb: GraphBuilder, index: Value, lead) -> Value:
    """sum_j i_j * stride_j over the last axis of `index` (each i_j negative counted from the
    end of its axis of size lead[j]): the position in those axes merged into one. A symbolic
    size or stride is its value at run time."""
    dtype = dtype_of(index)
    linear = None
    for j, size in enumerate(lead):
        stride = _prod(lead[j + 1:])
        i_j = gb.op("gather", index, gb.constant(np.array(j, np.int64)), axis=index.type.rank - 1)
        i_j = gb.op("where", gb.op("less", i_j, const_like(gb, 0, dtype)),
                    gb.add(i_j, _size_value(gb, size, dtype)), i_j)
        term = i_j if stride == 1 else gb.mul(i_j, _size_value(gb, stride, dtype))
        linear = term if linear is None else gb.add(linear, term)
    return linear


def _size_value(gb: GraphBuilder, size, dtype: str) -> Value:
    """A size as a scalar of integer type dtype: a constant, or its value at run time."""
    size = Dim.of(size)
    if size.is_const:
        return const_like(gb, size.value, dtype)
    return gb.cast(gb.op("dim_value", dim=size), dtype)


@converter("OneHot")
def _one_hot(gb, node):
    """values[1] where the index (negative: from the end) equals the position along the new
    axis, else values[0]; an index out of range makes its row all values[0]."""
    index = need(node, 0, "indices")
    depth = known(gb, node, 1)
    if depth is None:
        raise Unsupported(f"OneHot's depth must be a constant: {CONSTANT_NEEDED}")
    depth = int(depth.reshape(-1)[0])
    values = need(node, 2, "values")
    rank = index.type.rank + 1
    axis = axis_of(int(attr(node, "axis", -1)), rank)
    if dtype_of(index) not in INT_TYPES:  # float indices are truncated (the spec casts them)
        index = gb.cast(index, "i64")
    index = gb.cast(index, "i64") if dtype_of(index) != "i64" else index
    index = gb.op("where", gb.op("less", index, gb.constant(np.array(0, np.int64))),
                  gb.add(index, gb.constant(np.array(depth, np.int64))), index)
    positions = np.arange(depth, dtype=np.int64).reshape([-1] + [1] * (rank - 1 - axis))
    hot = gb.op("equal", gb.op("unsqueeze", index, axis=axis), gb.constant(positions))
    off = gb.op("gather", values, gb.constant(np.array(0, np.int64)), axis=0)
    on = gb.op("gather", values, gb.constant(np.array(1, np.int64)), axis=0)
    return [gb.op("where", hot, on, off)]


# creation ---------------------------------------------------------------------------------
@converter("Constant")
def _constant(gb, node):
    for name in ("value_string", "value_strings", "sparse_value"):
        if name in node.attrs:
            raise Unsupported(f"Constant with {name}")
    if "value" in node.attrs:
        array = np.asarray(node.attrs["value"])
    elif "value_float" in node.attrs:
        array = np.array(node.attrs["value_float"], np.float32)
    elif "value_floats" in node.attrs:
        array = np.array(node.attrs["value_floats"], np.float32)
    elif "value_int" in node.attrs:
        array = np.array(node.attrs["value_int"], np.int64)
    elif "value_ints" in node.attrs:
        array = np.array(node.attrs["value_ints"], np.int64)
    else:
        raise Unsupported("Constant without a value")
    return [constant_of(gb, array, "Constant")]


@converter("ConstantOfShape")
def _constant_of_shape(gb, node):
    shape = required_sizes(gb, node, 0, "shape")
    fill = node.attrs.get("value")
    fill = np.zeros(1, np.float32) if fill is None else np.asarray(fill)
    dtype = dtype_of_numpy(fill.dtype)
    if dtype is None:
        raise Unsupported(f"ConstantOfShape: element type {fill.dtype} is not one of kiln's")
    value = fill.reshape(-1)[0].item()
    return [gb.op("full", shape=shape, value=value, dtype=dtype)]


@converter("Range")
def _range(gb, node):
    """start + i * delta for i < max(ceil((limit - start) / delta), 0), in the inputs' type."""
    bounds = [known(gb, node, i) for i in range(3)]
    limit = arg(node, 1)
    if (bounds[1] is None and bounds[0] is not None and bounds[2] is not None
            and limit is not None and dtype_of(limit) in INT_TYPES):
        return [_range_to_size(gb, node, bounds[0], bounds[2])]
    start, limit, delta = (const_input(gb, node, i, name)
                           for i, name in enumerate(("start", "limit", "delta")))
    dtype = start.dtype
    count = max(int(np.ceil((limit.item() - start.item()) / delta.item())), 0)
    values = (start + np.arange(count).astype(dtype) * delta).astype(dtype)
    return [constant_of(gb, values, "Range")]


def _range_to_size(gb: GraphBuilder, node: OnnxNode, start: np.ndarray, delta: np.ndarray
                   ) -> Value:
    """Range up to a size computed from an input's shape (`arange(T)`), in an integer type."""
    limit = need(node, 1, "limit")
    require_dtype(limit, INT_TYPES, "Range with a limit known only at run time")
    (end,) = required_sizes(gb, node, 1, "limit")
    return gb.op("arange", int(start), end=end, step=int(delta), dtype=dtype_of(limit))


@converter("EyeLike")
def _eye_like(gb, node):
    x = need(node, 0, "input")
    rows, cols = concrete_shape(x, "EyeLike")
    dtype = kiln_dtype(int(attr(node, "dtype")), "EyeLike") if "dtype" in node.attrs \
        else dtype_of(x)
    eye = np.eye(rows, cols, int(attr(node, "k", 0)), dtype=NUMPY_DTYPES[dtype])
    return [gb.constant(eye)]


@converter("Dropout")
def _dropout(gb, node):
    """The identity at inference (training_mode false or ratio 0); its mask all true."""
    x = need(node, 0, "data")
    attr(node, "seed")  # the random generator's seed: no randomness at inference
    training = known(gb, node, 2) if arg(node, 2) is not None else np.array(False)
    ratio = known(gb, node, 1) if arg(node, 1) is not None else np.array(0.5)
    if training is None or (bool(training.reshape(()).item())
                            and (ratio is None or float(ratio.reshape(()).item()) != 0.0)):
        raise Unsupported("Dropout in training mode (random)")
    outputs = [x]
    if len(node.outputs) > 1 and node.outputs[1]:
        outputs.append(gb.op("full", shape=list(x.type.shape), value=True, dtype="bool"))
    return outputs


# scatter ----------------------------------------------------------------------------------
def _scatter_into(gb: GraphBuilder, data: Value, updates: Value, index: Value, axis: int,
                  reduction: str) -> Value:
    """data with updates folded in at index along axis (kiln's scatter folds into a fresh
    tensor; a count of what lands where says which elements keep data's value). Updates
    narrower than data on the other axes are scattered at their start. With reduction none,
    duplicate indices are undefined in ONNX: the largest update lands, one of the orders."""
    size = data.type.shape[axis]
    ones = gb.op("full", shape=list(updates.type.shape), value=1, dtype="i64")
    kiln = {"none": "max", "add": "sum", "mul": "prod", "max": "max", "min": "min"}[reduction]
    folded = gb.op("scatter", updates, index, size=size, axis=axis, reduce=kiln)
    count = gb.op("scatter", ones, index, size=size, axis=axis, reduce="sum")
    folded, count = (_pad_to(gb, v, data.type.shape) for v in (folded, count))
    landed = gb.op("greater", count, gb.constant(np.array(0, np.int64)))
    if reduction == "add":
        return gb.add(data, folded)
    if reduction == "mul":
        return gb.mul(data, gb.op("where", landed, folded, const_like(gb, 1, dtype_of(data))))
    if reduction in ("max", "min"):
        both = gb.op("maximum" if reduction == "max" else "minimum", data, folded)
        return gb.op("where", landed, both, data)
    return gb.op("where", landed, folded, data)


def _pad_to(gb: GraphBuilder, x: Value, shape) -> Value:
    """x padded with zeros at the end of each axis to `shape` (constant sizes)."""
    extra = [Dim.of(want) - have for have, want in zip(x.type.shape, shape, strict=True)]
    if all(e == 0 for e in extra):
        return x
    if not all(e.is_const and e.value >= 0 for e in extra):
        raise Unsupported("scatter updates wider than data, or of symbolic size")
    flat = [p for e in reversed(extra) for p in (0, e.value)]
    return gb.op("pad", x, pads=flat, value=0)


def _reduction(node: OnnxNode) -> str:
    return choose(node, "reduction", "none", ("none", "add", "mul", "max", "min"))


@converter("ScatterElements")
def _scatter_elements(gb, node):
    data, updates = need(node, 0, "data"), need(node, 2, "updates")
    axis = axis_of(int(attr(node, "axis", 0)), data.type.rank)
    return [_scatter_into(gb, data, updates, _index(gb, node, 1), axis, _reduction(node))]


@converter("ScatterND")
def _scatter_nd(gb, node):
    """data's first k axes merged, the k-index of each update made one linear index (as
    GatherND), and the updates scattered along the merged axis; of any sizes, symbolic ones
    included."""
    data, updates = need(node, 0, "data"), need(node, 2, "updates")
    index = _index(gb, node, 1)
    k_dim = index.type.shape[-1] if index.type.rank else Dim.of(0)
    if not k_dim.is_const or not 0 < k_dim.value <= data.type.rank:
        raise Unsupported("ScatterND needs a constant index depth within the data's rank")
    k = k_dim.value
    shape = data.type.shape  # sizes may be symbolic (`x[:, 0] = y` of a dynamic batch)
    linear = _linear_index(gb, index, shape[:k])
    count = _prod(index.type.shape[:-1])
    flat_data = gb.reshape(data, [_prod(shape[:k]), *shape[k:]])
    flat_updates = gb.reshape(updates, [count, *shape[k:]])
    out = _scatter_into(gb, flat_data, flat_updates, gb.reshape(linear, [count]), 0,
                        _reduction(node))
    return [gb.reshape(out, list(shape))]


@converter("Compress")
def _compress(gb, node):
    """The slices along axis (of the flattened input without one) where condition holds:
    condition must be known at import time, as the result's size depends on it."""
    x = need(node, 0, "input")
    condition = const_input(gb, node, 1, "condition").reshape(-1).astype(bool)
    if "axis" in node.attrs:
        axis = axis_of(int(attr(node, "axis")), x.type.rank)
    else:
        x, axis = gb.reshape(x, [-1]), 0
    size = x.type.shape[axis]
    if size.is_const and len(condition) > size.value:
        condition = condition[:size.value]  # a longer condition's tail selects nothing
    index = np.flatnonzero(condition).astype(np.int64)
    return [gb.op("gather", x, gb.constant(index), axis=axis)]


@converter("ReverseSequence")
def _reverse_sequence(gb, node):
    """Each batch entry's first sequence_lens[b] steps reversed: a gather along the time
    axis by indices known at import time."""
    x = need(node, 0, "input")
    lens = const_input(gb, node, 1, "sequence_lens").reshape(-1).astype(np.int64)
    batch_axis, time_axis = int(attr(node, "batch_axis", 1)), int(attr(node, "time_axis", 0))
    shape = concrete_shape(x, "ReverseSequence")
    steps = np.arange(shape[time_axis])
    # index[t, b]: the step read at step t of entry b
    index = np.where(steps[:, None] < lens[None, :], lens[None, :] - 1 - steps[:, None],
                     steps[:, None])
    if (time_axis, batch_axis) == (1, 0):
        index = index.T
    index = index.reshape(index.shape + (1,) * (len(shape) - 2))
    index = np.ascontiguousarray(np.broadcast_to(index, shape))
    return [gb.op("take_along_axis", x, gb.constant(index), axis=time_axis)]


def _cumulative(gb: GraphBuilder, node: OnnxNode, combine) -> list:
    """CumSum/CumProd: x with its axis moved last, `combine(gb, moved, relation)` of which
    inputs i reach output j (i <= j; i < j exclusive; i >= j, i > j reversed: an
    index_relation, of a symbolic axis too), and the axis moved back."""
    x = need(node, 0, "x")
    axis_value = const_input(gb, node, 1, "axis")
    axis = axis_of(int(axis_value.reshape(-1)[0]), x.type.rank)
    exclusive, reverse = bool(attr(node, "exclusive", 0)), bool(attr(node, "reverse", 0))
    relation = ("greater" if reverse else "less") + ("" if exclusive else "_equal")
    last = x.type.rank - 1
    perm = list(range(x.type.rank))
    perm[axis], perm[last] = last, axis
    moved = x if axis == last else gb.permute(x, perm)
    y = combine(gb, moved, functools.partial(index_relation, gb, x.type.shape[axis], relation))
    return [y if axis == last else gb.permute(y, perm)]


@converter("CumSum")
def _cumsum(gb, node):
    """Running sums: the product with the mask as a matrix of ones."""
    return _cumulative(gb, node, lambda gb, x, mask: gb.matmul(x, mask(dtype_of(x))))


@converter("CumProd")
def _cumprod(gb, node):
    """Running products: each output the product over its row of x[..., i] where the mask
    holds, else 1 (an [..., n, n] intermediate); integers wrap as numpy's do."""
    def combine(gb, x, mask):
        spread = gb.op("where", mask(), gb.op("unsqueeze", x, axis=[-1]),
                       const_like(gb, 1, dtype_of(x)))
        product = gb.op("prod", spread, axis=[x.type.rank - 1])
        return product if dtype_of(product) == dtype_of(x) else gb.cast(product, dtype_of(x))

    return _cumulative(gb, node, combine)


@converter("MaxUnpool")
def _max_unpool(gb, node):
    """X's values scattered into zeros at their flat Indices (MaxPool's: over the whole
    output, batch and channels included), the output shaped as the pooling's input would be:
    (in - 1) * stride - pads + kernel per spatial axis, padded with zeros at the end of each
    axis to output_shape when given (which may only be larger)."""
    x, index = need(node, 0, "X"), _index(gb, node, 1)
    kernel = ints(node, "kernel_shape")
    rank = x.type.rank - 2
    if kernel is None or len(kernel) != rank:
        raise Unsupported("MaxUnpool needs a kernel_shape per spatial axis")
    strides = ints(node, "strides", [1] * rank)
    pads = ints(node, "pads", [0] * 2 * rank)
    spatial = x.type.shape[2:]
    if not all(d.is_const for d in spatial):
        raise Unsupported("MaxUnpool needs X's spatial sizes as constants")
    inferred = [*x.type.shape[:2], *(
        (d.value - 1) * s - (pads[a] + pads[rank + a]) + k
        for a, (d, s, k) in enumerate(zip(spatial, strides, kernel, strict=True)))]
    total = functools.reduce(operator.mul, inferred)
    flat = gb.reshape(x, [functools.reduce(operator.mul, x.type.shape)])
    zeros = gb.op("zeros", shape=[total], dtype=dtype_of(x))
    at = gb.reshape(gb.cast(index, "i64"), flat.type.shape)
    y = gb.reshape(_scatter_into(gb, zeros, flat, at, 0, "none"), inferred)
    shape = const_sizes(gb, node, 2, "output_shape")
    if shape is None:
        return [y]
    if len(shape) != x.type.rank:
        raise Unsupported(f"MaxUnpool's output_shape has {len(shape)} sizes for rank "
                          f"{x.type.rank}")
    return [_pad_to(gb, y, shape)]


@converter("TensorScatter")
def _tensor_scatter(gb, node):
    """present = past_cache with update written along axis from write_indices[b] on, for
    each batch entry b (axis 0); mode circular wraps at the cache's length, linear drops
    what falls past it (ONNX leaves it undefined). Each cache position p reads update at
    p - write_indices[b] (wrapped), where that lies in the update."""
    past, update = need(node, 0, "past_cache"), need(node, 1, "update")
    mode = choose(node, "mode", "linear", ("linear", "circular"))
    rank = past.type.rank
    axis = axis_of(int(attr(node, "axis", -2)), rank)
    if axis == 0:
        raise Unsupported("TensorScatter along the batch axis")
    length, count = past.type.shape[axis], update.type.shape[axis]
    if not (length.is_const and count.is_const):
        raise Unsupported("TensorScatter along an axis of symbolic size")
    batch = past.type.shape[0]
    starts = arg(node, 2)
    starts = gb.op("zeros", shape=[batch], dtype="i64") if starts is None else \
        gb.cast(_index(gb, node, 2), "i64")
    at_axis = [1] * rank
    at_axis[axis] = length.value
    positions = gb.constant(np.arange(length.value, dtype=np.int64).reshape(at_axis))
    offset = gb.sub(positions, gb.reshape(starts, [batch, *[1] * (rank - 1)]))
    if mode == "circular":  # offset > -length: one length added makes it non-negative
        size = gb.constant(np.array(length.value, np.int64))
        offset = gb.op("mod", gb.add(offset, size), size)
    zero = gb.constant(np.array(0, np.int64))
    inside = gb.op("logical_and", gb.op("greater_equal", offset, zero),
                   gb.op("less", offset, gb.constant(np.array(count.value, np.int64))))
    source = gb.op("where", inside, offset, zero)
    taken = gb.op("take_along_axis", update, source, axis=axis)
    return [gb.op("where", inside, taken, past)]


# optionals: a tensor given is an optional holding it, an absent input the empty one -------
@converter("OptionalHasElement")
def _optional_has_element(gb, node):
    return [gb.constant(np.array(arg(node, 0) is not None))]


@converter("OptionalGetElement")
def _optional_get_element(gb, node):
    return [need(node, 0, "input")]


@converter("MelWeightMatrix")
def _mel_weight_matrix(gb, node):
    """A constant: every input (bins, DFT length, sample rate, the band's edges) is needed at
    import time, and the matrix is what ONNX's reference computes of them."""
    from onnx import helper, numpy_helper
    from onnx.reference import ReferenceEvaluator  # loaded only when a model has the op

    names = ["num_mel_bins", "dft_length", "sample_rate", "lower_edge_hertz",
             "upper_edge_hertz"]
    values = [const_input(gb, node, i, name) for i, name in enumerate(names)]
    kiln_dtype(int(attr(node, "output_datatype", 1)), "MelWeightMatrix's output_datatype")
    op = helper.make_node("MelWeightMatrix", names, ["y"], **node.attrs)
    graph = helper.make_graph([op], "mel", [], [helper.make_tensor_value_info("y", 0, None)],
                              [numpy_helper.from_array(np.asarray(v), n)
                               for v, n in zip(values, names, strict=True)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", node.opset)])
    try:
        (matrix,) = ReferenceEvaluator(model).run(None, {})
    except Exception as exc:  # the reference refuses what the standard does not define
        raise Unsupported(f"MelWeightMatrix of these inputs: {exc}") from None
    return [constant_of(gb, matrix, "MelWeightMatrix")]


@converter("TfIdfVectorizer")
def _tf_idf_vectorizer(gb, node):
    """Counts of the pool's n-grams in each row of integer X ([N, L] or [L]), as ONNX's
    reference counts them: gram j (n tokens) at every start i and skip distance d
    (1 .. max_skip_count + 1; unigrams once) where X[i + k d] = token k for all k; each count
    is TF (the count), IDF (gram j's weight, or 1, where counted) or TFIDF (its weight times
    the count, or the count), in column ngram_indexes[j]."""
    x = _index(gb, node, 0)
    if x.type.rank not in (1, 2) or not x.type.shape[-1].is_const:
        raise Unsupported(f"TfIdfVectorizer of X {x.type} (only [N, L] or [L], L constant)")
    if attr(node, "pool_strings") is not None:
        raise Unsupported("TfIdfVectorizer over strings (kiln's element types have none)")
    mode = choose(node, "mode", "TF", ("TF", "IDF", "TFIDF"))
    low, high = int(attr(node, "min_gram_length")), int(attr(node, "max_gram_length"))
    skips = int(attr(node, "max_skip_count"))
    pool = [int(v) for v in attr(node, "pool_int64s", [])]
    starts = [int(v) for v in attr(node, "ngram_counts")]
    indexes = [int(v) for v in attr(node, "ngram_indexes")]
    weights = attr(node, "weights")
    # ngram_counts[n - 1]: where the pool's n-grams start (each n tokens, in order)
    grams = [pool[i:i + n] for n, (begin, end) in
             enumerate(zip(starts, [*starts[1:], len(pool)]), start=1)
             for i in range(begin, end - n + 1, n)]
    if len(grams) != len(indexes):
        raise Unsupported(f"TfIdfVectorizer: {len(grams)} n-grams for {len(indexes)} "
                          "ngram_indexes")
    length = x.type.shape[-1].value
    rows = x if x.type.rank == 2 else gb.reshape(x, [1, length])
    last = {tuple(gram): j for j, gram in enumerate(grams)}  # a repeated gram counts once,
    counts = []                                              # at its last place (a trie's)
    for j, gram in enumerate(grams):
        n = len(gram)
        count = None
        if low <= n <= high and last[tuple(gram)] == j:
            for d in range(1, (skips + 1 if n > 1 else 1) + 1):
                span = length - (n - 1) * d
                if span <= 0:
                    continue
                match = None
                for k, token in enumerate(gram):
                    at = gb.op("gather", rows, gb.constant(np.arange(span) + k * d), axis=1)
                    hit = gb.op("equal", at, gb.constant(np.array(token, x.type.np_dtype)))
                    match = hit if match is None else gb.op("logical_and", match, hit)
                found = gb.op("sum", gb.cast(match, "f32"), axis=[1], keepdims=False)
                count = found if count is None else gb.add(count, found)
        counts.append(count if count is not None else
                      gb.op("zeros", shape=[rows.type.shape[0]], dtype="f32"))
    y = gb.op("stack", counts, axis=1)  # [N, grams]
    if mode == "IDF" and len(set(indexes)) < len(indexes):
        raise Unsupported("TfIdfVectorizer in IDF mode with n-grams sharing a column")
    if mode == "IDF":
        y = gb.cast(gb.op("greater", y, gb.constant(np.array(0, np.float32))), "f32")
    if mode != "TF" and weights is not None and len(weights):
        if len(weights) != len(grams):
            raise Unsupported(f"TfIdfVectorizer: {len(weights)} weights for {len(grams)} "
                              "n-grams")
        # the spec's (and onnxruntime's) weight of gram j; ONNX's reference weighs column j
        y = gb.mul(y, gb.constant(np.asarray(weights, np.float32)))
    place = np.zeros((len(grams), max(indexes) + 1), np.float32)
    place[np.arange(len(grams)), indexes] = 1  # gram j counts in column ngram_indexes[j]
    y = gb.matmul(y, gb.constant(place))
    return [y if x.type.rank == 2 else gb.reshape(y, [place.shape[1]])]


# ops whose output's size depends on the input's values -----------------------------------
@converter("NonZero", "Unique", "NonMaxSuppression")
def _data_dependent(gb, node):
    raise Unsupported(f"{node.op_type}'s output size depends on its input's values, and "
                      "kiln's sizes are fixed before the model runs")
