"""The pass pipeline of each target, by name, and `optimize` to run one.

    graph, stats = optimize(model, params=params)   # a new graph; `model.graph` is unchanged

"native" (codegen/llvm/pipeline.py) serves native code and the reference; "onnx" is the
target-independent pipeline alone (passes/pipeline.py).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from .codegen.llvm.pipeline import NATIVE_PIPELINE
from .ir import Graph
from .passes.manager import Pass, PassStats
from .passes.pipeline import TARGET_INDEPENDENT, run_passes

# The ONNX target's pipeline: what simplifies the graph itself, without the native backend's
# choices. Parameters stay parameters, so every one is an initializer named by its dotted
# path: no weight is folded into a new constant (fold_batch_norm, fold_weight_layout; a
# BatchNorm stays a BatchNormalization node, a weight.T a Transpose, which onnxruntime folds
# itself), and no weight layout, fused kernel or memory plan is made for native code
# (conv_layout, fuse, plan_memory: onnxruntime makes its own).
ONNX_PIPELINE: list[Pass] = TARGET_INDEPENDENT
PIPELINES: dict[str, list[Pass]] = {"native": NATIVE_PIPELINE, "onnx": ONNX_PIPELINE}
# every pass by name (the native pipeline runs each of them), for `optimize(passes=...)`
PASSES: dict[str, Pass] = {p.name: p for p in NATIVE_PIPELINE}


def optimize(
    model_or_graph: Any,
    level: int = 1,
    verify: bool | None = None,
    passes: list[str | Pass] | None = None,
    params: dict[str, np.ndarray] | None = None,
    pipeline: str = "native",
) -> tuple[Graph, list[PassStats]]:
    """Optimize a copy of a graph (or of an ElaboratedModel's graph); the input is unchanged.

    `level` runs the passes of that level or lower (0: none; every pass today is level 1) of
    PIPELINES[pipeline]: "native" (for native code and the reference) or "onnx";
    `passes` picks passes (names or Pass values) to run in the order given instead.
    `params` (path -> array) lets passes that need parameter values (fold_batch_norm) run;
    without them they are skipped. `verify` checks the IR (structure and types) before the
    first pass and after each one, raising IRError that names the pass that broke it (by
    default when the environment has KILN_VERIFY_IR=1, as the test suite sets it).
    Returns the graph and one PassStats per pass.
    """
    graph = getattr(model_or_graph, "graph", model_or_graph)
    if passes is not None:
        unknown = [p for p in passes if isinstance(p, str) and p not in PASSES]
        if unknown:
            raise ValueError(f"unknown pass {unknown[0]!r}; the passes are {', '.join(PASSES)}")
        chosen = [PASSES[p] if isinstance(p, str) else p for p in passes]
    else:
        chosen = [p for p in PIPELINES[pipeline] if p.level <= level]
    if verify is None:
        verify = os.environ.get("KILN_VERIFY_IR") == "1"
    return run_passes(graph, chosen, params, verify)
