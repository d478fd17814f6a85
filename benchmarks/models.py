"""Every example model, side by side in one run: kiln native vs onnxruntime (CPU, all graph
optimisations) on kiln's own exported ONNX vs the numpy reference.

    python benchmarks/models.py [--batches 1 32] [--threads 1 2] [--repeat 20] [--models mlp lenet]
    python benchmarks/models.py --pytorch [--batches 1 32] [--threads 1 2] [--models lstm gru]
    python benchmarks/models.py --precision bf16 [--batches 1 32] [--threads 1 2] [--models mlp]

`--pytorch` times, instead, kiln native and onnxruntime on kiln's export beside onnxruntime on
PyTorch's (torch.onnx.export) of the same model with the same weights (issue 16's baseline):
the eight models of issue 16's table (MLP, LSTM, GRU, Transformer encoder, LeNet-5, ResNet-18
at 224x224, a two-layer GCN on a graph of Cora's size, the DCGAN generator), each written
once in kiln and once in PyTorch under the same parameter names (TWIN_SOURCES, twin_module),
so that PyTorch's state_dict loads into kiln strictly. As in issue 16's table, ResNet-18 runs
at batch 8 at most (--batches 1 32 gives 1 and 8) and the GCN takes one graph (batch 1). Its
`imported/torch` column is kiln native on PyTorch's export itself, imported from ONNX (its
sizes other than the batch fixed to the inputs'), against onnxruntime on the same file.
`max |diff|` is the largest difference from PyTorch's eager outputs of kiln native, kiln's
export in onnxruntime and the import; a row whose PyTorch export in onnxruntime differs from
PyTorch eager gets a line saying so (the GCN: TorchScript's exporter writes index_add as a
ScatterElements without reduction, so a node's repeated edges overwrite one another where
PyTorch adds them; the import runs that graph, whose order among duplicates ONNX leaves
undefined, and its difference is the export's).

`--precision bf16` times, instead, kiln native with precision="bf16" beside the f32 code of
the same model (alternating rounds, as below), and gives the bf16 outputs' error against f32:
the largest, over the outputs, of the relative L2 error ||y_bf16 - y_f32|| / ||y_f32||.

Prints the median latency of each and the ratios native/onnxruntime and reference/native, with
kiln (threads=N) and onnxruntime (intra_op_num_threads=N) at each thread count. Each
configuration (model, batch, threads) runs in a fresh process, and in it native and
onnxruntime are timed in alternating rounds (the median round is shown; a round warms up, then
times at least --repeat calls and ROUND seconds of calls) with a pause between runtimes: a
runtime's threads spin for a while after its last call (onnxruntime's, OpenBLAS's under numpy,
kiln's own) and would take a core from the next one measured.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import kiln
from kiln import KilnError
from kiln.compiler.codegen.llvm.peak import fma_peak_flops
from kiln.compiler.dims import Dim

sys.path.insert(0, str(Path(__file__).resolve().parent))
import twins  # noqa: E402  (benchmarks/twins.py, beside this script)

ROOT = Path(__file__).resolve().parents[1]
ROUNDS = 5  # alternating rounds of native and onnxruntime timings (the median one is shown)
SETTLE = 0.2  # seconds between runtimes: spinning threads go to sleep
WARM_UP = 0.05  # seconds of untimed calls before each round
ROUND = 0.3  # seconds of timed calls at least, per round
SIZES = {"T": 16, "N": 32, "E": 64, "H": 64, "W": 64}  # other symbolic sizes than the batch


def inputs_for(model, batch: int, rng, sizes: dict[str, int] | None = None
               ) -> dict[str, np.ndarray]:
    """Random inputs, optional ones too (the exported ONNX graph takes every input): the
    batch symbol(s) at `batch`, other symbols at `sizes` (or SIZES)."""
    sizes = SIZES if sizes is None else sizes
    feeds = {}
    for port in model.inputs:
        env = {s: sizes.get(s, batch) for d in port.type.shape for s in d.symbols()}
        shape = tuple(d.evaluate(env) for d in port.type.shape)
        if port.type.dtype in ("i32", "i64"):
            feeds[port.name] = rng.integers(0, 2, size=shape).astype(port.type.np_dtype)
        elif port.type.dtype == "bool":
            feeds[port.name] = rng.random(shape) < 0.5
        else:
            feeds[port.name] = rng.standard_normal(shape).astype(port.type.np_dtype)
    return feeds


def median_ms(repeat: int, fn, *args, **kwargs) -> float:
    """Median wall time of fn(*args, **kwargs) in milliseconds, in the steady state: after
    warm-up calls for WARM_UP seconds (at least one), over at least `repeat` calls and at
    least ROUND seconds of them (a model of microseconds gets thousands of calls, not ten
    cold ones just after the pause)."""
    start = time.perf_counter()
    fn(*args, **kwargs)
    while time.perf_counter() - start < WARM_UP:
        fn(*args, **kwargs)
    times: list[float] = []
    began = time.perf_counter()
    while len(times) < repeat or time.perf_counter() - began < ROUND:
        start = time.perf_counter()
        fn(*args, **kwargs)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def settled(measure, *args, **kwargs):
    """measure(*args, **kwargs) after a pause that lets other runtimes' threads stop spinning."""
    time.sleep(SETTLE)
    return measure(*args, **kwargs)


