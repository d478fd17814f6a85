"""Graph-to-graph passes: the optimizer between elaboration and code generation.

Each pass is a Pass (name, function, docstring) defined beside its rewrite; pipeline.py lists
the target-independent ones in the order they run (and why that order), and each target adds
its own choices (compiler/pipelines.py: `optimize(model, pipeline="native")`). `verify` checks
the IR's invariants and is run between passes by `run_passes(..., verify_ir=True)`.
"""

from __future__ import annotations

from .batch_norm import fold_batch_norm
from .cleanup import cse, dce
from .edit import IRError, copy_graph, count_nodes
from .fold import fold_constants, fold_weight_layout
from .hoist import hoist_scan_invariants
from .manager import Pass, PassContext, PassStats, format_stats, graph_pass
from .memory import plan_memory
from .pipeline import CLEANUP, REWRITES, TARGET_INDEPENDENT, run_passes
from .simplify import RULES, simplify
from .verify import check_types, verify

__all__ = [
    "CLEANUP",
    "REWRITES",
    "RULES",
    "TARGET_INDEPENDENT",
    "IRError",
    "Pass",
    "PassContext",
    "PassStats",
    "check_types",
    "copy_graph",
    "count_nodes",
    "cse",
    "dce",
    "fold_batch_norm",
    "fold_constants",
    "fold_weight_layout",
    "format_stats",
    "graph_pass",
    "hoist_scan_invariants",
    "plan_memory",
    "run_passes",
    "simplify",
    "verify",
]
