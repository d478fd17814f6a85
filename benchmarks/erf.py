"""The erf op and GELU's gradient with kiln's vectorised f32 erf (mathlib.ScalarMath.erf)
against the same models built with the scalar libm call erff they lowered to before
(session 18), on one large f32 array; likewise log, elu (expm1) and softplus (log1p).

    python benchmarks/erf.py [--size 4194304] [--rounds 15] [--threads 1] [--sweep]
                             [--convnext] [--steps 3] [--fit]

Both builds are compiled in this process (the libm forms by replacing ScalarMath's erf, log,
log1p and expm1 while it compiles; the compile caches are off, as both builds share one
graph), then timed in alternating rounds; the table gives the medians, ns an element, and
before / after (above 1: faster now). "gelu backward" is a vjp of gelu, whose gradient is erf
and exp (forward and backward in one call). An error sweep (--sweep) prints the new erf's
maximum relative and absolute error against math.erf in f64 over a dense grid, by range of
|x|. --convnext times the ConvNeXt stage's train step (benchmarks/weight_grads.py's
configuration: dim 96, batch 8x96x56x56, SGD with momentum) the same way, `steps` steps a
round, and PyTorch eager's. --fit prints the fits mathlib's erf was chosen from (degree by
degree: the fit's own error, and the error with its coefficients rounded to f32 and evaluated
in f32, without FMA) and their coefficients.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import statistics
import sys
import time

import numpy as np
from weight_grads import CONFIGS, _torch_step, _trainer

os.environ["KILN_CACHE"] = "0"  # the two builds share one graph, hence one cache key

import kiln  # noqa: E402
from kiln.compiler.codegen.llvm.mathlib import ScalarMath  # noqa: E402

MODELS = {op: f"model M {{ forward(x: f32[N]) -> f32[N] {{ return {op}(x) }} }}"
          for op in ("erf", "gelu", "log", "elu", "softplus")}
# the forms before session 18: one libm call (or llvm.log, which is logf) per element
LIBM_FORMS = {
    "erf": lambda self, a: self.libm("erf", a),
    "log": lambda self, a: self.intrinsic("log", a),
    "log1p": lambda self, a: self.libm("log1p", a),
    "expm1": lambda self, a: self.libm("expm1", a),
}


@contextlib.contextmanager
def libm_forms(forms: dict | None = None):
    """ScalarMath's methods named in `forms` (LIBM_FORMS: erf, log, log1p and expm1) call
    libm per element while inside."""
    forms = LIBM_FORMS if forms is None else forms
    saved = {name: getattr(ScalarMath, name) for name in forms}
    try:
        for name, form in forms.items():
            setattr(ScalarMath, name, form)
        yield
    finally:
        for name, method in saved.items():
            setattr(ScalarMath, name, method)


def _minimax(x: np.ndarray, want: np.ndarray, basis: np.ndarray, scale: np.ndarray,
             rounds: int = 80):
    """Coefficients c minimising max |scale (basis c - want)|: Lawson's iteration (a
    least-squares fit reweighted by its own error) — near enough minimax to choose degrees."""
    weight = np.ones_like(x)
    for _ in range(rounds):
        root = np.sqrt(weight) * scale
        c, *_ = np.linalg.lstsq(basis * root[:, None], want * root, rcond=None)
        error = np.abs((basis @ c - want) * scale)
        weight = weight * error / np.sum(weight * error)
    return c, error.max()


def _horner_f32(c: np.ndarray, x: np.ndarray) -> np.ndarray:
    value = np.float32(c[-1])
    for coefficient in c[-2::-1]:
        value = (value * x + coefficient).astype(np.float32)
    return value


def fits() -> None:
    """erf = x + x R(x^2) on [0, 1] (relative error) and erf = 1 - e^L(x - 1) on
    [1, 3.925] (absolute error), degree by degree."""
    print("| fit | degree | fit's error | in f32 | coefficients (f32, constant term first) |")
    print("| --- | --- | --- | --- | --- |")
    x = np.linspace(1e-6, 1, 4000)
    erf = np.array([math.erf(v) for v in x])
    x32 = np.linspace(0, 1, 200_001).astype(np.float32)[1:]
    erf32 = np.array([math.erf(v) for v in x32.astype(np.float64)])
    for degree in (5, 6, 7):
        c, error = _minimax(x, erf / x, np.vander(x * x, degree + 1, increasing=True),
                            x / erf, rounds=60)
        c[0] -= 1  # R = erf(x)/x - 1
        c32 = c.astype(np.float32)
        got = (x32 + x32 * _horner_f32(c32, x32 * x32)).astype(np.float64)
        print(f"| x R(x^2), relative | {degree} | {error:.2e} | "
              f"{np.max(np.abs(got - erf32) / erf32):.2e} | {list(map(float, c32))} |")
    x = np.linspace(1, 3.925, 6000)
    x32 = np.linspace(1, 3.925, 300_001).astype(np.float32)
    erf32 = np.array([math.erf(v) for v in x32.astype(np.float64)])
    for degree in (7, 8):
        c, error = _minimax(x, np.log([math.erfc(v) for v in x]),
                            np.vander(x - 1, degree + 1, increasing=True), np.ones_like(x))
        c32 = c.astype(np.float32)
        tail = np.exp(_horner_f32(c32, x32 - np.float32(1)).astype(np.float64))
        got = (np.float32(1) - tail.astype(np.float32)).astype(np.float64)
        print(f"| 1 - e^L(x - 1), absolute | {degree} | {error:.2e} | "
              f"{np.max(np.abs(got - erf32)):.2e} | {list(map(float, c32))} |")


def sweep() -> None:
    """The maximum errors of the native f32 erf against math.erf, by range of |x|."""
    native = kiln.compile(MODELS["erf"])
    span = np.geomspace(1e-45, 10, 400_001)
    grid = np.concatenate([np.linspace(-10, 10, 2_000_001), span, -span]).astype(np.float32)
    got = native(grid).astype(np.float64)
    want = np.array([math.erf(v) for v in grid.astype(np.float64)])
    error = np.abs(got - want)
    relative = error / np.maximum(np.abs(want), 1e-300)
    tiny = float(np.finfo(np.float32).tiny)
    print("| abs(x) in | points | max relative error | max absolute error |")
    print("| --- | --- | --- | --- |")
    for low, high in ((0, tiny), (tiny, 1e-3), (1e-3, 0.5), (0.5, 1), (1, 2), (2, 4), (4, 11)):
        pick = (np.abs(grid) >= low) & (np.abs(grid) < high)
        print(f"| [{low:.3g}, {high:.3g}) | {pick.sum()} | {relative[pick].max():.2e} | "
              f"{error[pick].max():.2e} |")


def _medians(runs: dict, rounds: int, count: int) -> dict[str, float]:
    """Each run's median time over `rounds` alternating rounds, divided by `count`."""
    for run in runs.values():
        run()
    times: dict[str, list[float]] = {key: [] for key in runs}
    for _ in range(rounds):
        for key, run in runs.items():
            start = time.perf_counter()
            run()
            times[key].append((time.perf_counter() - start) / count)
    return {key: statistics.median(t) for key, t in times.items()}