def onnx_session(model, threads: int, path: Path):
    import onnxruntime as ort

    model.export_onnx(path)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def measure(path: Path, batch: int, threads: int, repeat: int, with_ref: bool) -> dict:
    """One configuration, timed in this process: native and onnxruntime in alternating rounds,
    and the numpy reference when asked."""
    ref = kiln.compile(str(path), target="reference")
    feeds = inputs_for(ref, batch, np.random.default_rng(0))
    out: dict = {"native": None, "ort": None, "ref": None, "reason": None}
    try:
        native = kiln.compile(str(path), target="native", threads=threads)
    except KilnError as err:
        native, out["reason"] = None, f"native: {err.code} {err.message}"
    with tempfile.TemporaryDirectory() as tmp:  # onnxruntime reads the file once, here
        session = onnx_session(ref, threads, Path(tmp) / f"{path.stem}.onnx")
    rounds: dict[str, list[float]] = {"native": [], "ort": []}
    for _ in range(ROUNDS):
        if native:
            rounds["native"].append(settled(median_ms, repeat, native, **feeds))
        rounds["ort"].append(settled(median_ms, repeat, session.run, None, feeds))
    out["native"] = statistics.median(rounds["native"]) if native else None
    out["ort"] = statistics.median(rounds["ort"])
    if with_ref:
        out["ref"] = settled(median_ms, max(3, repeat // 4), ref, **feeds)
    return out


def outputs(model, feeds: dict) -> tuple:
    """A model's outputs as a tuple (one output is returned bare)."""
    got = model(**feeds)
    return got if isinstance(got, tuple) else (got,)


def relative_error(got: tuple, want: tuple) -> float:
    """The largest relative L2 error of `got`'s outputs against `want`'s."""
    return max(float(np.linalg.norm((g - w).astype(np.float64))
                     / max(float(np.linalg.norm(w.astype(np.float64))), 1e-30))
               for g, w in zip(got, want, strict=True))


def measure_precision(path: Path, batch: int, threads: int, repeat: int,
                      precision: str) -> dict:
    """One configuration, timed in this process: native f32 and native `precision` in
    alternating rounds, and the error of the latter's outputs against f32's."""
    f32 = kiln.compile(str(path), target="native", threads=threads)
    feeds = inputs_for(f32, batch, np.random.default_rng(0))
    out: dict = {"f32": None, "low": None, "error": None, "reason": None}
    try:
        low = kiln.compile(str(path), target="native", threads=threads, precision=precision)
    except KilnError as err:
        out["reason"] = f"{precision}: {err.code} {err.message}"
        return out
    out["error"] = relative_error(outputs(low, feeds), outputs(f32, feeds))
    rounds: dict[str, list[float]] = {"f32": [], "low": []}
    for _ in range(ROUNDS):
        rounds["f32"].append(settled(median_ms, repeat, f32, **feeds))
        rounds["low"].append(settled(median_ms, repeat, low, **feeds))
    out["f32"], out["low"] = (statistics.median(rounds[k]) for k in ("f32", "low"))
    return out


def compare_precisions(opts, files: list[Path]) -> int:
    """The --precision table: per example, batch and threads, f32 and reduced-precision
    latency, their ratio, and the reduced precision's error against f32."""
    p = opts.precision
    header = (f"{'model':<24}{'batch':>6}{'thr':>4}{'f32 ms':>10}{p + ' ms':>10}"
              f"{p + '/f32':>10}{'rel. error':>12}")
    print(header)
    print("-" * len(header))
    failed = 0
    for index, path in enumerate(files, 1):
        for batch in opts.batches:
            for threads in opts.threads:
                print(f"[{index}/{len(files)}] {path.stem}: batch {batch}, {threads} thread(s)...",
                      file=sys.stderr, flush=True)
                child = subprocess.run(
                    [sys.executable, __file__, "--measure-precision", str(path), str(batch),
                     str(threads), "--precision", p, "--repeat", str(opts.repeat)],
                    capture_output=True, text=True)
                if child.returncode != 0:
                    why = (child.stderr.strip().splitlines() or ["no message"])[-1]
                    print(f"{path.stem:<24}{batch:>6}{threads:>4}  failed: {why}", flush=True)
                    failed += 1
                    continue
                got = json.loads(child.stdout.strip().splitlines()[-1])
                if got["reason"]:
                    print(f"{path.stem:<24}{batch:>6}{threads:>4}  {got['reason']}", flush=True)
                    failed += 1
                    continue
                print(f"{path.stem:<24}{batch:>6}{threads:>4}{got['f32']:>10.3f}"
                      f"{got['low']:>10.3f}{got['low'] / got['f32']:>10.2f}"
                      f"{got['error']:>12.1e}", flush=True)
    return 1 if failed else 0


# issue 16's models with a PyTorch twin: name -> kiln source (twin_module gives the PyTorch
# module, twin_input the inputs of a batch). The LSTM and GRU take [T, B, features] (PyTorch's
# default layout), T = 32; the Transformer [B, L, d_model], L = 128; the GCN one random graph
# of Cora's size, N = 2708 nodes and E = 10556 edges, whatever the batch.
TWIN_STEPS, TWIN_LENGTH = 32, 128
TWIN_NODES, TWIN_EDGES = 2708, 10556
TWIN_MAX_BATCH = {"resnet18": 8, "gcn": 1}  # --pytorch's batches capped (issue 16's table)
TWIN_SOURCES = {
    "mlp": (ROOT / "examples" / "mlp.kiln").read_text(),
    "lstm": """
import std.rnn
model LSTM {
  lstm = rnn.LSTM(256, 256, num_layers = 2)
  forward(x: f32[T, B, 256]) -> (f32[T, B, 256], f32[2, B, 256], f32[2, B, 256]) {
    y, h, c = lstm(x)
    return y, h, c
  }
}""",
    "gru": """
import std.rnn
model GRU {
  gru = rnn.GRU(256, 256)
  forward(x: f32[T, B, 256]) -> (f32[T, B, 256], f32[1, B, 256]) {
    y, h = gru(x)
    return y, h
  }
}""",
    "transformer": """
import std.transformer: TransformerEncoder, TransformerEncoderLayer
model Encoder {
  encoder = TransformerEncoder(TransformerEncoderLayer(256, 4, 1024, batch_first = true), 4)
  forward(x: f32[B, L, 256]) -> f32[B, L, 256] {
    return encoder(x)
  }
}""",
    "lenet": (ROOT / "examples" / "lenet.kiln").read_text(),
    "resnet18": (ROOT / "examples" / "resnet18.kiln").read_text(),
    "gcn": (ROOT / "examples" / "gcn.kiln").read_text(),
    "dcgan": (ROOT / "examples" / "dcgan.kiln").read_text(),
}


def twin_module(name: str):
    """The PyTorch twin of TWIN_SOURCES[name], in eval mode. A BatchNorm's running statistics
    are those of one training-mode pass over random inputs (seed 1, not the measured ones: eval
    and training mode differ), its weight and bias random, as are the GCN's biases: at
    PyTorch's initial values (mean 0, variance 1, weight 1, bias 0) a mix-up of them would not
    show in the outputs."""
    import collections

    import torch
    from torch import nn

    class Recurrent(nn.Module):  # the layer's outputs flattened, as kiln's model returns them
        def __init__(self, attr: str, layer: nn.Module):
            super().__init__()
            self.attr = attr
            setattr(self, attr, layer)

        def forward(self, x):
            y, state = getattr(self, self.attr)(x)
            return (y, *state) if isinstance(state, tuple) else (y, state)

    class EncoderLayer(nn.Module):
        """nn.TransformerEncoderLayer's post-norm computation: torch 2.13's TorchScript
        exporter cannot trace the layer itself (it passes is_causal as a tensor)."""

        def __init__(self, d: int = 256, heads: int = 4, ff: int = 1024):
            super().__init__()
            self.self_attn = nn.MultiheadAttention(d, heads, batch_first=True)
            self.linear1, self.linear2 = nn.Linear(d, ff), nn.Linear(ff, d)
            self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)

        def forward(self, x):
            a, _ = self.self_attn(x, x, x, need_weights=False)
            x = self.norm1(x + a)
            return self.norm2(x + self.linear2(torch.relu(self.linear1(x))))

    class Encoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = nn.Module()
            self.encoder.layers = nn.ModuleList(EncoderLayer() for _ in range(4))

        def forward(self, x):
            for layer in self.encoder.layers:
                x = layer(x)
            return x

    LeNet5, BasicBlock = twins.modules()["LeNet5"], twins.modules()["BasicBlock"]

    class ResNet18(nn.Module):  # examples/resnet18.kiln: torchvision's resnet18, by hand
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
            self.bn1 = nn.BatchNorm2d(64)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
            widths = [64, 64, 128, 256, 512]
            for i in range(1, 5):
                stride = 1 if i == 1 else 2
                setattr(self, f"layer{i}", nn.Sequential(
                    BasicBlock(widths[i - 1], widths[i], stride), BasicBlock(widths[i], widths[i])))
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(512, 1000)

        def forward(self, x):
            x = self.maxpool(torch.relu(self.bn1(self.conv1(x))))
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            return self.fc(self.avgpool(x).flatten(1))

    class GCNConv(nn.Module):
        """PyG's GCNConv at its defaults, as std.gnn's: D^-1/2 (A + I) D^-1/2 X W^T + b over the
        edges (source, target), the input's self-loops dropped and one loop per node added."""

        def __init__(self, in_channels: int, out_channels: int):
            super().__init__()
            self.lin = nn.Linear(in_channels, out_channels, bias=False)
            self.bias = nn.Parameter(torch.randn(out_channels))

        def forward(self, x, edge_index):
            loops = torch.arange(x.shape[0])
            src, dst = torch.cat([edge_index[0], loops]), torch.cat([edge_index[1], loops])
            w = torch.cat([(edge_index[0] != edge_index[1]).to(x.dtype),
                           torch.ones_like(loops, dtype=x.dtype)])
            deg = torch.zeros_like(x[:, 0]).index_add(0, dst, w)  # >= 1: every node's loop
            norm = deg.rsqrt()[src] * w * deg.rsqrt()[dst]
            h = self.lin(x)
            return torch.zeros_like(h).index_add(0, dst, h[src] * norm[:, None]) + self.bias

    class GCN(nn.Module):  # examples/gcn.kiln at inference (its dropout the identity)
        def __init__(self):
            super().__init__()
            self.conv1, self.conv2 = GCNConv(1433, 16), GCNConv(16, 7)

        def forward(self, x, edge_index):
            h = torch.relu(self.conv1(x, edge_index))
            return torch.log_softmax(self.conv2(h, edge_index), dim=-1)

    def generator():  # examples/dcgan.kiln: the PyTorch DCGAN tutorial's Generator
        layers, widths = [], [100, 512, 256, 128, 64]
        for i, (cin, cout) in enumerate(zip(widths, widths[1:])):
            layers += [nn.ConvTranspose2d(cin, cout, 4, 1 if i == 0 else 2, 0 if i == 0 else 1,
                                          bias=False), nn.BatchNorm2d(cout), nn.ReLU()]
        layers += [nn.ConvTranspose2d(64, 3, 4, 2, 1, bias=False), nn.Tanh()]
        return nn.Sequential(collections.OrderedDict(main=nn.Sequential(*layers)))

    torch.manual_seed(0)
    modules = {
        "mlp": lambda: nn.Sequential(nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 512),
                                     nn.ReLU(), nn.Linear(512, 10)),
        "lstm": lambda: Recurrent("lstm", nn.LSTM(256, 256, num_layers=2)),
        "gru": lambda: Recurrent("gru", nn.GRU(256, 256)),
        "transformer": Encoder,
        "lenet": LeNet5,
        "resnet18": ResNet18,
        "gcn": GCN,
        "dcgan": generator,
    }
    module = modules[name]()
    norms = [m for m in module.modules() if isinstance(m, nn.BatchNorm2d)]
    if norms:
        for norm in norms:
            norm.momentum = None  # the running statistics: the pass's own
            nn.init.uniform_(norm.weight, 0.5, 1.5)
            nn.init.normal_(norm.bias, 0.0, 0.1)
        with torch.no_grad():
            module.train()(*(torch.from_numpy(a) for a in
                             twin_input(name, 4, np.random.default_rng(1)).values()))
    return module.eval()


