"""The train step as one graph: forward (training mode), loss, backward, optimizer update.

    step_model, layout = build_train_step(loss_model, optimizer, prefix="net.",
                                          trainable=["fc.*"], clip_grad_norm=1.0)

`loss_model` is the elaborated model whose output 0 is the 0-d loss of the user's model
composed with a loss (kiln/train.py generates that small program: the user's model is its
member `net`, so its parameters are `net.<path>`). The step graph is that graph with:

- its gradients (compiler/autodiff.loss_grad) with respect to the trainable parameters;
- every `param` node (parameters and buffers) replaced by an input `param:<path>` (path
  without `prefix`): weights are data of the step, never folded into its code;
- the optimizer's update (compiler/train/optim.py, GraphKit) of each trainable parameter,
  with its state as inputs `optimizer.<path>.<slot>` and the scheduled learning rate `lr`
  and the step counter `step` (from 1) as float64 inputs;
- as outputs: `loss`, then `param:<path>` (the new value of each trainable parameter),
  `optimizer.<path>.<slot>` (the new state), `updated:<path>` (each buffer's new value,
  training mode's running statistics) and `gradnorm:<path>` (each gradient's 2-norm, before
  clipping: the trainer names the first non-finite one when the loss is not finite).

Compiled like any model (driver.Compilation), it runs as one native call per step.
"""

from __future__ import annotations

import dataclasses
import fnmatch

from ..builder import GraphBuilder
from ..elaborate import ElaboratedModel, Port
from ..elaborate.training import UPDATED
from ..errors import KilnError
from ..ir import Graph, Value
from ..passes.edit import copy_graph, remove_unused, replace_uses
from ..types import TensorType
from .optim import GraphKit, Optimizer, apply_updates

PARAM = "param:"  # the step input (and output) holding a parameter's value
GRADNORM = "gradnorm:"  # the step output holding a gradient's 2-norm
SCALAR = TensorType("f64", ())


@dataclasses.dataclass(frozen=True)
class StepLayout:
    """What the train step's inputs and outputs hold, by name (paths without the prefix)."""

    params: tuple[str, ...]  # every parameter and buffer, an input PARAM + path each
    trainable: tuple[str, ...]  # the parameters the step updates, in output order
    slots: tuple[str, ...]  # the optimizer's state slots per trainable parameter
    buffers: tuple[str, ...]  # the buffers whose new values are outputs UPDATED + path


def state_name(path: str, slot: str) -> str:
    """The name of a parameter's optimizer state (checkpoint key and step input/output)."""
    return f"optimizer.{path}.{slot}"


def select_trainable(paths: list[str], patterns: list[str] | None) -> list[str]:
    """The paths matching any of the glob `patterns` (None: all); a pattern matching no
    parameter is an error (K0833), as a typo would otherwise freeze everything silently."""
    if patterns is None:
        return list(paths)
    chosen = []
    for pattern in patterns:
        hits = [p for p in paths if fnmatch.fnmatchcase(p, pattern)]
        if not hits:
            raise KilnError("K0833", f"trainable pattern {pattern!r} matches no parameter",
                            hint=f"the model's parameters: {', '.join(paths) or 'none'}")
        chosen += [p for p in hits if p not in chosen]
    return [p for p in paths if p in chosen]


