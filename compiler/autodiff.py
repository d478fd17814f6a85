"""Reverse mode on the graph IR: a graph's vector-Jacobian product as a new graph.

    graph2, layout = grad(graph, wrt_params=["fc.weight"], wrt_inputs=["x"])
    # graph2: inputs  = graph's inputs + one cotangent per float output (layout.cotangents)
    #         outputs = graph's outputs + d sum(outputs * cotangents) / d fc.weight, / d x

    graph2, layout = loss_grad(graph, loss=0, wrt_params=["fc.weight", "fc.bias"])
    # the train step's form: output 0 is a 0-d loss, its cotangent is 1 (no cotangent input);
    # outputs = graph's outputs + d loss / d each parameter

The transform walks the forward nodes in reverse topological order, keeping one cotangent
per Value (a Value used several times gets the sum of what each use sends back) and calling
each op record's `vjp` rule (compiler/ops/registry.py: OpRecord.vjp) with a GraphBuilder that
gives the new nodes the forward node's span and scope. Only nodes on a path from a wanted
parameter or input to a seeded output are differentiated, and integer or bool values never
take a gradient, so an argmax or an index computation beside the differentiated path needs no
rule. A gradient that must flow through an op without a rule is a KilnError (K0801) naming
the op, pointing at its source, and naming the parameter or input that needed it. A wanted
parameter or input that no gradient reaches gets zeros of its type.

Parameters stay `param` nodes (attrs["path"]) in the new graph: forward and backward read
the same values, and whoever compiles the graph decides how parameters reach it (folded as
constants, bound by the native runtime, or made inputs of a train step by rewriting the
`param` nodes it updates). The argument graph is never changed; the new graph shares its node
ids for the forward part, so forward Values the rules reuse are the forward's own results.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import networkx as nx
import numpy as np

from .builder import GraphBuilder
from .dims import assuming
from .errors import KilnError
from .ir import STRUCTURAL_OPS, Graph, IRError, Value
from .ops import REGISTRY, VjpNode
from .ops._grad import is_float
from .passes.edit import copy_graph
from .types import NUMPY_DTYPES

COTANGENT_PREFIX = "cotangent:"  # the input holding the cotangent of output `name`
GRADIENT_PREFIX = "grad:"  # the output holding the gradient of parameter or input `name`


@dataclass(frozen=True)
class GradLayout:
    """Where a gradient graph puts what.

    The graph's outputs are the original `outputs` outputs, then one gradient per entry of
    `params` (parameter paths), then one per entry of `inputs` (input names). Its inputs are
    the original inputs, then one cotangent input per entry of `cotangents` that is not None
    (the cotangent input's name, by original output; None for an integer or bool output, which
    takes none, and for every output of a loss_grad graph, whose seed is a constant)."""

    outputs: int
    cotangents: tuple[str | None, ...]
    params: tuple[str, ...]
    inputs: tuple[str, ...]

    def param_output(self, path: str) -> int:
        """The output index of parameter `path`'s gradient."""
        return self.outputs + self.params.index(path)

    def input_output(self, name: str) -> int:
        """The output index of input `name`'s gradient."""
        return self.outputs + len(self.params) + self.inputs.index(name)


def differentiable_params(graph: Graph) -> list[str]:
    """The paths of the graph's trainable parameters: `param` nodes of kind "param" (not
    buffers such as running statistics) of a floating-point dtype, in graph order."""
    paths = []
    for nid in graph.order():
        node = graph.node(nid)
        if (node["op"] == "param" and node["attrs"].get("kind", "param") == "param"
                and is_float(node["types"][0]) and node["attrs"]["path"] not in paths):
            paths.append(node["attrs"]["path"])
    return paths


def differentiable_inputs(graph: Graph) -> list[str]:
    """The names of the graph's floating-point inputs, in signature order."""
    return [graph.node(n)["attrs"]["name"] for n in graph.inputs
            if is_float(graph.node(n)["types"][0])]


def grad(graph: Graph, wrt_params: Iterable[str] | None = None,
         wrt_inputs: Iterable[str] = ()) -> tuple[Graph, GradLayout]:
    """The graph computing `graph`'s outputs and the gradient of sum(outputs * cotangents)
    with respect to parameters `wrt_params` (paths; default: every differentiable one) and
    inputs `wrt_inputs` (names of float inputs), given one cotangent input per float output.
    `graph` is unchanged."""
    new = copy_graph(graph)
    names = _output_names(graph)
    seeds: list[tuple[Value, Value]] = []
    cotangents: list[str | None] = []
    for value, name in zip(graph.outputs, names, strict=True):
        if not is_float(value):
            cotangents.append(None)
            continue
        node = graph.node(value.node)
        seed = new.add_input(COTANGENT_PREFIX + name, value.type, node["span"])
        seeds.append((value, seed))
        cotangents.append(COTANGENT_PREFIX + name)
    return _reverse(graph, new, seeds, wrt_params, wrt_inputs, tuple(cotangents))


