"""Dropout: the identity outside training, and in training mode `dropout_keyed`, whose mask is
drawn by a counter-based random number generator from a key the model is given at run time.

The generator is Philox-4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3",
SC 2011; JAX's and PyTorch's CUDA generator): a pure function of a 128-bit counter and a
64-bit key, so each element's draw depends on nothing but its own coordinates, and a mask is
the same on every target, in every order, on any number of threads. Element i (row-major) of
the call numbered `stream` in a model, run with key [seed, step], draws the first word of

    philox(counter = (lo32(i), stream, lo32(step), hi32(step)), key = (lo32(seed), hi32(seed)))

and is kept when that word is at least round(p * 2^32): with probability 1 - p, exactly 1 for
p = 0 and exactly 0 for p = 1. Kept elements are scaled by 1 / (1 - p), as PyTorch does
(`x * mask / (1 - p)`: a dropped inf or NaN is NaN, as there). Tensors past 2^32 elements
repeat the draws of their first 2^32.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ..philox import MASK32, PHILOX_M, PHILOX_ROUNDS, PHILOX_W, philox4x32
from ..types import NUMPY_DTYPES, TensorType
from ._common import (
    FLOATS,
    as_dtype,
    attr_error,
    attrs,
    check_dtype,
    check_shape,
    compute_dtype,
    dtype_name,
    flag,
    nn_native,
    number,
    prod,
    tensors,
    to_int,
)
from ._emit import identity, one, onnx_dtype, widened
from ._factories import unary
from .registry import OpRecord, internal, register


def drop_threshold(p: float) -> int:
    """The draws below which an element is dropped: round(p * 2^32), 0 to 2^32."""
    return min(1 << 32, max(0, round(p * 2.0 ** 32)))


def keep_mask(shape: tuple[int, ...], key: np.ndarray, stream: int, p: float) -> np.ndarray:
    """The bool mask of `dropout_keyed` (see the module's docstring) for an x of `shape`."""
    seed, step = (int(v) & ((1 << 64) - 1) for v in np.asarray(key).reshape(2))
    index = np.arange(int(np.prod(shape, dtype=np.int64)), dtype=np.uint64)
    word, *_ = philox4x32((index & np.uint64(MASK32), stream, step & MASK32, step >> 32),
                          (seed & MASK32, seed >> 32))
    return (word.astype(np.uint64) >= np.uint64(drop_threshold(p))).reshape(shape)


def scale_of(p: float, dtype) -> np.ndarray:
    """1 / (1 - p) in `dtype` (inf for p = 1, where nothing is kept)."""
    return np.asarray(1.0 / (1.0 - p) if p != 1 else np.inf, dtype)


def _check_p(a: dict) -> float:
    p = number(a["p"], "p")
    if not 0 <= p <= 1:
        raise attr_error("p", f"p must be in [0, 1], got {p}")
    return p


# dropout ------------------------------------------------------------------------------------
def _dropout_check(a: dict) -> None:
    _check_p(a)
    # in training mode the elaborator builds dropout_keyed instead (`_dropout_training`)
    if flag(a["training"], "training"):
        raise attr_error("training", "training-mode dropout needs the model's random key: "
                         "it is built by the elaborator")


def _dropout_training(ctx, operands: list, a: dict) -> list:
    """dropout(x, p, training = true): dropout_keyed on the model's key, its own stream."""
    (x,) = operands
    _check_p(a)
    return ctx.gb.results("dropout_keyed", x, ctx.key(), p=a["p"], stream=ctx.stream())


register(dataclasses.replace(
    unary("dropout", lambda x, p, training: x,
          "Zero each element with probability p and scale the rest by 1/(1-p) in training "
          "mode; the identity outside it.",
          extra=(("p", 0.5), ("training", False)), check=_dropout_check, onnx=identity,
          llvm=lambda kb, attrs, x: x),
    vjp=lambda gb, node, cts: [cts[0]],
    training=_dropout_training))


# dropout_keyed ------------------------------------------------------------------------------
KEY_TYPE = TensorType("i64", (2,))


def _keyed_infer(types, a):
    x, key = types
    check_dtype(x, FLOATS, "x")
    _check_p(a)
    stream = to_int(a["stream"], "stream")
    if not 0 <= stream <= MASK32:
        raise attr_error("stream", f"stream must be a 32-bit counter word, got {stream}")
    check_dtype(key, frozenset({"i64"}), "key")
    check_shape(key, KEY_TYPE.shape, "key", "the random key [seed, step]")
    return [x]


def _keyed_reference(env, inputs, a):
    x, key = inputs
    p = float(number(a["p"], "p"))
    wide = compute_dtype(x.dtype)
    keep = keep_mask(x.shape, key, to_int(a["stream"], "stream"), p)
    with np.errstate(invalid="ignore"):
        y = np.asarray(x, wide) * np.where(keep, scale_of(p, wide), np.asarray(0, wide))
    return [as_dtype(y, dtype_name(x))]


def _keyed_onnx(b, n):
    """Philox-4x32-10 in ONNX integer ops on uint64 words (a product of two 32-bit words
    fits), drawing the words of the reference, then x * where(keep, 1 / (1 - p), 0)."""
    x, key = n.inputs
    t = n.in_types[0]

    def word(value: int) -> str:
        return b.const(np.asarray(value, np.uint64))

    mask, thirty_two = word(MASK32), word(32)

    def lo32(v: str) -> str:
        return one(b, "BitwiseAnd", v, mask)

    def hi32(v: str) -> str:
        return one(b, "BitShift", v, thirty_two, direction="RIGHT")

    def xor(*vs: str) -> str:
        out = vs[0]
        for v in vs[1:]:
            out = one(b, "BitwiseXor", out, v)
        return out

    from onnx.helper import np_dtype_to_tensor_dtype  # onnx is loaded only when emitting

    uint64 = int(np_dtype_to_tensor_dtype(np.dtype(np.uint64)))
    # int64 -> uint64 keeps the bits (two's complement), as the reference's `& (2^64 - 1)`
    words = one(b, "Cast", key, to=uint64)
    seed, step = (one(b, "Gather", words, b.const(np.asarray(k, np.int64)), axis=0)
                  for k in (0, 1))
    index = one(b, "Cast", one(b, "Range", b.const(np.asarray(0, np.int64)),
                               b.dim(prod(t.shape)), b.const(np.asarray(1, np.int64))),
                to=uint64)
    c = [lo32(index), word(to_int(n.attrs["stream"], "stream")), lo32(step), hi32(step)]
    k0, k1 = lo32(seed), hi32(seed)
    for _ in range(PHILOX_ROUNDS):
        p0 = one(b, "Mul", c[0], word(PHILOX_M[0]))
        p1 = one(b, "Mul", c[2], word(PHILOX_M[1]))
        c = [xor(hi32(p1), c[1], k0), lo32(p1), xor(hi32(p0), c[3], k1), lo32(p0)]
        k0, k1 = lo32(one(b, "Add", k0, word(PHILOX_W[0]))), lo32(one(b, "Add", k1,
                                                                        word(PHILOX_W[1])))
    p = float(number(n.attrs["p"], "p"))
    keep = one(b, "GreaterOrEqual", one(b, "Cast", c[0], to=onnx_dtype("i64")),
               b.const(np.asarray(drop_threshold(p), np.int64)))
    dtype = NUMPY_DTYPES[t.dtype]
    factor = one(b, "Where", keep, b.const(scale_of(p, dtype)), b.const(np.asarray(0, dtype)))
    b.node("Mul", [x, one(b, "Reshape", factor, one(b, "Shape", x))], n.outputs)


def _keyed_llvm(kb, n):
    p = float(number(n.attrs["p"], "p"))
    compute = np.float64 if n.in_types[0].dtype == "f64" else np.float32
    nn_native("random").dropout_keyed(kb, n, drop_threshold(p), float(scale_of(p, compute)))


def _keyed_vjp(gb, node, cts):
    """Dropout is linear in x: its gradient is the same mask and scale applied to the
    cotangent, drawn again from the same key and stream (never a new draw)."""
    x, key = node.inputs
    return [gb.op("dropout_keyed", cts[0], key, **node.attrs), None]


register(internal(OpRecord(
    "dropout_keyed", tensors("x", "key") + attrs(("p", 0.5), ("stream", 0)),
    _keyed_infer, _keyed_reference,
    "x * mask / (1 - p), the mask drawn by Philox-4x32-10 from key [seed, step], the call's "
    "stream and each element's index (training-mode dropout).",
    onnx=widened(_keyed_onnx), llvm=_keyed_llvm,
    vjp=_keyed_vjp)))

__all__ = ["KEY_TYPE", "drop_threshold", "keep_mask", "scale_of"]
