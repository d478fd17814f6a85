"""Train steps whose convolutions' weight gradients take session 17's forms (a depthwise
convolution's direct kernel, depthwise_weight_grad; a strided one's GEMMs over phases at
symbolic image sizes) against the same steps with those forms turned off (the general form
they took before), and PyTorch eager on the same architecture when it is installed.

    python benchmarks/weight_grads.py [--models depthwise convnext mobilenet strided]
                                      [--threads 1] [--steps 3] [--rounds 5]

Both kiln builds are compiled in this process (the forms turned off for the first by
replacing their functions in compiler/ops/_conv_grad.py with ones that decline, while it
compiles), and the runtimes are timed in alternating rounds of `steps` train steps (SGD with
momentum); the medians of the rounds, ms a step, and before / after (above 1: faster now)
and PyTorch / after (above 1: kiln is faster).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import kiln
from kiln.compiler.ops import _conv_grad

ROOT = Path(__file__).resolve().parents[1]
ZOO = ROOT / "tests" / "zoo"
DEPTHWISE = """import std.nn
model Depthwise {
  dw = nn.Conv2d(96, 96, 3, padding = 1, groups = 96)
  forward(x: f32[B, 96, H, W]) -> f32[B, 96, H, W] { return x |> dw }
}
"""
STRIDED = """import std.nn
model Strided {
  c1 = nn.Conv2d(32, 64, 3, stride = 2, padding = 1)
  c2 = nn.Conv2d(64, 128, 3, stride = 2, padding = 1)
  forward(x: f32[B, 32, H, W]) -> f32[B, 128, _, _] { return x |> c1 |> relu |> c2 }
}
"""
# session 17's forms, which the "before" build turns off
FORMS = ("_depthwise_weight_grad", "_sized_phase_weight_grad")


def _torch_module(name: str):
    """PyTorch's twin of a configuration (tests/test_stdlib_zoo_models.py's for the zoo)."""
    from torch import nn

    if name == "depthwise":
        return nn.Conv2d(96, 96, 3, padding=1, groups=96)
    if name == "strided":
        return nn.Sequential(nn.Conv2d(32, 64, 3, 2, 1), nn.ReLU(), nn.Conv2d(64, 128, 3, 2, 1))
    sys.path.insert(0, str(ROOT / "tests"))
    from test_stdlib_zoo_models import twins

    return twins()["mobilenetv3_small"]() if name == "mobilenet" else \
        twins()["convnext_block"](96)


# name: (source or file, compile-time args, loss, x's shape, y's shape (None: 10 classes))
CONFIGS = {
    "depthwise": (DEPTHWISE, {}, "mse_loss", (8, 96, 56, 56), (8, 96, 56, 56)),
    "convnext": (ZOO / "convnext_block.kiln", {"dim": 96}, "mse_loss", (8, 96, 56, 56),
                 (8, 96, 56, 56)),
    "mobilenet": (ZOO / "mobilenetv3_small.kiln", {}, "cross_entropy", (16, 3, 112, 112), None),
    "strided": (STRIDED, {}, "mse_loss", (8, 32, 64, 64), (8, 128, 16, 16)),
}


@contextlib.contextmanager
def forms_off(names):
    """The named weight-gradient forms of _conv_grad.py decline while inside."""
    saved = {n: getattr(_conv_grad, n) for n in names if hasattr(_conv_grad, n)}
    try:
        for n in saved:
            setattr(_conv_grad, n, lambda *_a, **_k: None)
        yield
    finally:
        for n, fn in saved.items():
            setattr(_conv_grad, n, fn)


def _trainer(path: Path, args: dict, loss: str, threads: int, batch):
    trainer = kiln.Trainer(path, loss=loss, args=args, threads=threads, seed=0,
                           optimizer=kiln.optim.SGD(lr=0.01, momentum=0.9))
    trainer.prepare(batch[1])
    trainer.step(*batch)
    return trainer


def _torch_step(name: str, loss: str, threads: int):
    import torch

    torch.set_num_threads(threads)
    module = _torch_module(name).train()
    optimizer = torch.optim.SGD(module.parameters(), lr=0.01, momentum=0.9)
    loss_fn = torch.nn.MSELoss() if loss == "mse_loss" else torch.nn.CrossEntropyLoss()

    def step(x, y):
        optimizer.zero_grad()
        value = loss_fn(module(torch.from_numpy(x)), torch.from_numpy(y))
        value.backward()
        optimizer.step()
        return value.item()

    return step


def measure(name: str, threads: int, steps: int, rounds: int, tmp: Path) -> dict:
    source, args, loss, x_shape, y_shape = CONFIGS[name]
    path = source if isinstance(source, Path) else tmp / f"{name}.kiln"
    if not isinstance(source, Path):
        path.write_text(source)
    rng = np.random.default_rng(0)
    x = rng.standard_normal(x_shape).astype(np.float32)
    y = (rng.standard_normal(y_shape).astype(np.float32) if y_shape is not None
         else rng.integers(0, 10, x_shape[0]).astype(np.int64))
    with forms_off(FORMS):
        before = _trainer(path, args, loss, threads, (x, y))
    after = _trainer(path, args, loss, threads, (x, y))
    runs = {"before": lambda: before.step(x, y), "after": lambda: after.step(x, y)}
    try:
        runs["torch"] = (lambda step: lambda: step(x, y))(_torch_step(name, loss, threads))
        runs["torch"]()
    except ImportError:
        pass
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(rounds):
        for key, run in runs.items():
            start = time.perf_counter()
            for _ in range(steps):
                run()
            times[key].append((time.perf_counter() - start) / steps * 1e3)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3, help="train steps a round")
    parser.add_argument("--rounds", type=int, default=5)
    opts = parser.parse_args()
    print("| model | batch | before ms | after ms | PyTorch ms | before/after | PyTorch/after |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory() as tmp:
        for name in opts.models:
            r = measure(name, opts.threads, opts.steps, opts.rounds, Path(tmp))
            torch_ms = r.get("torch")
            shape = "x".join(map(str, CONFIGS[name][3]))
            print(f"| {name} | {shape} | {r['before']:.1f} | {r['after']:.1f} | "
                  + (f"{torch_ms:.1f}" if torch_ms else "-")
                  + f" | {r['before'] / r['after']:.2f} | "
                  + (f"{torch_ms / r['after']:.2f}" if torch_ms else "-") + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