def loss_grad(graph: Graph, loss: int = 0, wrt_params: Iterable[str] | None = None,
              wrt_inputs: Iterable[str] = ()) -> tuple[Graph, GradLayout]:
    """The graph computing `graph`'s outputs and the gradient of output `loss` (a 0-d float
    tensor) with respect to parameters `wrt_params` (default: every differentiable one) and
    inputs `wrt_inputs`: the cotangent is 1, so the graph has no cotangent input. Parameters
    stay `param` nodes (see the module's docstring). `graph` is unchanged."""
    if not 0 <= loss < len(graph.outputs):
        raise KilnError("K0802", f"the loss is output {loss}, but the model has "
                        f"{len(graph.outputs)} outputs")
    value = graph.outputs[loss]
    node = graph.node(value.node)
    if value.type.rank != 0 or not is_float(value):
        raise KilnError("K0802", f"the loss must be a 0-d float tensor, but output {loss} is "
                        f"{value.type}", node["span"],
                        hint="reduce it to one number, e.g. with mean(...)")
    new = copy_graph(graph)
    one = GraphBuilder.like(new, node).constant(
        np.ones((), NUMPY_DTYPES[value.type.dtype]))
    cotangents = (None,) * len(graph.outputs)
    return _reverse(graph, new, [(value, one)], wrt_params, wrt_inputs, cotangents)


def _output_names(graph: Graph) -> list[str]:
    names = list(graph.output_names)
    return names + [f"out{i}" for i in range(len(names), len(graph.outputs))]


def _reverse(graph: Graph, new: Graph, seeds: list[tuple[Value, Value]],
             wrt_params: Iterable[str] | None, wrt_inputs: Iterable[str],
             cotangents: tuple[str | None, ...]) -> tuple[Graph, GradLayout]:
    """Add to `new` (a copy of `graph`, with the seeds' inputs added) the backward nodes, and
    make its outputs the forward outputs then the wanted gradients. The rules build their
    nodes under the model's `where` facts, as the forward's shapes were checked (the
    gradient of a reshape to [H // 2, 2] is a reshape back to [H], given H % 2 == 0)."""
    with assuming(graph.size_facts()):
        return _reverse_under_facts(graph, new, seeds, wrt_params, wrt_inputs, cotangents)


def _reverse_under_facts(graph: Graph, new: Graph, seeds: list[tuple[Value, Value]],
                         wrt_params: Iterable[str] | None, wrt_inputs: Iterable[str],
                         cotangents: tuple[str | None, ...]) -> tuple[Graph, GradLayout]:
    params = _param_nodes(graph, wrt_params)
    inputs = _input_nodes(graph, wrt_inputs)
    targets = {nid: f"parameter {path}" for path, nids in params.items() for nid in nids}
    targets.update({nid: f"input {name}" for name, nid in inputs.items()})
    relevant = _between(graph, targets, [v.node for v, _ in seeds])
    grads = _Cotangents(new)
    for value, seed in seeds:
        grads.add(value, seed, GraphBuilder(new))
    for nid in reversed(graph.order()):
        if nid in relevant and graph.op(nid) not in STRUCTURAL_OPS:
            _backward(new, nid, grads, relevant, targets)
    # the forward outputs as `new` has them now: a rule may have moved one to a node that
    # computes it too (scan's rule: the scan that also saves its carries)
    outs = list(new.outputs[:len(graph.outputs)])
    for nids in params.values():
        outs.append(grads.total([Value(n, 0, graph.node(n)["types"][0]) for n in nids]))
    for nid in inputs.values():
        outs.append(grads.total([Value(nid, 0, graph.node(nid)["types"][0])]))
    new.outputs = outs
    new.output_names = (_output_names(graph) + [GRADIENT_PREFIX + p for p in params]
                        + [GRADIENT_PREFIX + n for n in inputs])
    new.prune()
    return new, GradLayout(len(graph.outputs), cotangents, tuple(params), tuple(inputs))


