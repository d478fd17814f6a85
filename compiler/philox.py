"""Philox-4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC 2011),
the counter-based generator training-mode dropout draws from: its constants and a numpy
implementation, shared by the op's reference (ops/random.py) and its native kernel
(codegen/llvm/random.py)."""

from __future__ import annotations

import numpy as np

# Philox-4x32's multipliers and Weyl key increments (Random123's philox.h)
PHILOX_M = (0xD2511F53, 0xCD9E8D57)
PHILOX_W = (0x9E3779B9, 0xBB67AE85)
PHILOX_ROUNDS = 10
MASK32 = 0xFFFFFFFF


def philox4x32(counter: tuple, key: tuple) -> tuple[np.ndarray, ...]:
    """Philox-4x32-10 of counters (four arrays of uint32 words, broadcasting) under key (two
    words): the four output words, uint32 arrays."""
    c = [np.asarray(w, np.uint64) & MASK32 for w in counter]
    k0, k1 = (np.uint64(int(w) & MASK32) for w in key)
    for _ in range(PHILOX_ROUNDS):
        p0 = c[0] * np.uint64(PHILOX_M[0])  # a 32 x 32 -> 64-bit product: hi and lo words
        p1 = c[2] * np.uint64(PHILOX_M[1])
        c = [(p1 >> np.uint64(32)) ^ c[1] ^ k0, p1 & np.uint64(MASK32),
             (p0 >> np.uint64(32)) ^ c[3] ^ k1, p0 & np.uint64(MASK32)]
        k0 = (k0 + np.uint64(PHILOX_W[0])) & np.uint64(MASK32)
        k1 = (k1 + np.uint64(PHILOX_W[1])) & np.uint64(MASK32)
    return tuple(w.astype(np.uint32) for w in c)
