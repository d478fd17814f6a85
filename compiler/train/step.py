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
  training mode's running statistics) and `gradsum:<path>` (the sum of each gradient's
  elements, before clipping: finite exactly when every element is, short of a sum past f32's
  range; the trainer names the first non-finite one when the loss is not finite. One
  reduction per parameter, where a 2-norm took a product and a reduction: 7 % of an MLP's
  step).

Compiled like any model (driver.Compilation), it runs as one native call per step.

Data-parallel training (kiln/train/distributed.py) must average the gradients of the workers
before the update, so it takes the same step as two graphs built from the same pieces:

    grad_model, layout = build_grad_step(loss_model, prefix="net.")     # loss, grad:<path>,
                                                                        # updated:<path>
    update_model, _ = build_update_step(grad_model, layout, optimizer)  # param:, optimizer.,
                                                                        # gradsum:
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
GRADSUM = "gradsum:"  # the step output holding the sum of a gradient's elements
GRAD = "grad:"  # the grad step's output (the update step's input) holding a gradient
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
    graph, values, gradients, buffers = _gradient_graph(model, prefix, trainable, l1, l2,
                                                        penalized)
    outs = [("loss", graph.outputs[0])]
    new_params, new_states, sums = _add_update(graph, optimizer, values, gradients,
                                                clip_grad_norm)
    outs += new_params + new_states + buffers + sums
    return _step_model(model, f"{model.name}Step", graph, outs), StepLayout(
        tuple(values), tuple(gradients), optimizer.slots(), tuple(buffers_of(buffers)))


def build_grad_step(model: ElaboratedModel, prefix: str = "",
                    trainable: list[str] | None = None, l1: float = 0.0, l2: float = 0.0,
                    penalized: list[str] | None = None) -> tuple[ElaboratedModel, StepLayout]:
    """The first half of the train step, for data parallelism: the same inputs but the
    optimizer's, and as outputs `loss`, `grad:<path>` (each trainable parameter's gradient)
    and `updated:<path>` (each buffer's new value). Arguments as build_train_step's."""
    graph, values, gradients, buffers = _gradient_graph(model, prefix, trainable, l1, l2,
                                                        penalized)
    outs = [("loss", graph.outputs[0])]
    outs += [(GRAD + path, g) for path, g in gradients.items()]
    outs += buffers
    return _step_model(model, f"{model.name}Grad", graph, outs), StepLayout(
        tuple(values), tuple(gradients), (), tuple(buffers_of(buffers)))


def build_update_step(model: ElaboratedModel, grad_layout: StepLayout, optimizer: Optimizer,
                      clip_grad_norm: float | None = None) -> tuple[ElaboratedModel, StepLayout]:
    """The second half of the train step: inputs `param:<path>` and `grad:<path>` of each
    trainable parameter of `grad_layout`, the optimizer's state, `lr` and `step`; outputs as
    the train step's, less `loss` and the buffers. `model`: the grad step build_grad_step
    made (it gives the parameters' types)."""
    types = {p.name: p.type for p in model.inputs}
    graph = Graph()
    values = {path: graph.add_input(PARAM + path, types[PARAM + path], None)
              for path in grad_layout.trainable}
    gradients = {path: graph.add_input(GRAD + path, types[PARAM + path], None)
                 for path in grad_layout.trainable}
    new_params, new_states, sums = _add_update(graph, optimizer, values, gradients,
                                                clip_grad_norm)
    step_model = _step_model(model, f"{model.name}Update", graph,
                             new_params + new_states + sums)
    # parameters have fixed shapes: the update takes no batch size
    layout = dataclasses.replace(grad_layout, params=grad_layout.trainable,
                                 slots=optimizer.slots(), buffers=())
    return dataclasses.replace(step_model, symbols=[]), layout


def buffers_of(outputs: list[tuple[str, Value]]) -> list[str]:
    """The buffer paths of `updated:<path>` outputs."""
    return [name[len(UPDATED):] for name, _ in outputs]


def _gradient_graph(model: ElaboratedModel, prefix: str, trainable: list[str] | None,
                    l1: float, l2: float, penalized: list[str] | None
                    ) -> tuple[Graph, dict[str, Value], dict[str, Value],
                               list[tuple[str, Value]]]:
    """The loss's graph with its gradients and every parameter as an input: (graph, the
    parameter inputs by short path, the trainable ones' gradients by short path, the
    buffers' new values as `updated:<path>` outputs)."""
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
    values = _params_as_inputs(graph, short)
    gradients = {short(p): graph.outputs[grads.param_output(p)] for p in wanted}
    buffers = [(UPDATED + short(path), graph.outputs[index])
               for path, index in model.updates.items()]
    return graph, values, gradients, buffers


def _add_update(graph: Graph, optimizer: Optimizer, values: dict[str, Value],
                gradients: dict[str, Value], clip_grad_norm: float | None
                ) -> tuple[list, list, list]:
    """Add the optimizer's update of the parameters `gradients` names to `graph`, with inputs
    `lr`, `step` and the state; returns the outputs (name, Value) of the new parameters, the
    new state and the gradients' sums (finiteness witnesses)."""
    kit = GraphKit(GraphBuilder(graph))
    lr = kit.wrap(graph.add_input("lr", SCALAR, None))
    step = kit.wrap(graph.add_input("step", SCALAR, None))
    slots = optimizer.slots()
    paths = list(gradients)
    params = [kit.wrap(values[path]) for path in paths]
    grads = [kit.wrap(gradients[path]) for path in paths]
    states = [{s: kit.wrap(graph.add_input(state_name(path, s), values[path].type, None))
               for s in slots} for path in paths]
    sums = [kit.sum(g) for g in grads]
    new_params, new_states = apply_updates(optimizer, kit, params, grads, states, lr, step,
                                           clip_grad_norm)
    return ([(PARAM + p, v.value) for p, v in zip(paths, new_params)],
            [(state_name(p, s), st[s].value) for p, st in zip(paths, new_states)
             for s in slots],
            [(GRADSUM + p, n.value) for p, n in zip(paths, sums)])


def _step_model(model: ElaboratedModel, name: str, graph: Graph,
                outs: list[tuple[str, Value]]) -> ElaboratedModel:
    """`graph` with the outputs `outs`, pruned, as a model of its own (inputs, no params)."""
    graph.outputs = [v for _, v in outs]
    graph.output_names = [n for n, _ in outs]
    graph.prune()
    inputs = [Port(graph.node(n)["attrs"]["name"], graph.node(n)["types"][0])
              for n in graph.inputs]
    return dataclasses.replace(
        model, name=name, graph=graph, inputs=inputs,
        outputs=[Port(n, v.type) for n, v in outs], params={}, aliases={},
        present=frozenset(), updates={}, training=True)


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


__all__ = ["GRAD", "GRADSUM", "PARAM", "StepLayout", "build_grad_step", "build_train_step",
           "build_update_step", "buffers_of", "select_trainable", "state_name"]
