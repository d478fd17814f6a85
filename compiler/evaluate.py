"""The graph interpreter: runs a Graph with each op record's numpy reference.

It is the oracle for every backend and the engine of constant folding. Values are freed after
their last use, so a ResNet-sized model runs in bounded memory.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from .dims import Dim
from .errors import KilnError
from .ir import Graph, GraphVisitor
from .ops import REGISTRY, OpError


class GraphEnv:
    """What reference implementations may ask for: sizes of symbols and nested graph runs."""

    def __init__(self, params: dict[str, np.ndarray], dims: dict[str, int]):
        self.params = params
        self.dims = dims

    def eval_dim(self, d: Dim | int) -> int:
        return Dim.of(d).evaluate(self.dims)

    def run_graph(self, graph: Graph, inputs: list) -> list[np.ndarray]:
        return run_graph(graph, inputs, self.params, self.dims)


class ConstEnv(GraphEnv):
    """The environment for folding constants: no parameters, no symbols."""

    def __init__(self):
        super().__init__({}, {})


def run_graph(
    graph: Graph, inputs: list, params: dict[str, np.ndarray], dims: dict[str, int]
) -> list[np.ndarray]:
    """Evaluate `graph` on `inputs` (one array, or None, per graph input)."""
    run = _Run(graph, inputs, params, dims)
    for nid in graph.order():
        for i, r in enumerate(run.visit(graph, nid)):
            if run.uses[(nid, i)] > 0:
                run.values[(nid, i)] = r
    return [run.values[(o.node, o.index)] for o in graph.outputs]


class _Run(GraphVisitor):
    """The results of each node of one graph's run: an op's by its record's reference (a
    scan's and a fused group's too: they run their body graphs)."""

    def __init__(self, graph: Graph, inputs: list, params: dict[str, np.ndarray],
                 dims: dict[str, int]):
        self.env = GraphEnv(params, dims)
        self.feed = dict(zip(graph.inputs, inputs, strict=False))
        self.values: dict[tuple[int, int], np.ndarray] = {}
        # the readers left of each value (an output is read once more): freed after the last
        self.uses = Counter((u, d["src"]) for u, _v, d in graph.g.edges(data=True))
        for out in graph.outputs:
            self.uses[(out.node, out.index)] += 1

    def visit_input(self, graph: Graph, nid: int, node: dict) -> list:
        return [self.feed[nid]]

    def visit_param(self, graph: Graph, nid: int, node: dict) -> list:
        return [self.env.params[node["attrs"]["path"]]]

    def visit_constant(self, graph: Graph, nid: int, node: dict) -> list:
        return [node["attrs"]["value"]]

    def visit_op(self, graph: Graph, nid: int, node: dict) -> list:
        args = []
        for v in graph.operands(nid):
            if v is None:
                args.append(None)
                continue
            key = (v.node, v.index)
            args.append(self.values[key])
            self.uses[key] -= 1
            if self.uses[key] == 0:
                del self.values[key]
        return _run_op(node["op"], self.env, args, node)


def _run_op(op: str, env: GraphEnv, args: list, node: dict) -> list[np.ndarray]:
    """One op's reference; a failure that depends on input values is a located K0505.

    Every result is checked against the type inferred at compile time: a size that an op took
    on trust (a symbolic slice bound, say) and that these inputs make wrong is an error, not a
    silently different shape.
    """
    try:
        with np.errstate(all="ignore"):  # overflow to inf and the like follow IEEE, as PyTorch
            results = REGISTRY[op].reference(env, args, node["attrs"])
    except OpError as err:
        raise KilnError("K0505", f"{op}: {err.message}", node["span"]) from None
    except (IndexError, ValueError, FloatingPointError) as exc:
        raise KilnError("K0505", f"{op} failed on these inputs: {exc}", node["span"]) from None
    except MemoryError:
        raise KilnError("K0505", f"{op}: out of memory for its result on these inputs",
                        node["span"], hint="call the model with smaller inputs") from None
    for result, t in zip(results, node["types"], strict=True):
        want = tuple(env.eval_dim(d) for d in t.shape)
        if tuple(result.shape) != want:
            shown = ", ".join(f"{d} = {n}" if not d.is_const else str(n)
                              for d, n in zip(t.shape, want, strict=True))
            raise KilnError(
                "K0505", f"{op}: with these inputs the result has shape {list(result.shape)}, "
                f"not [{shown}] as its type says", node["span"],
                hint="a size in this expression is out of range for these inputs",
            )
    return results