def twin_input(name: str, batch: int, rng) -> dict[str, np.ndarray]:
    """The inputs of TWIN_SOURCES[name] for a batch, by kiln's input names (PyTorch's export
    takes the same ones): random normal features; the GCN's graph has random edges (self-loops
    and repeated edges included, as std.gnn allows) and no batch axis."""
    if name == "gcn":
        return {"x": rng.standard_normal((TWIN_NODES, 1433)).astype(np.float32),
                "edge_index": rng.integers(0, TWIN_NODES, size=(2, TWIN_EDGES))}
    shape = {"mlp": (batch, 784), "lstm": (TWIN_STEPS, batch, 256),
             "gru": (TWIN_STEPS, batch, 256), "transformer": (batch, TWIN_LENGTH, 256),
             "lenet": (batch, 1, 28, 28), "resnet18": (batch, 3, 224, 224),
             "dcgan": (batch, 100, 1, 1)}[name]
    return {"z" if name == "dcgan" else "x": rng.standard_normal(shape).astype(np.float32)}


def symbolic_axes(model) -> dict[str, dict[int, str]]:
    """Each input's symbolic axes, {input: {axis: symbol}}, which kiln's export leaves open."""
    return {port.name: {i: str(d) for i, d in enumerate(port.type.shape) if d.symbols()}
            for port in model.inputs}


