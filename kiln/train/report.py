"""`kiln compile FILE --report --train`: the train step's kernels and its peak memory.

The train step (compiler/train/step.py) is one graph, optimized and planned like any model's,
so compiler/report.py lists its kernels and its planned peak of intermediates. To that this
adds what one step holds besides, as formulas in the model's sizes: the weights, the
optimizer's state, the batch and its targets (the step's inputs), the new weights and state
it returns (its outputs), and which part of the intermediates the forward pass keeps for the
backward pass.
"""

from __future__ import annotations

from dataclasses import dataclass

from kiln.compiler.dims import Dim
from kiln.compiler.ir import STRUCTURAL_OPS, Graph
from kiln.compiler.report import report
from kiln.compiler.train.step import PARAM
from kiln.compiler.types import TensorType

ROLES = ("weights and buffers", "optimizer state", "batch, targets, step scalars")
OUT_ROLES = dict(zip(ROLES, ("new weights and buffers", "new optimizer state",
                             "loss, gradient norms")))


def _bytes(t: TensorType) -> Dim:
    size = Dim.of(t.np_dtype.itemsize)
    for d in t.shape:
        size = size * Dim.of(d)
    return size


def _role(name: str) -> str:
    if name.startswith(PARAM):
        return ROLES[0]
    if name.startswith("optimizer."):
        return ROLES[1]
    return ROLES[2]


def _sums(ports) -> dict[str, Dim]:
    sums = {role: Dim.of(0) for role in ROLES}
    for port in ports:
        sums[_role(port.name)] = sums[_role(port.name)] + _bytes(port.type)
    return sums


def saved_for_backward(forward: set[int], step: Graph) -> Dim:
    """The bytes of the values the forward nodes (ids `forward`, shared by the step graph
    built from them: compiler/autodiff.py) compute and a later node of the step reads:
    what the forward pass keeps for the backward pass and the update, before fusion."""
    total = Dim.of(0)
    for nid in step.order():
        if nid not in forward or step.op(nid) in STRUCTURAL_OPS:
            continue
        readers = {v for _, v, d in step.g.out_edges(nid, data=True)}
        if any(r not in forward for r in readers):
            outs = {d["src"] for _, v, d in step.g.out_edges(nid, data=True)
                    if v not in forward}
            for i in outs:
                total = total + _bytes(step.node(nid)["types"][i])
    return total


@dataclass(frozen=True)
class StepMemory:
    """What one train step holds, in bytes, as formulas in the model's sizes."""

    inputs: dict[str, Dim]  # by role (ROLES)
    outputs: dict[str, Dim]  # by role: the new weights and state, the loss and norms
    peak: list[Dim]  # the planned peak of the intermediates: the max of these
    saved: Dim  # the forward's values the backward reads (before fusion)

    def total(self) -> list[Dim]:
        """The peak of one step: the max of these (inputs, outputs and intermediates)."""
        fixed = Dim.of(0)
        for d in (*self.inputs.values(), *self.outputs.values()):
            fixed = fixed + d
        return [fixed + p for p in self.peak]


def step_memory(trainer):
    """(the train step of `trainer` optimized for the native target, its StepMemory)."""
    from kiln.compiler.driver import Compilation, Weights

    forward, step_model, _ = trainer.step_parts()
    compilation = Compilation(step_model, None, "native", None, trainer.opt_level)
    lowered = compilation.lowered(Weights.of({}), pipeline="native")
    return lowered, StepMemory(_sums(step_model.inputs), _sums(step_model.outputs),
                               lowered.graph.memory.peak(),
                               saved_for_backward(forward, step_model.graph))


def _max_text(terms: list[Dim]) -> str:
    return str(terms[0]) if len(terms) == 1 else f"max({', '.join(map(str, terms))})"


def train_report(trainer) -> str:
    """The report of `trainer`'s train step, compiled for the native target."""
    lowered, memory = step_memory(trainer)
    loss = trainer.loss
    name = loss.name if loss.path is None else f"{loss.path}:{loss.name}"
    lines = [f"train step of {trainer.model_name} (loss {name}, "
             f"{type(trainer.optimizer).__name__}, target {trainer.target_type()})", "",
             report(lowered, "native"), "",
             "peak memory of one train step, in bytes:"]
    rows = [(f"in:  {role}", str(memory.inputs[role])) for role in ROLES]
    rows += [(f"out: {OUT_ROLES[role]}", str(memory.outputs[role])) for role in ROLES]
    rows.append(("intermediates, planned peak", _max_text(memory.peak)))
    rows.append(("total", _max_text(memory.total())))
    width = max(len(r) for r, _ in rows)
    lines += [f"  {r:<{width}}  {v}" for r, v in rows]
    lines.append(f"  of the intermediates, kept by the forward pass for the backward pass "
                 f"(before fusion): {memory.saved}")
    return "\n".join(lines)
