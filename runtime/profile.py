"""`kiln profile` and `model.profile(...)`: where a native call's time goes, kernel by kernel,
tied to the model's source lines.

    prof = model.profile(x, repeat=20)
    print(prof)                    # the table: kernels in run order, their source, time share,
                                   # GFLOP/s and % of the CPU's measured FMA peak
    prof.kernels[0].seconds        # per call, the median over the timed calls

The native code is built once more with a timer around each kernel (codegen/llvm/module.py:
kiln_profile, the CPU's cycle counter); cycles become seconds by the counter's rate, measured
against the wall clock. Each kernel's time is its median over the timed calls (a call the OS
interrupted does not skew it); the table's total is the sum of those medians, and `wall` the
median time of a whole call as Python sees it (the kernels, plus crossing into native code
and the output arrays).
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass

from ..compiler.ir import Graph, GraphVisitor
from ..compiler.macs import macs_of_node


@dataclass(frozen=True)
class KernelTime:
    """One kernel of a profiled call."""

    index: int  # run order, from 1
    kernel: str  # the op, or `fused conv+add+relu`
    sources: tuple[str, ...]  # file:line of each op in it
    seconds: float  # per call: the median over the timed calls
    macs: int  # multiply-accumulates per call (0: not a GEMM-like op)
    depth: int = 0  # 0: the model's own kernel; 1: a kernel of a scan's body (its time over
    # all the steps, part of the scan's), 2: of a scan inside that body, ...

    @property
    def gflops(self) -> float:
        """Achieved GFLOP/s (a multiply-add counts as 2)."""
        return 2 * self.macs / self.seconds / 1e9 if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class Profile:
    """The kernels of one model call with given sizes, timed over `calls` calls."""

    model: str
    sizes: dict[str, int]
    threads: int
    calls: int
    kernels: tuple[KernelTime, ...]
    wall: float  # median seconds of a whole call
    peak_flops: float  # the measured FMA peak of `threads` cores, FLOP/s
    precision: str = "f32"  # of the GEMMs ("bf16": their rate may pass the f32 FMA peak)

    @property
    def total(self) -> float:
        """Seconds per call spent in kernels (a scan's body counted once, in the scan's)."""
        return sum(k.seconds for k in self.kernels if k.depth == 0)

    @property
    def macs(self) -> int:
        return sum(k.macs for k in self.kernels if k.depth == 0)

    def percent_of_peak(self, seconds: float, macs: int) -> float:
        return 100.0 * 2 * macs / seconds / self.peak_flops if seconds > 0 and macs else 0.0

    def __str__(self) -> str:
        return format_profile(self)


def format_profile(p: Profile, top: int | None = None) -> str:
    """The table: one line per kernel in run order (the `top` slowest only, when given), then
    the totals."""
    total = p.total or 1e-12
    sizes = ", ".join(f"{k}={v}" for k, v in p.sizes.items()) or "no symbolic sizes"
    lines = [f"{p.model} ({sizes}), {p.threads} thread{'s' * (p.threads != 1)}, "
             f"median of {p.calls} calls; FMA peak {p.peak_flops / 1e9:,.0f} GFLOP/s measured"
             + ("" if p.precision == "f32" else
                f" (f32 FMAs: {p.precision} products on AMX tiles can pass 100%)"),
             f"{'#':>4}  {'kernel':<34} {'time':>10} {'share':>6} {'GFLOP/s':>8} {'peak':>6}"
             "  source"]
    shown = p.kernels
    if top is not None:
        keep = {k.index for k in sorted(p.kernels, key=lambda k: -k.seconds)[:top]}
        shown = tuple(k for k in p.kernels if k.index in keep)
    for k in shown:
        name = "  " * k.depth + ("· " if k.depth else "") + k.kernel
        name = name if len(name) <= 34 else name[:31] + "..."
        rate = f"{k.gflops:8.1f}" if k.macs else f"{'':>8}"
        peak = f"{p.percent_of_peak(k.seconds, k.macs):5.1f}%" if k.macs else f"{'':>6}"
        lines.append(f"{k.index:>4}  {name:<34} {_time(k.seconds):>10} "
                     f"{100 * k.seconds / total:5.1f}% {rate} {peak}  {', '.join(k.sources)}")
    lines.append(f"{'':>4}  {'total (kernels)':<34} {_time(p.total):>10} {100.0:5.1f}% "
                 f"{2 * p.macs / total / 1e9 if p.macs else 0:8.1f} "
                 f"{p.percent_of_peak(p.total, p.macs):5.1f}%")
    lines.append(f"{'':>4}  {'whole call (median, from Python)':<34} {_time(p.wall):>10}")
    if any(k.depth for k in shown):
        lines.append("      (· a kernel of the scan above it: its time over all the steps, "
                     "within the scan's)")
    return "\n".join(lines)


def _time(seconds: float) -> str:
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.3f} ms"
    return f"{seconds * 1e6:.1f} us"


class _Describe(GraphVisitor):
    """A kernel's name and the source lines of the ops in it."""

    def visit_fused(self, graph: Graph, nid: int, node: dict) -> tuple[str, list]:
        body: Graph = node["attrs"]["body"]
        inner = [body.node(n) for n in body.order() if body.op(n) != "input"]
        return "fused " + "+".join(n["op"] for n in inner), [n["span"] for n in inner]

    def visit_op(self, graph: Graph, nid: int, node: dict) -> tuple[str, list]:
        return node["op"], [node["span"]]