def torch_export(module, inputs: dict[str, np.ndarray], axes: dict[str, dict[int, str]],
                 path: Path) -> None:
    """PyTorch's TorchScript exporter (the dynamo one needs onnxscript) with the inputs' names
    and `axes` dynamic (symbolic_axes: as kiln's export)."""
    import warnings

    import torch

    # not under no_grad: there nn.MultiheadAttention takes its fast path, which has no export
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, tuple(torch.from_numpy(a) for a in inputs.values()), str(path),
                          dynamo=False, input_names=list(inputs), opset_version=18,
                          dynamic_axes=axes)


def ort_session(path: Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def measure_twin(name: str, batch: int, threads: int, repeat: int) -> dict:
    """kiln native, onnxruntime on kiln's export and onnxruntime on PyTorch's, same weights
    and inputs, alternating rounds; the largest differences between kiln's outputs (native,
    and its export in onnxruntime) and PyTorch's eager ones check that they are one model,
    against `scale`, the largest magnitude of PyTorch's outputs."""
    import torch

    module = twin_module(name)
    weights = {k: v.detach().numpy() for k, v in module.state_dict().items()}
    model = kiln.compile(TWIN_SOURCES[name], target="reference")
    model.load_weights(weights)
    native = kiln.compile(TWIN_SOURCES[name], target="native", threads=threads)
    native.load_weights(weights)
    inputs = twin_input(name, batch, np.random.default_rng(0))
    with tempfile.TemporaryDirectory() as tmp:
        model.export_onnx(Path(tmp) / "kiln.onnx")
        torch_export(module, inputs, symbolic_axes(model), Path(tmp) / "torch.onnx")
        sessions = {"kiln": ort_session(Path(tmp) / "kiln.onnx", threads),
                    "torch": ort_session(Path(tmp) / "torch.onnx", threads)}
        imported = import_native(Path(tmp) / "torch.onnx", model, inputs, threads)
    runs = {"native": lambda: native(**inputs),
            **{k: (lambda s=s: s.run(None, inputs)) for k, s in sessions.items()}}
    if imported is not None:
        runs["imported"] = lambda: imported(**inputs)
    with torch.no_grad():
        eager = module(*(torch.from_numpy(a) for a in inputs.values()))
    eager = [t.numpy() for t in (eager if isinstance(eager, tuple) else (eager,))]

    def diff(outs) -> float:
        outs = outs if isinstance(outs, (tuple, list)) else (outs,)
        return max(float(np.abs(a - b).max()) for a, b in zip(outs, eager, strict=True))

    diffs = {"diff": diff(runs["kiln"]()), "native_diff": diff(runs["native"]()),
             "imported_diff": diff(runs["imported"]()) if imported is not None else 0.0,
             "export_diff": diff(runs["torch"]()),
             "scale": max(float(np.abs(e).max()) for e in eager),
             "macs": call_macs(native, inputs), "peak": threads * fma_peak_flops()}
    rounds: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(ROUNDS):
        for k, run in runs.items():
            rounds[k].append(settled(median_ms, repeat, run))
    return {**{k: statistics.median(v) for k, v in rounds.items()}, **diffs}


def import_native(path: Path, model, inputs: dict[str, np.ndarray], threads: int):
    """PyTorch's export at `path` imported and compiled natively (ONNX files in), its
    symbolic sizes other than the batch (the first input's first axis) fixed to the inputs'
    (the exporter bakes traced sizes into reshapes: the Transformer's L); None, with the
    reason on stderr, where kiln cannot import it."""
    from kiln.compiler.errors import KilnError

    fixed = {}
    for port, array in zip(model.inputs, inputs.values(), strict=True):
        for axis, d in enumerate(port.type.shape):
            if d.symbol is not None and (port, axis) != (model.inputs[0], 0):
                fixed[d.symbol] = array.shape[axis]
    try:
        return kiln.compile(path, target="native", threads=threads, args=fixed or None)
    except KilnError as err:
        print(f"import of PyTorch's export: {err}".splitlines()[0], file=sys.stderr)
        return None


def call_macs(model, inputs: dict[str, np.ndarray]) -> int:
    """The multiply-adds of one call with these inputs, as the model is written (a
    convolution's direct sum, not the fewer products of its Winograd form)."""
    _arrays, dims = model.bind_inputs((), inputs)
    total = sum(model.model.macs_by_scope().values(), Dim.of(0))
    return int(total.evaluate(dims))


def compare_with_pytorch(opts) -> int:
    """The --pytorch table: one child process per (model, batch, threads)."""
    names = [n for n in TWIN_SOURCES if not opts.models or n in opts.models]
    header = (f"{'model':<14}{'batch':>6}{'thr':>4}{'native ms':>11}{'kiln export ms':>16}"
              f"{'torch export ms':>17}{'native/torch':>13}{'kiln/torch':>11}"
              f"{'imported/torch':>15}{'max |diff|':>12}{'peak% native':>14}{'torch':>7}"
              f"{'0.8x needs':>12}")
    print(header)
    print("-" * len(header))
    failed = 0
    for name in names:
        cap = TWIN_MAX_BATCH.get(name, max(opts.batches))
        for batch in sorted({min(b, cap) for b in opts.batches}):
            for threads in opts.threads:
                print(f"{name}: batch {batch}, {threads} thread(s)...", file=sys.stderr,
                      flush=True)
                child = subprocess.run(
                    [sys.executable, __file__, "--measure-twin", name, str(batch), str(threads),
                     "--repeat", str(opts.repeat)], capture_output=True, text=True)
                if child.returncode != 0:
                    why = (child.stderr.strip().splitlines() or ["no message"])[-1]
                    print(f"{name:<14}{batch:>6}{threads:>4}  failed: {why}", flush=True)
                    failed += 1
                    continue
                got = json.loads(child.stdout.strip().splitlines()[-1])
                imported = (f"{got['imported'] / got['torch']:.2f}" if "imported" in got
                            else "-")
                print(f"{name:<14}{batch:>6}{threads:>4}{got['native']:>11.3f}"
                      f"{got['kiln']:>16.3f}{got['torch']:>17.3f}"
                      f"{got['native'] / got['torch']:>13.2f}{got['kiln'] / got['torch']:>11.2f}"
                      f"{imported:>15}"
                      f"{max(got['diff'], got['native_diff'], got['imported_diff']):>12.1e}"
                      f"{percent(got, 'native'):>14.0f}{percent(got, 'torch'):>7.0f}"
                      f"{percent(got, 'torch') / 0.8:>12.0f}", flush=True)
                if got["export_diff"] > 1e-3 * max(got["scale"], 1.0):
                    # (the GCN's: the TorchScript exporter writes index_add as a
                    # ScatterElements without reduction, so repeated edges overwrite)
                    print(f"{'':<14}(PyTorch's export in onnxruntime differs from PyTorch by "
                          f"{got['export_diff']:.1e}: not the same model; the imported column "
                          "runs that export)", flush=True)
    return 1 if failed else 0


def percent(got: dict, runtime: str) -> float:
    """The FLOP/s of `runtime`'s median call (2 per multiply-add) as a percentage of the
    threads' measured FMA peak."""
    return 200 * got["macs"] / (got[runtime] / 1e3) / got["peak"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--models", nargs="+", help="example names (default: every example)")
    parser.add_argument("--measure", nargs=3, metavar=("FILE", "BATCH", "THREADS"),
                        help=argparse.SUPPRESS)  # one configuration, in a child process
    parser.add_argument("--with-ref", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--pytorch", action="store_true",
                        help="kiln native and onnxruntime on kiln's export vs onnxruntime on "
                             "PyTorch's (mlp lstm gru transformer lenet resnet18 gcn dcgan)")
    parser.add_argument("--measure-twin", nargs=3, metavar=("NAME", "BATCH", "THREADS"),
                        help=argparse.SUPPRESS)  # one --pytorch configuration, in a child
    parser.add_argument("--precision", choices=["f32", "bf16"], default="f32",
                        help="bf16: kiln native in bf16 beside f32, with its error (no "
                             "onnxruntime)")
    parser.add_argument("--measure-precision", nargs=3, metavar=("FILE", "BATCH", "THREADS"),
                        help=argparse.SUPPRESS)  # one --precision configuration, in a child
    opts = parser.parse_args()
    if opts.measure_precision:
        path, batch, threads = opts.measure_precision
        print(json.dumps(measure_precision(Path(path), int(batch), int(threads), opts.repeat,
                                           opts.precision)))
        return 0
    if opts.measure_twin:
        name, batch, threads = opts.measure_twin
        print(json.dumps(measure_twin(name, int(batch), int(threads), opts.repeat)))
        return 0
    if opts.pytorch:
        return compare_with_pytorch(opts)
    if opts.measure:
        path, batch, threads = opts.measure
        print(json.dumps(measure(Path(path), int(batch), int(threads), opts.repeat,
                                 opts.with_ref)))
        return 0
    files = sorted((ROOT / "examples").glob("*.kiln"))
    if opts.models:
        files = [f for f in files if f.stem in opts.models]
    if opts.precision != "f32":
        return compare_precisions(opts, files)
    header = (f"{'model':<24}{'batch':>6}{'thr':>4}{'native ms':>11}{'ort ms':>9}"
              f"{'numpy ms':>10}{'native/ort':>11}{'numpy/native':>13}")
    print(header)
    print("-" * len(header))
    failed = 0
    for index, path in enumerate(files, 1):
        reasons = set()
        for batch in opts.batches:
            t_ref = None
            for threads in opts.threads:
                print(f"[{index}/{len(files)}] {path.stem}: batch {batch}, {threads} thread(s)...",
                      file=sys.stderr, flush=True)
                # each configuration in a fresh process: no thread pool, spinning onnxruntime
                # or OpenBLAS thread of another configuration takes a core from it
                child = subprocess.run(
                    [sys.executable, __file__, "--measure", str(path), str(batch), str(threads),
                     "--repeat", str(opts.repeat), *(["--with-ref"] if t_ref is None else [])],
                    capture_output=True, text=True)
                if child.returncode != 0:  # say which and why, and go on with the others
                    why = (child.stderr.strip().splitlines() or ["no message"])[-1]
                    print(f"{path.stem:<24}{batch:>6}{threads:>4}  failed: {why}", flush=True)
                    failed += 1
                    continue
                got = json.loads(child.stdout.strip().splitlines()[-1])
                t_ref = got["ref"] if t_ref is None else t_ref
                t_nat, t_ort = got["native"], got["ort"]
                if got["reason"]:
                    reasons.add(got["reason"])
                nat = f"{t_nat:>11.3f}" if t_nat else f"{'-':>11}"
                ratio = f"{t_nat / t_ort:>11.2f}" if t_nat else f"{'-':>11}"
                speedup = f"{t_ref / t_nat:>13.1f}" if t_nat else f"{'-':>13}"
                print(f"{path.stem:<24}{batch:>6}{threads:>4}{nat}{t_ort:>9.3f}{t_ref:>10.3f}"
                      f"{ratio}{speedup}", flush=True)
        for reason in sorted(reasons):
            print(f"  ({reason})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
