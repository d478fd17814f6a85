"""Converters of ONNX's control flow: Scan and Loop (each a kiln `scan`) and If; and the node
a converter of an op with subgraphs sees, which can convert them (the importer's `subgraph`).

- Scan: its body becomes the scan's body graph; the outer values the body reads become the
  scan's captured inputs. Every scan input must run in one direction, and each output in the
  same one (kiln writes a reverse scan's outputs at their own steps' positions, as ONNX's
  direction 1 for both does); the outputs stack on the scan inputs' first axis.
- Loop: with a trip count known at import time and a condition only it decides, a kiln scan
  over the iteration numbers (the condition a carry the body passes on).
- If: a condition known at import time keeps its branch only; one known at run time computes
  both branches and selects each output with `where`, which needs both branches to give the
  same types (as kiln's own export of a scan, If(steps > 0, Scan, empty), does).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..builder import GraphBuilder
from ..ir import Value
from ..ops import REGISTRY
from ..types import TensorType
from .convert_base import (
    CONSTANT_NEEDED,
    OnnxNode,
    Unsupported,
    axis_of,
    converter_table,
    fold,
    ints,
    known,
    need,
)

CONVERTERS, converter = converter_table()


@dataclass
class NodeWithSubgraphs(OnnxNode):
    """An OnnxNode whose subgraphs the importer can convert: `subgraph(proto, input_types)`
    (importer.py `_Walk.subgraph`); None where nothing can (a node built without it).
    `scope(values, consts)` gives the `subgraph` of a scope holding those names (a function
    body's, convert_function.py) around the node's graph."""

    subgraph: Callable[..., Any] | None = None
    scope: Callable[..., Any] | None = None


def add_scan(gb: GraphBuilder, operands: list[Value], attrs: dict) -> list[Value]:
    """A `scan` node (its attributes are a body graph and counts, not a signature's: added as
    the elaborator adds it): the emitted values stacked, then each carry's final value."""
    types = REGISTRY["scan"].infer([v.type for v in operands], attrs)
    return gb.graph.add("scan", operands, attrs, types, gb.span, gb.scope)


def _subgraph(node: OnnxNode):
    convert = getattr(node, "subgraph", None)
    if convert is None:
        raise Unsupported("its subgraphs can only be converted by the importer")
    return convert


def _one(values: list[int], what: str) -> int:
    if len(set(values)) > 1:
        raise Unsupported(f"{what} differ ({values}): kiln scans every sequence one way")
    return values[0] if values else 0


@converter("Scan")
def _scan(gb, node):
    body = node.attrs["body"]
    m = int(node.attrs["num_scan_inputs"])
    n = len(node.inputs) - m
    states, seqs = node.inputs[:n], node.inputs[n:]
    if any(v is None for v in node.inputs) or m < 1:
        raise Unsupported("Scan needs every state and at least one scan input")
    k = len(body.output) - n
    in_axes = [axis_of(a, s.type.rank, "scan_input_axes")
               for a, s in zip(ints(node, "scan_input_axes", [0] * m), seqs)]
    direction = _one(ints(node, "scan_input_directions", [0] * m), "scan_input_directions")
    if k and _one(ints(node, "scan_output_directions", [0] * k),
                  "scan_output_directions") != direction:
        raise Unsupported("scan outputs in another direction than the inputs")
    out_axes = ints(node, "scan_output_axes", [0] * k)
    axis = in_axes[0]
    if k:
        ranks = [len(o.type.tensor_type.shape.dim) for o in body.output[n:]]
        given = {axis_of(a, r + 1, "scan_output_axes") if r else a
                 for a, r in zip(out_axes, ranks)}
        if given != {axis}:
            raise Unsupported(f"scan_output_axes {out_axes} differ from the first input's "
                              f"axis {axis}")
    steps = [s.type.with_shape(s.type.shape[:a] + s.type.shape[a + 1:])
             for s, a in zip(seqs, in_axes)]
    outputs, graph, captured = _subgraph(node)(body, [s.type for s in states] + steps)
    for state, out in zip(states, outputs[:n]):
        if state.type != out.type:
            raise Unsupported(f"a state starts as {state.type} and its body makes it "
                              f"{out.type}")
    attrs = {"body": graph, "axis": axis, "axes": tuple(in_axes), "reverse": direction == 1,
             "n_carry": n, "n_seq": m, "has_index": False, "n_fixed_inputs": n + m}
    results = add_scan(gb, [*states, *seqs, *captured], attrs)
    return results[k:] + results[:k]  # ONNX gives the final states first, kiln the emits


@converter("Loop")
def _loop(gb, node):
    """A Loop whose trip count kiln knows at import time and whose condition only the trip
    count decides (absent or true, and the body passes it on unchanged or makes it true) is
    a kiln scan over the iteration numbers 0..M-1: the condition rides along as a carry, the
    loop-carried values follow it, and the body's scan outputs are its emits (stacked on a
    new first axis, as ONNX stacks them)."""
    trip = known(gb, node, 0)
    if trip is None:
        raise Unsupported("Loop's trip count (input 0) must be a constant (kiln runs a scan "
                          f"of a length fixed at import time): {CONSTANT_NEEDED}")
    steps = max(int(trip.reshape(-1)[0]), 0)
    if steps > MAX_LOOP_STEPS:
        raise Unsupported(f"Loop of {steps} iterations: kiln takes at most {MAX_LOOP_STEPS:,} "
                          "(its iteration numbers are a constant of that length)")
    if node.inputs[1:2] not in ([], [None]):
        cond = known(gb, node, 1)
        if cond is None:
            raise Unsupported("Loop's condition (input 1) must be a constant (kiln runs a scan "
                              f"of a length fixed at import time): {CONSTANT_NEEDED}")
        steps = steps if bool(cond.reshape(-1)[0]) else 0
    carried = node.inputs[2:]
    if any(v is None for v in carried):
        raise Unsupported("Loop with an absent loop-carried input")
    body = node.attrs["body"]
    n = len(carried)
    scalar = TensorType("i64", ())
    outputs, graph, captured = _subgraph(node)(
        body, [scalar, TensorType("bool", ()), *[v.type for v in carried]])
    iteration, cond_in = graph.inputs[:2]
    cond_out = outputs[0]
    if cond_out.type.dtype != "bool" or any(d != 1 for d in cond_out.type.shape):
        raise Unsupported(f"Loop whose body gives a condition of type {cond_out.type}")
    if not (cond_out.node == cond_in or _all_true(fold(graph, cond_out))):
        raise Unsupported("Loop whose body computes its condition: kiln runs a scan of a "
                          "length fixed at import time, so only the trip count may end it")
    for start, out in zip(carried, outputs[1:n + 1]):
        if start.type != out.type:
            raise Unsupported(f"a loop-carried value starts as {start.type} and its body "
                              f"makes it {out.type}")
    if cond_out.type.rank:  # a carry keeps its type: the condition enters as a scalar
        outputs[0] = GraphBuilder(graph, gb.span, gb.scope).reshape(cond_out, [])
    graph.inputs = [cond_in, *graph.inputs[2:n + 2], iteration, *graph.inputs[n + 2:]]
    graph.outputs = outputs
    iterations = gb.constant(np.arange(steps, dtype=np.int64))
    attrs = {"body": graph, "axis": 0, "axes": (0,), "reverse": False, "n_carry": n + 1,
             "n_seq": 1, "has_index": False, "n_fixed_inputs": n + 2}
    results = add_scan(gb, [gb.constant(np.array(True)), *carried, iterations, *captured],
                       attrs)
    k = len(outputs) - n - 1
    return results[k + 1:] + results[:k]  # ONNX: the final carries, then the scan outputs


MAX_LOOP_STEPS = 1 << 20  # a Loop's iteration numbers are a constant: bounded as one


def _all_true(value) -> bool:
    return value is not None and bool(np.all(value))


@converter("If")
def _if(gb, node):
    cond = need(node, 0, "cond")
    convert = _subgraph(node)
    value = known(gb, node, 0)
    if value is not None:  # decided now: the other branch is never built
        then_branch, else_branch = node.attrs["then_branch"], node.attrs["else_branch"]
        return convert(then_branch if bool(value.reshape(-1)[0]) else else_branch, None)[0]
    then_outs = convert(node.attrs["then_branch"], None)[0]
    else_outs = convert(node.attrs["else_branch"], None)[0]
    if cond.type.rank and any(d != 1 for d in cond.type.shape):
        raise Unsupported(f"a condition of shape {cond.type} (kiln takes one value)")
    if cond.type.dtype != "bool":
        raise Unsupported(f"a condition of element type {cond.type.dtype}")
    cond = gb.reshape(cond, []) if cond.type.rank else cond
    outs = []
    for a, b in zip(then_outs, else_outs):
        if a.type != b.type:
            raise Unsupported(f"branches of types {a.type} and {b.type}, with a condition "
                              "known only at run time (kiln computes both and selects)")
        outs.append(gb.op("where", cond, a, b))
    return outs
