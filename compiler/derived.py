"""Arrays derived from the weights: values a backend reads that are computed from parameters
before any call (a weight's transpose, a BatchNorm folded into the layer before it, a
convolution weight prepacked for the GEMM), named so that the name alone says how to make
them from their sources:

    permute(perm=1_0):0.weight                           (a Linear's weight.T)
    permute(perm=1_0):reshape(shape=1024_256):lstm.R     (an ONNX weight [1, 4H, H]'s R^T)
    bn_conv_weight(eps=1e-05):[conv.weight;bn.running_var;bn.weight]
    prepack_b(groups=1,nr=32):permute(perm=1_0):0.weight (weight.T as the GEMM's B panels)

A name is `kind(arg=value,...):source`, or with several sources `kind(...):[a;b;c]`: each
value an int, a float (as Python writes it) or ints joined by `_`; each source a parameter
path, a `const:N` constant, another derived name, or `-` for an absent optional one.
Because the name says how to remake the array, new weights only remake derived arrays: no
code is rebuilt (weights are data, not code). Backends add kinds of their own
(codegen/llvm/derived.py).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

Kind = Callable[..., np.ndarray]
ABSENT = "-"


def permute(source: np.ndarray, perm: int | tuple[int, ...]) -> np.ndarray:
    """The source with its axes reordered (axis i of the result is axis perm[i]), contiguous."""
    return np.ascontiguousarray(np.transpose(source, np.atleast_1d(perm)))


def reshape(source: np.ndarray, shape: int | tuple[int, ...]) -> np.ndarray:
    """The source's elements, row-major, in `shape` (an ONNX weight's leading axis of one
    direction dropped, say)."""
    return np.ascontiguousarray(source).reshape(np.atleast_1d(shape))


# BatchNorm folding (passes/batch_norm.py): batch_norm(y) = (y - mean) * s + beta with
# s = gamma / sqrt(var + eps) per channel; folded into the layer y comes from, in float64,
# rounded once to the weight's dtype.
def _scale(var: np.ndarray, gamma: np.ndarray | None, eps: float) -> np.ndarray:
    one = 1.0 if gamma is None else gamma.astype(np.float64)
    return one / np.sqrt(var.astype(np.float64) + eps)


def _times(weight: np.ndarray, s: np.ndarray) -> np.ndarray:
    """weight * s in float64, rounded once to the weight's dtype: the values of
    `(weight.astype(np.float64) * s).astype(weight.dtype)`, in one pass without the float64
    copies (ResNet-18's folded weights: 15x faster) where numpy's own float types allow."""
    if weight.dtype not in (np.float16, np.float32, np.float64):  # bf16: the plain way
        return (weight.astype(np.float64) * s).astype(weight.dtype)
    out = np.empty(np.broadcast_shapes(weight.shape, s.shape), weight.dtype)
    np.multiply(weight, s, out=out, dtype=np.float64, casting="same_kind")
    return out


def bn_conv_weight(weight, var, gamma, eps: float) -> np.ndarray:
    """A convolution's weight [C_out, C_in/g, *k] with each output channel's filter times s."""
    s = _scale(var, gamma, eps)
    ones = (1,) * (weight.ndim - 2)
    return _times(weight, s.reshape(-1, 1, *ones))


def bn_conv_transpose_weight(weight, var, gamma, eps: float, groups: int) -> np.ndarray:
    """A transposed convolution's weight [C_in, C_out/g, *k] (channels group-major) with each
    output channel's filter times s."""
    s = _scale(var, gamma, eps)
    ones = (1,) * (weight.ndim - 2)
    grouped = weight.reshape(groups, -1, *weight.shape[1:])
    return _times(grouped, s.reshape(groups, 1, -1, *ones)).reshape(weight.shape)


def bn_linear_weight(weight, var, gamma, eps: float) -> np.ndarray:
    """A product's weight [K, C] (x @ W) with each output column times s."""
    return _times(weight, _scale(var, gamma, eps))


def bn_bias(weight, bias, mean, var, gamma, beta, eps: float) -> np.ndarray:
    """The folded layer's bias (b - mean) * s + beta, in the weight's dtype."""
    b = 0.0 if bias is None else bias.astype(np.float64).reshape(-1)
    shift = 0.0 if beta is None else beta.astype(np.float64)
    return ((b - mean.astype(np.float64)) * _scale(var, gamma, eps) + shift).astype(weight.dtype)


KINDS: dict[str, Kind] = {
    "permute": permute, "reshape": reshape, "bn_conv_weight": bn_conv_weight,
    "bn_conv_transpose_weight": bn_conv_transpose_weight, "bn_linear_weight": bn_linear_weight,
    "bn_bias": bn_bias,
}


def derived_name(kind: str, sources: str | Sequence[str | None], **args) -> str:
    """The name of the array `kind(*sources, **args)` (a source None: absent)."""
    def text(value) -> str:
        if isinstance(value, float):
            return repr(value)
        values = value if isinstance(value, (list, tuple)) else [value]
        return "_".join(str(int(v)) for v in values)

    inner = ",".join(f"{k}={text(v)}" for k, v in sorted(args.items()))
    if isinstance(sources, str):
        return f"{kind}({inner}):{sources}"
    return f"{kind}({inner}):[" + ";".join(ABSENT if s is None else s for s in sources) + "]"


def _value(text: str) -> int | float | tuple[int, ...]:
    if "_" in text:
        return tuple(int(v) for v in text.split("_"))
    try:
        return int(text)
    except ValueError:
        return float(text)


def parse(name: str, kinds: Mapping[str, Kind] = KINDS
          ) -> tuple[str, dict, list[str | None]] | None:
    """(kind, args, sources) of a derived name of one of `kinds`; None for any other name."""
    head, sep, tail = name.partition("):")
    kind, paren, inner = head.partition("(")
    if not sep or not paren or kind not in kinds:
        return None
    args = {key: _value(value) for key, _, value in
            (item.partition("=") for item in inner.split(",") if item)}
    sources = _split_list(tail[1:-1]) if tail.startswith("[") and tail.endswith("]") else [tail]
    return kind, args, [None if s == ABSENT else s for s in sources]


def _split_list(text: str) -> list[str]:
    """The `;`-separated sources of a list, a nested name's own list kept whole."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        depth += (ch == "[") - (ch == "]")
        if ch == ";" and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return parts


def resolve(name: str, lookup: Callable[[str], np.ndarray],
            kinds: Mapping[str, Kind] = KINDS) -> np.ndarray:
    """The array `name` stands for: a parameter or constant (`lookup(name)`), or a derived
    array made from its sources, themselves resolved (a prepacked transpose of a weight)."""
    parsed = parse(name, kinds)
    if parsed is None:
        return lookup(name)
    kind, args, sources = parsed
    arrays = [None if s is None else resolve(s, lookup, kinds) for s in sources]
    return kinds[kind](*arrays, **args)


def remakeable(name: str, is_source: Callable[[str], bool],
               kinds: Mapping[str, Kind] = KINDS) -> bool:
    """Whether `name` is a source (`is_source`: a parameter, say), or derived (at any depth)
    from sources alone."""
    parsed = parse(name, kinds)
    if parsed is None:
        return is_source(name)
    return all(s is None or remakeable(s, is_source, kinds) for s in parsed[2])
