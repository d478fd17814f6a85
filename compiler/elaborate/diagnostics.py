"""What one elaboration reports and spends: its errors, the chain of blocks and fns being
elaborated (each error's notes), and its budget of compile-time work (compiler/limits.py)."""

from __future__ import annotations

from ..errors import KilnError, Span
from ..limits import CALL_STEPS, MAX_GRAPH_NODES, MAX_UNROLLED_STEPS, LimitExceeded

MAX_DEPTH = 64  # blocks and fn calls nested deeper than this are a runaway recursion


class Diagnostics:
    """The errors reported so far, and `stack`: (name, span of its use) for each block or fn
    being elaborated, outermost first (the root model has no span)."""

    def __init__(self) -> None:
        self.errors: list[KilnError] = []
        self.stack: list[tuple[str, Span | None]] = []

    def chain_notes(self) -> tuple[str, ...]:
        """`in Block, used at file:line:col` for each block or fn being elaborated, innermost
        first."""
        return tuple(
            f"in {name}, used at {span}" for name, span in reversed(self.stack) if span is not None
        )

    def report(self, err: KilnError) -> None:
        """Record `err` (and the errors it carries) with the chain of uses as notes; a limit
        exceeded is raised again instead, since elaboration cannot recover from it."""
        chain = self.chain_notes()
        if isinstance(err, LimitExceeded):  # no recovery: stop the elaboration here
            if chain and not err.notes:
                err.notes = chain
            raise err
        for e in err.all:
            if chain and not e.notes:
                e.notes = chain
            if all(e.format_one() != prev.format_one() for prev in self.errors):
                self.errors.append(e)
        err.others = []


class Budget:
    """Loop iterations, calls and graph nodes so far, against the limits on each."""

    def __init__(self) -> None:
        self.steps = 0  # loop iterations and calls (limits.MAX_UNROLLED_STEPS)
        self.nodes = 0  # graph nodes (limits.MAX_GRAPH_NODES)

    def spend(self, steps: int, span: Span | None) -> None:
        """Count `steps` loop iterations or calls against the elaboration's budget."""
        self.steps += steps
        if self.steps > MAX_UNROLLED_STEPS:
            raise LimitExceeded(
                f"the model unrolls more than {MAX_UNROLLED_STEPS:,} loop iterations at compile "
                f"time (a fn call or block instance counts as {CALL_STEPS})", span
            )

    def count_node(self, span: Span | None) -> None:
        """Count one graph node against the limit on graph size."""
        self.nodes += 1
        if self.nodes > MAX_GRAPH_NODES:
            raise LimitExceeded(
                f"the model's graph grows past {MAX_GRAPH_NODES:,} nodes "
                "(loops and blocks are unrolled at compile time)", span
            )
