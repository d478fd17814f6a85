"""sin, cos, atan, pow and logsumexp with kiln's vectorised f32 forms (compiler/codegen/llvm/
vmath.py, mathlib's log) against the same models built with the scalar libm calls they lowered
to before (session 19), on one large f32 array; --sweep prints their errors.

    python benchmarks/vmath.py [--size 4194304] [--rounds 15] [--threads 1] [--sweep]
                               [--exhaustive]

Both builds are compiled in this process (the libm forms by replacing ScalarMath's sin, cos,
atan, pow and log while it compiles; the compile caches are off, as both builds share one
graph), then timed in alternating rounds; the table gives the medians, ns an element, and
before / after (above 1: faster now). sin and cos take x, a standard normal times 3, and x
times 1e4 (where libm's sinf reduces more slowly; kiln computes both its reductions for every
element anyway); pow takes |x| and y in [-4, 4];
logsumexp reduces x's rows of 256. --sweep prints, by range of |x|, the maximum error in
f32 ulps against numpy's f64 functions over every 97th f32 bit pattern of both signs (the
numbers the docstrings state), and pow's over random pairs; --exhaustive, sin's, cos's and
atan's over every positive finite f32 (4 to 8 minutes here).
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
from erf import before_and_after, libm_forms  # sets KILN_CACHE=0 before kiln is imported

import kiln

UNARY = "model M {{ forward(x: f32[N]) -> f32[N] {{ return {}(x) }} }}"
MODELS = {op: UNARY.format(op) for op in ("sin", "cos", "atan")}
MODELS["pow"] = "model M { forward(x: f32[N], y: f32[N]) -> f32[N] { return x ** y } }"
MODELS["logsumexp"] = ("model M { forward(x: f32[R, 256]) -> f32[R] "
                       "{ return logsumexp(x, axis = 1) } }")
# the forms before session 19: one libm call per element (llvm.sin / cos / pow / log are
# sinf / cosf / powf / logf)
LIBM_FORMS = {
    "sin": lambda self, a: self.intrinsic("sin", a),
    "cos": lambda self, a: self.intrinsic("cos", a),
    "atan": lambda self, a: self.libm("atan", a),
    "pow": lambda self, a, b: self.intrinsic("pow", a, b),
    "log": lambda self, a: self.intrinsic("log", a),
}


def _ulps(got: np.ndarray, want: np.ndarray) -> np.ndarray:
    """|got - want| in ulps of f32 at want (want in f64)."""
    spacing = np.spacing(np.abs(want).astype(np.float32)).astype(np.float64)
    return np.abs(got.astype(np.float64) - want) / spacing


def sweep() -> None:
    """The maximum errors of the native sin, cos, atan and pow in f32 ulps, by range."""
    bits = np.arange(0, 0x7F800000, 97, dtype=np.uint32).view(np.float32)
    x = np.concatenate([bits, -bits])
    edges = (0, 1e-3, 1, 100, 524288, 1e10, np.inf)
    print("| function | " + " | ".join(f"[{lo:.3g}, {hi:.3g})" for lo, hi in
                                       zip(edges, edges[1:])) + " |")
    print("| --- " * len(edges) + "|")
    for op, ref in (("sin", np.sin), ("cos", np.cos), ("atan", np.arctan)):
        error = _ulps(kiln.compile(MODELS[op])(x), ref(x.astype(np.float64)))
        cells = [error[(np.abs(x) >= lo) & (np.abs(x) < hi)].max()
                 for lo, hi in zip(edges, edges[1:])]
        print(f"| {op} | " + " | ".join(f"{c:.3f}" for c in cells) + " |")
    rng = np.random.default_rng(0)
    n = 4_000_000
    base = np.abs(rng.standard_normal(n) * 10.0 ** rng.uniform(-6, 6, n)).astype(np.float32)
    power = (rng.standard_normal(n) * 10.0 ** rng.uniform(-3, 2, n)).astype(np.float32)
    with np.errstate(all="ignore"):
        want = np.power(base.astype(np.float64), power.astype(np.float64))
    got = kiln.compile(MODELS["pow"])(base, power)
    normal = np.isfinite(want) & (np.abs(want) >= np.finfo(np.float32).tiny)
    normal &= np.abs(want) <= np.finfo(np.float32).max
    print(f"\npow: {normal.sum()} pairs with a normal f32 result, max error "
          f"{_ulps(got[normal], want[normal]).max():.4f} ulp\n")


def exhaustive() -> None:
    """The maximum errors of the native sin, cos and atan over every positive finite f32 (the
    code is odd or even in x to the bit), in chunks of 2^25."""
    for op, ref in (("sin", np.sin), ("cos", np.cos), ("atan", np.arctan)):
        native, worst, at = kiln.compile(MODELS[op]), 0.0, 0.0
        for start in range(0, 0x7F800000, 1 << 25):
            x = np.arange(start, min(start + (1 << 25), 0x7F800000), dtype=np.uint32)
            x = x.view(np.float32)
            error = _ulps(native(x), ref(x.astype(np.float64)))
            if error.max() > worst:
                worst, at = float(error.max()), float(x[np.argmax(error)])
        print(f"{op}: every positive finite f32, max error {worst:.4f} ulp (at {at:.7g})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=1 << 22)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--sweep", action="store_true", help="print the error sweep too")
    parser.add_argument("--exhaustive", action="store_true",
                        help="print sin's, cos's and atan's errors over every f32 and stop")
    opts = parser.parse_args()
    if opts.exhaustive:
        exhaustive()
        return 0
    if opts.sweep:
        sweep()
    rng = np.random.default_rng(0)
    x = rng.standard_normal(opts.size).astype(np.float32) * 3
    far = x * np.float32(1e4)
    y = rng.uniform(-4, 4, opts.size).astype(np.float32)
    rows = x.reshape(-1, 256)
    with libm_forms(LIBM_FORMS):
        before = {k: kiln.compile(s, threads=opts.threads) for k, s in MODELS.items()}
    after = {k: kiln.compile(s, threads=opts.threads) for k, s in MODELS.items()}
    runs = {
        "sin": lambda m: m["sin"](x),
        "sin, x * 1e4": lambda m: m["sin"](far),
        "cos": lambda m: m["cos"](x),
        "atan": lambda m: m["atan"](x),
        "pow": lambda m: m["pow"](np.abs(x), y),
        "logsumexp, rows of 256": lambda m: m["logsumexp"](rows),
    }
    for name, run in runs.items():  # the two builds agree (to the old libm's error)
        np.testing.assert_allclose(run(after), run(before), rtol=3e-6, atol=1e-6, err_msg=name)
    before_and_after(runs, before, after, opts.rounds, opts.size)
    return 0


if __name__ == "__main__":
    sys.exit(main())