def _param_nodes(graph: Graph, wanted: Iterable[str] | None) -> dict[str, list[int]]:
    """Each wanted parameter path's `param` nodes (a K0803 for a path the graph lacks or one
    that cannot take a gradient)."""
    available = differentiable_params(graph)
    paths = available if wanted is None else list(dict.fromkeys(wanted))
    out: dict[str, list[int]] = {p: [] for p in paths}
    for path in paths:
        if path not in available:
            raise KilnError("K0803", f"no gradient for {path}: it is not a floating-point "
                            "parameter of the model (buffers and integer parameters take none)",
                            hint=f"its parameters: {', '.join(available) or 'none'}")
    for nid in graph.params():
        path = graph.node(nid)["attrs"]["path"]
        if path in out:
            out[path].append(nid)
    return out


def _input_nodes(graph: Graph, wanted: Iterable[str]) -> dict[str, int]:
    """Each wanted input's node (a K0803 for a name the graph lacks or a non-float input)."""
    by_name = {graph.node(n)["attrs"]["name"]: n for n in graph.inputs}
    available = differentiable_inputs(graph)
    out = {}
    for name in dict.fromkeys(wanted):
        if name not in available:
            raise KilnError("K0803", f"no gradient for input {name}: it is not a "
                            "floating-point input of the model",
                            hint=f"its float inputs: {', '.join(available) or 'none'}")
        out[name] = by_name[name]
    return out


def _between(graph: Graph, sources: Iterable[int], sinks: Sequence[int]) -> set[int]:
    """The nodes on some path from a source to a sink (both included)."""
    below: set[int] = set()
    for s in sources:
        if s not in below:
            below |= nx.descendants(graph.g, s) | {s}
    above: set[int] = set(sinks)
    for s in sinks:
        above |= nx.ancestors(graph.g, s)
    return below & above


class _Cotangents:
    """The cotangent of each Value so far: uses add up."""

    def __init__(self, graph: Graph):
        self.graph = graph
        self.of: dict[Value, Value] = {}

    def add(self, value: Value, ct: Value, gb: GraphBuilder) -> None:
        if ct.type != value.type:
            raise IRError(f"a cotangent of type {ct.type} for a value of type {value.type}")
        old = self.of.get(value)
        self.of[value] = ct if old is None else gb.add(old, ct)

    def get(self, value: Value) -> Value | None:
        return self.of.get(value)

    def total(self, values: list[Value]) -> Value:
        """The summed cotangents of `values` (the `param` nodes of one path, or one input's
        node: never none), or zeros of their type where no gradient reached them."""
        t = values[0].type
        gb = GraphBuilder(self.graph, self.graph.node(values[0].node)["span"])
        cts = [self.of[v] for v in values if v in self.of]
        if not cts:
            return gb.op("zeros", shape=list(t.shape), dtype=t.dtype)
        total = cts[0]
        for ct in cts[1:]:
            total = gb.add(total, ct)
        return total


def _backward(new: Graph, nid: int, grads: _Cotangents, relevant: set[int],
              targets: dict[int, str]) -> None:
    """Send node `nid`'s cotangents back to its operands through its op's rule."""
    node = new.node(nid)
    outs = [Value(nid, i, t) for i, t in enumerate(node["types"])]
    out_cts = [grads.get(v) if is_float(v) else None for v in outs]
    if all(ct is None for ct in out_cts):
        return
    operands = new.operands(nid)
    needed = [v is not None and v.node in relevant and is_float(v) for v in operands]
    if not any(needed):
        return
    record = REGISTRY.get(node["op"])
    if record is None or record.vjp is None:
        raise _not_differentiable(new, nid, targets)
    gb = GraphBuilder.like(new, node)
    gb.differentiate = grad  # for rules of ops holding a body graph (scan)
    results = record.vjp(gb, VjpNode(node["op"], tuple(operands), tuple(outs),
                                     dict(node["attrs"])), out_cts)
    if len(results) != len(operands):
        raise IRError(f"{node['op']}: its rule gave {len(results)} gradients for "
                      f"{len(operands)} inputs")
    for value, g, need in zip(operands, results, needed, strict=True):
        if need and g is not None:
            grads.add(value, g, gb)


def _not_differentiable(graph: Graph, nid: int, targets: dict[int, str]) -> KilnError:
    """K0801: a gradient must flow through node `nid`, whose op has no rule."""
    node = graph.node(nid)
    above = nx.ancestors(graph.g, nid)
    needs = [what for t, what in targets.items() if t in above]
    return KilnError("K0801", f"cannot differentiate through {node['op']}: the gradient of "
                     f"{needs[0]} flows through it, and {node['op']} has no gradient rule",
                     node["span"], hint="leave that parameter out of the gradient "
                     "(wrt_params / trainable=), or compute the value without this op")


__all__ = ["COTANGENT_PREFIX", "GRADIENT_PREFIX", "GradLayout", "differentiable_inputs",
           "differentiable_params", "grad", "loss_grad"]
