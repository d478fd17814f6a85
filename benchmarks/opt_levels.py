"""The optimizer's effect end to end: each model compiled natively at -O0 and -O1, side by side.

    python benchmarks/opt_levels.py [--models resnet18 transformer lstm] [--batch 1] [--threads 2]
                                    [--repeat 10] [--bind H=224 W=224 T=32]

For ResNet-18, the Transformer example and the LSTM example: the native median latency at each
level and O0/O1 (above 1: the passes made it faster), the kernels the native backend runs
(count_kernels of the lowered graph), the nodes of the exported ONNX at each level (Scan and
other subgraph bodies included), and the largest |O0 - O1| over the outputs on the same random
inputs (the weights are the same seed's). The levels are timed in alternating rounds and the
median round is shown. Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
from models import inputs_for, median_ms  # benchmarks/models.py: random inputs and medians
from passes import MODELS as PASSES_MODELS
from passes import bind_sizes, table

import kiln
from kiln.compiler.passes.edit import count_kernels

ROOT = Path(__file__).resolve().parents[1]
MODELS = {  # name -> (source, model name)
    **PASSES_MODELS,
    "lstm": ((ROOT / "examples" / "lstm_classifier.kiln").read_text(), None),
}
SIZES = {"H": 224, "W": 224, "T": 32}  # symbolic sizes other than the batch B
ROUNDS = 3  # timing rounds, -O0 and -O1 alternating; the table shows the median round


def onnx_nodes(graph: onnx.GraphProto) -> int:
    """Nodes of an ONNX graph, counting those in subgraph attributes (Scan, Loop, If bodies)."""
    total = 0
    for node in graph.node:
        total += 1
        for attr in node.attribute:
            subgraphs = [attr.g, *attr.graphs] if attr.HasField("g") else attr.graphs
            total += sum(onnx_nodes(g) for g in subgraphs)
    return total


def exported_onnx_nodes(model) -> int:
    """ONNX nodes of `model` exported (at its opt_level) to a temporary file."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        model.export_onnx(path)
        return onnx_nodes(onnx.load(path).graph)


def outputs(model, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    result = model(**feeds)
    return list(result) if isinstance(result, tuple) else [result]


def row(name: str, sizes: dict[str, int], batch: int, threads: int, repeat: int) -> list[str]:
    """[model, sizes, ms -O0, ms -O1, O0/O1, kernels x2, onnx nodes x2, max |O0 - O1|]."""
    source, model_name = MODELS[name]
    program = kiln.load(source)
    compiled, kernels, nodes = {}, {}, {}
    for level in (0, 1):
        progress = f"{name} -O{level}"
        print(f"{progress}: compiling...", file=sys.stderr, flush=True)
        m = compiled[level] = kiln.compile(program, model=model_name, target="native",
                                           opt_level=level, threads=threads)
        kernels[level] = count_kernels(m.lowered().graph)
        print(f"{progress}: exporting ONNX...", file=sys.stderr, flush=True)
        nodes[level] = exported_onnx_nodes(m)
    feeds = inputs_for(compiled[0], batch, np.random.default_rng(0), sizes)
    samples: dict[int, list[float]] = {0: [], 1: []}
    for round_ in range(ROUNDS):  # alternate the levels, so that drift hits both alike
        print(f"{name}: timing round {round_ + 1}/{ROUNDS} ({repeat} calls a level)...",
              file=sys.stderr, flush=True)
        for level in (0, 1):
            samples[level].append(median_ms(repeat, compiled[level], **feeds))
    ms = {level: statistics.median(times) for level, times in samples.items()}
    diff = max(float(np.max(np.abs(a.astype(np.float64) - b)))
               for a, b in zip(outputs(compiled[0], feeds), outputs(compiled[1], feeds)))
    used = {"B": batch, **sizes}
    shape = " ".join(f"{k}={v}" for k, v in used.items() if k in compiled[0].model.symbols)
    return [name, shape, f"{ms[0]:.3f}", f"{ms[1]:.3f}", f"{ms[0] / ms[1]:.2f}",
            str(kernels[0]), str(kernels[1]), str(nodes[0]), str(nodes[1]), f"{diff:.2e}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                        help="native threads (default: every core this process may use)")
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--bind", nargs="*", default=[], metavar="NAME=SIZE",
                        help="symbolic sizes (default " +
                        " ".join(f"{k}={v}" for k, v in SIZES.items()) + ")")
    args = parser.parse_args()
    sizes = bind_sizes(SIZES, args.bind)
    header = ["model", "sizes", "ms -O0", "ms -O1", "O0/O1", "kernels -O0", "kernels -O1",
              "onnx -O0", "onnx -O1", "max |O0-O1|"]
    body = [row(name, sizes, args.batch, args.threads, args.repeat) for name in args.models]
    print(f"native, threads={args.threads}, median of {args.repeat} calls")
    print(table(header, body))


if __name__ == "__main__":
    main()
