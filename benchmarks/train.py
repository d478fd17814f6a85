"""Training throughput, side by side in one run: kiln's native train step (one call: forward
in training mode, loss, backward, SGD with momentum) against PyTorch eager on the same
architecture, the same batch and the same number of threads.

    python benchmarks/train.py [--threads 1 2] [--models mlp lenet lstm resnet] [--steps 10]

Models (the issue's list): MLP 784-512-512-10 (b=64), LeNet-5 (b=64), a 2-layer bidirectional
LSTM classifier (b=32, T=32), a small CIFAR-style ResNet (b=32, 3x32x32). For each it prints
the median step time of each runtime and samples/s, and kiln's throughput over PyTorch's
(above 1: kiln is faster). The two are timed in alternating rounds with a pause between them
(a runtime's threads spin for a while after its last call); the median round is shown. Both
start from the same weights (the PyTorch twin loads kiln's initial values), so they do the same
arithmetic; the last column is the largest relative difference of the first step's loss.
PyTorch is optional: without it only kiln's numbers are printed.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import kiln

sys.path.insert(0, str(Path(__file__).resolve().parent))
import twins  # noqa: E402  (benchmarks/twins.py, beside this script)

ROOT = Path(__file__).resolve().parents[1]
ROUNDS = 5
SETTLE = 0.2  # seconds between runtimes: spinning threads go to sleep

SMALL_RESNET = """
import std.nn
import std.cnn

# a CIFAR-style ResNet: 3x3 stem, three stages of BasicBlocks, global average pool
model SmallResNet(num_classes: int = 10) {
  conv1 = nn.Conv2d(3, 16, 3, padding = 1, bias = false)
  bn1 = nn.BatchNorm2d(16)
  layers = [cnn.BasicBlock(16, 16), cnn.BasicBlock(16, 32, stride = 2),
            cnn.BasicBlock(32, 64, stride = 2)]
  pool = nn.AdaptiveAvgPool2d(1)
  fc = nn.Linear(64, num_classes)

  forward(x: f32[B, 3, 32, 32]) -> f32[B, num_classes] {
    return x |> conv1 |> bn1 |> relu |> layers |> pool |> flatten(start = 1) |> fc
  }
}
"""


def torch_twins():
    """PyTorch modules with kiln's parameter names, one per model (built on first use)."""
    import torch
    from torch import nn

    LeNet, BasicBlock = twins.modules()["LeNet5"], twins.modules()["BasicBlock"]

    class LSTMClassifier(nn.Module):
        def __init__(self):
            super().__init__()
            self.embedding = nn.Embedding(1000, 32)
            self.lstm = nn.LSTM(32, 64, 2, batch_first=True, dropout=0.2, bidirectional=True)
            self.fc = nn.Linear(128, 4)
            self.drop = nn.Dropout(0.2)

        def forward(self, tokens):
            _, (h, _) = self.lstm(self.embedding(tokens))
            last = torch.cat([h[-2], h[-1]], dim=-1)
            return torch.log_softmax(self.fc(self.drop(last)), dim=-1)

    class SmallResNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 16, 3, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(16)
            self.layers = nn.Sequential(BasicBlock(16, 16), BasicBlock(16, 32, 2),
                                        BasicBlock(32, 64, 2))
            self.fc = nn.Linear(64, 10)

        def forward(self, x):
            x = self.layers(torch.relu(self.bn1(self.conv1(x))))
            return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))

    mlp = nn.Sequential(nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(),
                        nn.Linear(512, 10))
    return {"mlp": lambda: mlp, "lenet": LeNet, "lstm": LSTMClassifier,
            "resnet": SmallResNet}


# name: (kiln file or source, loss, batch, make inputs, torch loss)
def configs(tmp: Path) -> dict:
    resnet = tmp / "small_resnet.kiln"
    resnet.write_text(SMALL_RESNET)

    def images(shape):
        return lambda rng, b: rng.standard_normal((b, *shape)).astype(np.float32)

    return {
        "mlp": (ROOT / "examples" / "mlp.kiln", "cross_entropy", 64, images((784,)), 10),
        "lenet": (ROOT / "examples" / "lenet.kiln", "cross_entropy", 64, images((1, 28, 28)),
                  10),
        "lstm": (ROOT / "examples" / "lstm_classifier.kiln", "nll_loss", 32,
                 lambda rng, b: rng.integers(0, 1000, (b, 32)).astype(np.int64), 4),
        "resnet": (resnet, "cross_entropy", 32, images((3, 32, 32)), 10),
    }


