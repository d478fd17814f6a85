"""The kernels around the GEMM, each alone: the max pool of ResNet-18's stem, the softmax and
layer norm of the Transformer encoder's layers (benchmarks/models.py --pytorch's, d = 256,
4 heads, L = 128) and its copies: the split of the fused q, k, v projection, the heads'
split, the keys' transpose and the heads' merge; kiln native beside onnxruntime on kiln's
export of the same one-op model.

    python benchmarks/kernels.py [--kernels max_pool softmax] [--repeat 200] [--threads 1]

Prints per kernel: the native kernel's median time (`model.profile`: the kernel alone, no
call overhead), the median of a whole native call and of a whole onnxruntime call (both
from Python, alternating rounds as models.py times them), and the bytes the kernel reads
and writes over its time. To compare two builds of kiln, run this script with each in turn
(e.g. `/work/venv-main/bin/python benchmarks/kernels.py` beside this checkout's).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

import kiln

sys.path.insert(0, str(Path(__file__).resolve().parent))
from models import ROUNDS, median_ms, onnx_session, settled  # noqa: E402

# name -> (kiln source, batch); every input f32, drawn from N(0, 1)
KERNELS = {
    "max_pool": ("model Stem { forward(x: f32[B, 64, 112, 112]) { "
                 "return max_pool(x, kernel_size = 3, stride = 2, padding = 1) } }", 1),
    "softmax": ("model Scores { forward(x: f32[B, 4, 128, 128]) { "
                "return softmax(x, axis = -1) } }", 1),
    "log_softmax": ("model Scores { forward(x: f32[B, 4, 128, 128]) { "
                    "return log_softmax(x, axis = -1) } }", 1),
    "layer_norm": ("model Norm { forward(x: f32[B, 128, 256], w: f32[256], b: f32[256]) { "
                   "return layer_norm(x, [256], w, b) } }", 1),
    "split_qkv": ("model QKV { forward(x: f32[B, 128, 768]) { "
                  "q, k, v = split(x, 3, axis = -1)\n return q, k, v } }", 1),
    "split_heads": ("model Split { forward(x: f32[B, 128, 256]) { "
                    "return permute(reshape(x, [B, 128, 4, 64]), [0, 2, 1, 3]) } }", 1),
    "keys_t": ("model Keys { forward(x: f32[B, 128, 256]) { "
               "return permute(reshape(x, [B, 128, 4, 64]), [0, 2, 3, 1]) } }", 1),
    "merge_heads": ("model Merge { forward(x: f32[B, 4, 128, 64]) { "
                    "return reshape(permute(x, [0, 2, 1, 3]), [B, 128, 256]) } }", 1),
}


def measure(name: str, threads: int, repeat: int) -> dict:
    source, batch = KERNELS[name]
    native = kiln.compile(source, target="native", threads=threads)
    rng = np.random.default_rng(0)
    feeds = {}
    for port in native.inputs:
        shape = tuple(d.evaluate({"B": batch}) for d in port.type.shape)
        feeds[port.name] = rng.standard_normal(shape).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        session = onnx_session(kiln.compile(source, target="reference"), threads,
                               Path(tmp) / f"{name}.onnx")
    kernel = []
    rounds: dict[str, list[float]] = {"native": [], "ort": []}
    for _ in range(ROUNDS):
        profile = native.profile(**feeds, repeat=repeat)
        kernel.append(sum(k.seconds for k in profile.kernels if k.depth == 0) * 1e6)
        rounds["native"].append(settled(median_ms, repeat, native, **feeds))
        rounds["ort"].append(settled(median_ms, repeat, session.run, None, feeds))
    out = native(**feeds)
    moved = sum(a.nbytes for a in [*feeds.values(), *(out if isinstance(out, tuple) else
                                                      (out,))])
    us = statistics.median(kernel)
    return {"kernel": us, "native": statistics.median(rounds["native"]) * 1e3,
            "ort": statistics.median(rounds["ort"]) * 1e3, "gbs": moved / us / 1e3,
            "kernels": ", ".join(k.kernel for k in profile.kernels)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kernels", nargs="*", default=list(KERNELS), choices=list(KERNELS))
    parser.add_argument("--repeat", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1)
    opts = parser.parse_args()
    print(f"{'kernel':<14}{'kernel us':>11}{'native us':>11}{'ort us':>10}{'GB/s':>7}  "
          "kiln kernels")
    for name in opts.kernels:
        got = measure(name, opts.threads, opts.repeat)
        print(f"{name:<14}{got['kernel']:>11.1f}{got['native']:>11.1f}{got['ort']:>10.1f}"
              f"{got['gbs']:>7.1f}  {got['kernels']}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
