"""Philox-4x32-10 in LLVM IR, and training-mode dropout drawn from it: the same words as the
numpy reference in ops/random.py, element by element (straight-line integer code per element,
which the loop vectorizer widens)."""

from __future__ import annotations

from llvmlite import ir

from ...philox import MASK32, PHILOX_M, PHILOX_ROUNDS, PHILOX_W
from .abi import I32, I64


def philox_first_word(b: ir.IRBuilder, counter: list[ir.Value], key: list[ir.Value]
                      ) -> ir.Value:
    """Word 0 of Philox-4x32-10 of four i32 counter words under two i32 key words."""
    c0, c1, c2, c3 = counter
    k0, k1 = key
    thirty_two = ir.Constant(I64, 32)
    for _ in range(PHILOX_ROUNDS):
        p0 = b.mul(b.zext(c0, I64), ir.Constant(I64, PHILOX_M[0]))  # 32 x 32 -> 64 bits
        p1 = b.mul(b.zext(c2, I64), ir.Constant(I64, PHILOX_M[1]))
        hi0, lo0 = b.trunc(b.lshr(p0, thirty_two), I32), b.trunc(p0, I32)
        hi1, lo1 = b.trunc(b.lshr(p1, thirty_two), I32), b.trunc(p1, I32)
        c0, c1, c2, c3 = b.xor(b.xor(hi1, c1), k0), lo1, b.xor(b.xor(hi0, c3), k1), lo0
        k0 = b.add(k0, ir.Constant(I32, PHILOX_W[0]))
        k1 = b.add(k1, ir.Constant(I32, PHILOX_W[1]))
    return c0


def _words(b: ir.IRBuilder, value: ir.Value) -> tuple[ir.Value, ir.Value]:
    """The low and high 32-bit words of an i64."""
    return b.trunc(value, I32), b.trunc(b.lshr(value, ir.Constant(I64, 32)), I32)


def dropout_keyed(kb, n, threshold: int, scale: float) -> None:
    """y[i] = x[i] * (draw(i) >= threshold ? scale : 0), draw(i) the first Philox word of
    counter (i, stream, step) under key seed (ops/random.py)."""
    b = kb.b
    dtype = n.in_types[0].dtype
    x, key, y = kb.input("x"), kb.input("key"), kb.output()
    seed = b.load(b.gep(key, [ir.Constant(I64, 0)]))
    step = b.load(b.gep(key, [ir.Constant(I64, 1)]))
    key_words = list(_words(b, seed))
    step_lo, step_hi = _words(b, step)
    stream = ir.Constant(I32, int(n.attrs["stream"]) & MASK32)
    threshold = ir.Constant(I64, threshold)
    scale = kb.const(scale, dtype)
    zero = kb.const(0.0, dtype)
    with kb.for_range(kb.numel(n.in_types[0].shape)) as i:
        word = philox_first_word(b, [b.trunc(i, I32), stream, step_lo, step_hi], key_words)
        keep = b.icmp_unsigned(">=", b.zext(word, I64), threshold)
        kb.store(y, i, kb.fmul(kb.load(x, i, dtype), b.select(keep, scale, zero)), dtype)