def before_and_after(runs: dict, before, after, rounds: int, size: int) -> None:
    """A table of each run's medians, ns an element, on the `before` and `after` builds."""
    print(f"| op ({size} f32) | before ns/elem | after ns/elem | before/after |")
    print("| --- | --- | --- | --- |")
    for name, run in runs.items():
        ns = _medians({"before": lambda r=run: r(before), "after": lambda r=run: r(after)},
                      rounds, size)
        b, a = ns["before"] * 1e9, ns["after"] * 1e9
        print(f"| {name} | {b:.2f} | {a:.2f} | {b / a:.2f} |", flush=True)


def convnext(threads: int, steps: int, rounds: int) -> None:
    """The ConvNeXt stage's train step with libm's erff and with kiln's erf, and PyTorch's."""
    path, args, loss, x_shape, y_shape = CONFIGS["convnext"]
    rng = np.random.default_rng(0)
    x = rng.standard_normal(x_shape).astype(np.float32)
    y = rng.standard_normal(y_shape).astype(np.float32)
    with libm_forms():
        before = _trainer(path, args, loss, threads, (x, y))
    after = _trainer(path, args, loss, threads, (x, y))

    def repeated(step):
        return lambda: [step(x, y) for _ in range(steps)]

    runs = {"before": repeated(before.step), "after": repeated(after.step)}
    with contextlib.suppress(ImportError):
        runs["torch"] = repeated(_torch_step("convnext", loss, threads))
    ms = {k: v * 1e3 for k, v in _medians(runs, rounds, steps).items()}
    torch_ms = ms.get("torch")
    print("| ConvNeXt train step | before ms | after ms | PyTorch ms | before/after "
          "| PyTorch/after |")
    print("| --- | --- | --- | --- | --- | --- |")
    print(f"| {'x'.join(map(str, x_shape))}, {threads} thread(s) | {ms['before']:.1f} | "
          f"{ms['after']:.1f} | " + (f"{torch_ms:.1f}" if torch_ms else "-")
          + f" | {ms['before'] / ms['after']:.2f} | "
          + (f"{torch_ms / ms['after']:.2f}" if torch_ms else "-") + " |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=1 << 22)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--sweep", action="store_true", help="print the error sweep too")
    parser.add_argument("--convnext", action="store_true", help="time the train step too")
    parser.add_argument("--steps", type=int, default=3, help="train steps a round")
    parser.add_argument("--fit", action="store_true", help="print the fits and stop")
    opts = parser.parse_args()
    if opts.fit:
        fits()
        return 0
    if opts.sweep:
        sweep()
    x = np.random.default_rng(0).standard_normal(opts.size).astype(np.float32) * 2
    ct = np.ones_like(x)
    with libm_forms():  # a vjp's gradient graph is compiled on its first call
        before = {k: kiln.compile(s, threads=opts.threads) for k, s in MODELS.items()}
        before["gelu"].vjp(x, cotangents=[ct])
    after = {k: kiln.compile(s, threads=opts.threads) for k, s in MODELS.items()}
    np.testing.assert_allclose(after["erf"](x), before["erf"](x), rtol=0, atol=2e-7)
    positive = np.abs(x)
    runs = {
        "erf": lambda m: m["erf"](x),
        "gelu forward": lambda m: m["gelu"](x),
        "gelu backward": lambda m: m["gelu"].vjp(x, cotangents=[ct]),
        "log": lambda m: m["log"](positive),
        "elu": lambda m: m["elu"](x),
        "softplus": lambda m: m["softplus"](x),
    }
    before_and_after(runs, before, after, opts.rounds, opts.size)
    if opts.convnext:
        convnext(opts.threads, opts.steps, opts.rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