def step_seconds(step, batches, repeat: int) -> float:
    """The median seconds of one step over `repeat` steps (after one untimed)."""
    step(*batches[0])
    times = []
    for i in range(repeat):
        start = time.perf_counter()
        step(*batches[(i + 1) % len(batches)])
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def torch_step(module, loss_name: str, torch):
    optimizer = torch.optim.SGD(module.parameters(), lr=0.01, momentum=0.9)
    loss_fn = torch.nn.NLLLoss() if loss_name == "nll_loss" else torch.nn.CrossEntropyLoss()
    module.train()

    def step(x, y):
        optimizer.zero_grad()
        loss = loss_fn(module(torch.from_numpy(x)), torch.from_numpy(y))
        loss.backward()
        optimizer.step()
        return loss.item()
    return step


def measure(name: str, cfg, threads: int, steps: int, twins) -> dict:
    path, loss, batch, make, classes = cfg
    rng = np.random.default_rng(0)
    batches = [(make(rng, batch), rng.integers(0, classes, batch).astype(np.int64))
               for _ in range(4)]
    trainer = kiln.Trainer(path, loss=loss, optimizer=kiln.optim.SGD(lr=0.01, momentum=0.9),
                           seed=0, threads=threads)
    trainer.prepare(batches[0][1])
    out = {"kiln": [], "torch": [], "loss_diff": None}
    step_torch = None
    if twins is not None:
        import torch

        torch.set_num_threads(threads)
        module = twins[name]()
        state = {k: torch.from_numpy(np.array(v)) for k, v in trainer.params.items()}
        module.load_state_dict(state)
        if name != "lstm":  # dropout masks differ between the two: no loss to compare
            x, y = batches[0]
            with torch.no_grad():
                module.train()
                theirs = float(torch.nn.CrossEntropyLoss()(module(torch.from_numpy(x)),
                                                           torch.from_numpy(y)))
            ours = trainer.step(x, y)
            out["loss_diff"] = abs(ours - theirs) / max(abs(theirs), 1e-12)
        step_torch = torch_step(module, loss, torch)
    for _ in range(ROUNDS):
        time.sleep(SETTLE)
        out["kiln"].append(step_seconds(trainer.step, batches, steps))
        if step_torch is not None:
            time.sleep(SETTLE)
            out["torch"].append(step_seconds(step_torch, batches, steps))
        print(".", end="", file=sys.stderr, flush=True)
    out["batch"] = batch
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--models", nargs="+", default=["mlp", "lenet", "lstm", "resnet"])
    parser.add_argument("--steps", type=int, default=10, help="timed steps per round")
    opts = parser.parse_args()
    try:
        twins = torch_twins()
    except ImportError:
        twins = None
        print("PyTorch is not installed: kiln's numbers only", file=sys.stderr)
    header = (f"{'model':<8}{'batch':>6}{'thr':>4}{'kiln ms':>10}{'torch ms':>10}"
              f"{'kiln/s':>9}{'torch/s':>9}{'kiln/torch':>11}{'loss rel diff':>15}")
    print(header)
    print("-" * len(header))
    with tempfile.TemporaryDirectory() as tmp:
        table = configs(Path(tmp))
        for name in opts.models:
            for threads in opts.threads:
                print(f"{name} threads={threads}: compiling and timing", end="",
                      file=sys.stderr, flush=True)
                r = measure(name, table[name], threads, opts.steps, twins)
                print(file=sys.stderr)
                k = statistics.median(r["kiln"])
                t = statistics.median(r["torch"]) if r["torch"] else None
                b = r["batch"]
                diff = "" if r["loss_diff"] is None else f"{r['loss_diff']:.1e}"
                print(f"{name:<8}{b:>6}{threads:>4}{k * 1e3:>10.2f}"
                      f"{t * 1e3 if t else float('nan'):>10.2f}{b / k:>9.0f}"
                      f"{b / t if t else float('nan'):>9.0f}"
                      f"{t / k if t else float('nan'):>11.2f}{diff:>15}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