def _line(span) -> str | None:
    """`file:line` of the model's source a span comes from: for code inside a standard
    library block, the user's line that used the block (innermost first)."""
    if span is None:
        return None
    places = [f"{span.file}:{span.line}:{span.col}"]
    places += [use.rpartition("used at ")[2] for use in span.uses]
    for place in places:
        file, line = place.rsplit(":", 2)[:2] if place.count(":") >= 2 else (place, "")
        if not file.startswith("<std>"):
            return f"{os.path.basename(file)}:{line}"
    return places[0].rsplit(":", 1)[0]


def kernel_times(graph: Graph, profiled: list[tuple[int, ...]], cycles: list[float],
                 rate: float, sizes: dict[str, int]) -> tuple[KernelTime, ...]:
    """KernelTime per timed kernel: `cycles[k]` counted in one call for the node at path
    `profiled[k]` (a node of `graph`, or the scan nodes down to a node of a body), the
    counter running at `rate` per second. A body kernel's multiply-adds are its step's
    times the steps of each scan around it."""
    describe = _Describe()
    # a scan's body kernels are counted (and built) before the scan itself: list each scan
    # first, then its body's kernels in their order
    at = {tuple(path): k for k, path in enumerate(profiled)}
    order = sorted(range(len(profiled)), key=lambda k: tuple(
        at[tuple(profiled[k][:i])] for i in range(1, len(profiled[k]) + 1)))
    out = []
    for shown, k in enumerate(order):
        path = profiled[k]
        g, steps = graph, 1
        for scan in path[:-1]:
            attrs = g.node(scan)["attrs"]
            first_seq = g.operands(scan)[attrs["n_carry"]]
            steps *= first_seq.type.shape[attrs["axes"][0]].evaluate(sizes)
            g = attrs["body"]
        nid = path[-1]
        name, spans = describe.visit(g, nid)
        sources = tuple(dict.fromkeys(s for s in map(_line, spans) if s))  # once each, in order
        macs = int(macs_of_node(g, nid).evaluate(sizes)) * steps
        out.append(KernelTime(shown + 1, name, sources, cycles[k] / rate, macs,
                              len(path) - 1))
    return tuple(out)


def counter_rate(read_cycles) -> float:
    """Cycles per second of the counter `read_cycles()` reads, against the wall clock."""
    best = []
    for _ in range(3):
        c0, t0 = read_cycles(), time.perf_counter()
        time.sleep(0.02)
        c1, t1 = read_cycles(), time.perf_counter()
        best.append((c1 - c0) / (t1 - t0))
    return statistics.median(best)


__all__ = ["KernelTime", "Profile", "counter_rate", "format_profile", "kernel_times"]
