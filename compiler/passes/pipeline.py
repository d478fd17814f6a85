"""The target-independent pipeline: the rewrites every target wants, in order, and
`run_passes` to run a list of passes. Each target's own pipeline adds its choices to these
(compiler/pipelines.py lists them by name: the native backend's in codegen/llvm/pipeline.py)."""

from __future__ import annotations

import time

from ..dims import assuming
from ..ir import Graph
from .batch_norm import share_batch_statistics
from .cleanup import cse, dce
from .edit import IRError, copy_graph, count_nodes
from .fold import fold_constants
from .hoist import hoist_scan_invariants
from .manager import Pass, PassContext, PassStats
from .projections import merge_split_projections
from .simplify import simplify
from .verify import check_types
from .verify import verify as verify_graph

# The order matters:
# 1. check_types first: the rewrites below trust every node's recorded types.
# 2. fold_constants before simplify: folding turns `ones(...)`, `full(...)` and ops on
#    constants into `constant` nodes, which the x*1 / x+0 rules recognise.
# 3. merge_split_projections after simplify (its transposes of the weight's parts are plain
#    then) and before any target's fold_weight_layout, which then folds the merged product's
#    transpose of the whole weight.
# 4. hoist_scan_invariants after simplify: a simplified body shows its invariants.
# 5. share_batch_statistics after simplify (the slices of the statistics' rows are plain)
#    and before CLEANUP (dce removes the batch_norm_stats node no longer read).
REWRITES: list[Pass] = [check_types, fold_constants, simplify, merge_split_projections,
                        hoist_scan_invariants, share_batch_statistics]
# A target's own folds go between REWRITES and CLEANUP (codegen/llvm/pipeline.py), so that:
# 6. cse after the rewrites: simplified expressions are more often equal, and folded constants
#    with equal values merge.
# 7. dce last of the rewrites: it removes what the elaborator left unused (each rewrite removes
#    what it replaced itself).
CLEANUP: list[Pass] = [cse, dce]
TARGET_INDEPENDENT: list[Pass] = [*REWRITES, *CLEANUP]


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
