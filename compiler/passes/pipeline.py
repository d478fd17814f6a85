"""The optimization pipeline: one ordered list of passes, and `optimize` to run it."""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np

from ..dims import assuming
from ..ir import Graph
from .batch_norm import fold_batch_norm
from .cleanup import cse, dce
from .edit import IRError, copy_graph, count_nodes
from .fold import fold_constants, fold_weight_layout
from .fuse import fuse
from .hoist import hoist_scan_invariants
from .layout import conv_layout
from .manager import Pass, PassContext, PassStats
from .memory import plan_memory
from .simplify import simplify
from .verify import check_types
from .verify import verify as verify_graph

# The order matters:
# 1. check_types first: the rewrites below trust every node's recorded types.
# 2. fold_constants before simplify: folding turns `ones(...)`, `full(...)` and ops on
#    constants into `constant` nodes, which the x*1 / x+0 rules recognise.
# 3. simplify before fold_batch_norm: dropping an inference dropout, a no-op cast or reshape
#    between a conv and its batch_norm exposes the conv -> batch_norm pattern.
# 3b. hoist_scan_invariants after simplify (a simplified body shows its invariants) and before
#    fold_weight_layout: a scan body's `transpose(W)` of a captured weight moves out of the
#    loop, where it is `transpose(param)`, which fold_weight_layout makes once.
# 4. cse after the rewrites: simplified expressions are more often equal, and folded constants
#    with equal values merge.
# 5. fold_weight_layout after fold_batch_norm (which reads the conv/linear weights as params):
#    weight.T and other moves of a parameter become constants, made once instead of per call.
# 6. dce last: it removes what the elaborator left unused (each rewrite removes what it
#    replaced itself).
# 7. conv_layout after fold_batch_norm (whose folded weights are new constants) and before
#    fuse, so that the layout rides into the fused groups with its convolution.
# 8. fuse after dce: it sees the final dataflow (a value's users decide what joins a group),
#    and groups hold what the rewrites above produced (a folded BN's bias add, say).
# 9. plan_memory last: it plans the graph the backend gets (any later edit would make its plan
#    stale; verify checks that the plan still matches the graph).
PIPELINE: list[Pass] = [
    check_types, fold_constants, simplify, hoist_scan_invariants, fold_batch_norm,
    fold_weight_layout, cse, dce, conv_layout, fuse, plan_memory,
]
# The ONNX target's pipeline: what simplifies the graph itself, without the native backend's
# choices. Parameters stay parameters, so every one is an initializer named by its dotted
# path: no weight is folded into a new constant (fold_batch_norm, fold_weight_layout; a
# BatchNorm stays a BatchNormalization node, a weight.T a Transpose, which onnxruntime folds
# itself), and no weight layout, fused kernel or memory plan is made for native code
# (conv_layout, fuse, plan_memory: onnxruntime makes its own). Orders as PIPELINE.
ONNX_PIPELINE: list[Pass] = [check_types, fold_constants, simplify, hoist_scan_invariants, cse, dce]
PIPELINES: dict[str, list[Pass]] = {"native": PIPELINE, "onnx": ONNX_PIPELINE}
PASSES: dict[str, Pass] = {p.name: p for p in PIPELINE}


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
    PIPELINES[pipeline]: "native" (PIPELINE, for native code and the reference) or "onnx"
    (ONNX_PIPELINE); `passes` picks passes (names or Pass values) to run in the order given
    instead.
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


def run_passes(graph: Graph, passes: list[Pass], params: dict | None = None,
               verify_ir: bool = False) -> tuple[Graph, list[PassStats]]:
    """Run `passes` in order on a copy of `graph`, recording what each did."""
    with assuming(graph.size_facts()):  # shape rules rerun under the model's `where` facts
        return _run_passes(copy_graph(graph), passes, params, verify_ir)


def _run_passes(graph: Graph, passes: list[Pass], params: dict | None,
                verify_ir: bool) -> tuple[Graph, list[PassStats]]:
    if verify_ir:
        _verified(graph, "before the first pass")
    stats = []
    for p in passes:
        before = count_nodes(graph)
        if p.needs_params and params is None:
            stats.append(PassStats(p.name, before, before, {}, 0.0, "skipped: no params given"))
            continue
        ctx = PassContext(params=params)
        start = time.perf_counter()
        graph = p.apply(graph, ctx)
        seconds = time.perf_counter() - start
        if verify_ir:
            _verified(graph, f"after pass {p.name!r}")
        stats.append(PassStats(p.name, before, count_nodes(graph), dict(ctx.counts), seconds))
    return graph, stats


def _verified(graph: Graph, when: str) -> None:
    try:
        verify_graph(graph)
    except IRError as err:
        raise IRError(f"invalid IR {when}: {err}") from None