def build_train_step(model: ElaboratedModel, optimizer: Optimizer, prefix: str = "",
                     trainable: list[str] | None = None, clip_grad_norm: float | None = None,
                     l1: float = 0.0, l2: float = 0.0, penalized: list[str] | None = None
                     ) -> tuple[ElaboratedModel, StepLayout]:
    """The train step of `model` (output 0: the loss) as a model of its own (see the module's
    docstring); `model` is unchanged. `l1`, `l2`: penalties added to the loss, times the sum
    of |p| and of p^2 (std.losses' l1_penalty, l2_penalty) over the trainable parameters
    matching the glob patterns `penalized` (None: every trainable one)."""
    from ..autodiff import differentiable_params, loss_grad

    def short(path: str) -> str:
        return path[len(prefix):] if path.startswith(prefix) else path

    float_params = differentiable_params(model.graph)
    chosen = select_trainable([short(p) for p in float_params], trainable)
    wanted = [p for p in float_params if short(p) in chosen]
    forward = model.graph
    if l1 or l2:
        names = select_trainable(chosen, penalized)
        forward = _penalized(forward, [p for p in wanted if short(p) in names], l1, l2)
    graph, grads = loss_grad(forward, 0, wanted)
    gb = GraphBuilder(graph)
    values = _params_as_inputs(graph, short)
    kit = GraphKit(gb)
    lr = kit.wrap(graph.add_input("lr", SCALAR, None))
    step = kit.wrap(graph.add_input("step", SCALAR, None))
    slots = optimizer.slots()
    params, gradients, states = [], [], []
    for path in wanted:
        p = values[short(path)]
        params.append(kit.wrap(p))
        gradients.append(kit.wrap(graph.outputs[grads.param_output(path)]))
        states.append({s: kit.wrap(graph.add_input(state_name(short(path), s), p.type, None))
                       for s in slots})
    norms = [kit.sqrt(kit.sum_squares(g)) for g in gradients]
    new_params, new_states = apply_updates(optimizer, kit, params, gradients, states, lr, step,
                                           clip_grad_norm)
    outs: list[tuple[str, Value]] = [("loss", graph.outputs[0])]
    outs += [(PARAM + short(p), v.value) for p, v in zip(wanted, new_params)]
    outs += [(state_name(short(p), s), st[s].value) for p, st in zip(wanted, new_states)
             for s in slots]
    buffers = [(short(path), index) for path, index in model.updates.items()]
    outs += [(UPDATED + path, graph.outputs[index]) for path, index in buffers]
    outs += [(GRADNORM + short(p), n.value) for p, n in zip(wanted, norms)]
    graph.outputs = [v for _, v in outs]
    graph.output_names = [name for name, _ in outs]
    graph.prune()
    inputs = [Port(graph.node(n)["attrs"]["name"], graph.node(n)["types"][0])
              for n in graph.inputs]
    step_model = dataclasses.replace(
        model, name=f"{model.name}Step", graph=graph, inputs=inputs,
        outputs=[Port(name, v.type) for name, v in outs], params={}, aliases={},
        present=frozenset(), updates={}, training=True)
    layout = StepLayout(tuple(values), tuple(short(p) for p in wanted), slots,
                        tuple(p for p, _ in buffers))
    return step_model, layout


def _penalized(graph: Graph, paths: list[str], l1: float, l2: float) -> Graph:
    """A copy of `graph` whose output 0 (the loss) adds l1 * sum|p| + l2 * sum p^2 over the
    parameters `paths`."""
    graph = copy_graph(graph)
    kit = GraphKit(GraphBuilder(graph))
    loss = kit.wrap(graph.outputs[0])
    nodes = {graph.node(n)["attrs"]["path"]: n for n in graph.params()}
    for path in paths:
        p = kit.wrap(Value(nodes[path], 0, graph.node(nodes[path])["types"][0]))
        if l1:
            loss = loss + kit.to(kit.sum(kit.abs(p)) * l1, loss)
        if l2:
            loss = loss + kit.to(kit.sum_squares(p) * l2, loss)
    graph.outputs[0] = loss.value
    return graph


def _params_as_inputs(graph: Graph, short) -> dict[str, Value]:
    """Replace every `param` node of `graph` (its root; scan bodies capture from it) by an
    input PARAM + its short path, one per path; returns the inputs by short path."""
    inputs: dict[str, Value] = {}
    for nid in graph.params():
        node = graph.node(nid)
        path = short(node["attrs"]["path"])
        value = inputs.get(path)
        if value is None:
            value = inputs[path] = graph.add_input(PARAM + path, node["types"][0], node["span"])
        replace_uses(graph, Value(nid, 0, node["types"][0]), value)
        remove_unused(graph, [nid])
    return inputs


__all__ = ["GRADNORM", "PARAM", "StepLayout", "build_train_step", "select_trainable",
           "state_name"]
