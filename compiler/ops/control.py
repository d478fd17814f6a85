"""Ops that hold a body graph: `scan`, a loop over one axis of its sequences with carried
state, and `fused`, a group of ops one kernel computes.

Their records give the shape rule and the reference; each backend lowers them itself, beside
its walk over a graph (codegen/onnx.py: Scan and the body's ops inline; codegen/llvm/module.py:
a loop function, and one kernel made by codegen/llvm/fused.py), since what a body means is the
backend's business.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import networkx as nx
import numpy as np

from ..errors import KilnError
from ..ir import Graph, IRError, Value
from ._common import FLOATS
from .registry import REGISTRY, Arg, OpRecord, Prop, internal, register


def _scan_infer(types, attrs):
    """Outputs: each emitted value stacked on the scan axis, then each carry's final value."""
    body = attrs["body"]
    n_carry = attrs["n_carry"]
    n_seq = attrs["n_seq"]
    length = types[n_carry].shape[attrs["axes"][0]]
    outs = [o.type for o in body.outputs]
    carries, emits = outs[:n_carry], outs[n_carry:]
    axis = attrs["axis"]
    stacked = [t.with_shape(t.shape[:axis] + (length,) + t.shape[axis:]) for t in emits]
    del n_seq
    return stacked + carries


def _scan_reference(env, inputs, attrs):
    body = attrs["body"]
    n_carry, n_seq, axes = attrs["n_carry"], attrs["n_seq"], attrs["axes"]
    carries = list(inputs[:n_carry])
    seqs = inputs[n_carry:n_carry + n_seq]
    captured = inputs[n_carry + n_seq:]
    length = seqs[0].shape[axes[0]]
    steps = range(length - 1, -1, -1) if attrs["reverse"] else range(length)
    emitted: list[list] = []
    for t in steps:
        step_inputs = carries + [np.take(s, t, axis=a) for s, a in zip(seqs, axes, strict=False)]
        if attrs["has_index"]:
            step_inputs.append(np.asarray(t, dtype=np.int64))
        outs = env.run_graph(body, step_inputs + list(captured))
        carries = outs[:n_carry]
        emitted.append(outs[n_carry:])
    if attrs["reverse"]:
        emitted.reverse()  # each emitted value lands at its own step's position
    axis = attrs["axis"]
    stacked = []
    for k, t in enumerate(o.type for o in body.outputs[n_carry:]):
        if emitted:
            stacked.append(np.stack([e[k] for e in emitted], axis=axis))
        else:
            shape = [env.eval_dim(d) for d in t.shape]
            shape.insert(axis, 0)
            stacked.append(np.zeros(shape, dtype=t.np_dtype))
    return stacked + carries


def _scan_vjp(gb, node, cts):
    """Backpropagation through time: a reverse scan whose body is the VJP of the forward body.

    A scan of carries C, sequences S and captured values K, whose body maps (c, s_t, [t], k)
    to (c', e_t), gives the gradient of sum(E * dE) + sum(C_final * dC) as:

        saved = the carry entering each step, emitted by a copy of the scan (`_saving`)
        reverse scan, steps in the other order, over (saved, S, dE), carrying (dc, dk):
            dc_in, ds_t, dk_t = VJP of the body at (saved_t, s_t, [t], k), cotangents (dc, de_t)
            dc = dc_in;  dk = dk + dk_t;  emit ds_t
        -> dC = the final dc, dS = the emitted ds (on each sequence's axis), dK = the final dk

    The body's VJP is the reverse-mode transform (compiler/autodiff.py, given by the builder as
    `gb.differentiate`) applied to the body; it recomputes the step's forward values from the
    saved carry. Captured weights' gradients accumulate as carries. Only float values take
    gradients; a body's parameters are captured values (the elaborator reads them outside)."""
    a = node.attrs
    body: Graph = a["body"]
    n_carry, n_seq = a["n_carry"], a["n_seq"]
    n_emit = len(body.outputs) - n_carry
    carries, seqs = node.inputs[:n_carry], node.inputs[n_carry:n_carry + n_seq]
    captured = node.inputs[n_carry + n_seq:]
    emit_cts, carry_cts = list(cts[:n_emit]), list(cts[n_emit:])
    if all(ct is None for ct in cts):
        return [None] * len(node.inputs)
    if gb.differentiate is None or body.params():
        raise IRError("scan: differentiating a scan needs the reverse-mode transform "
                      "(gb.differentiate), and a body that captures its parameters")
    short = next((v for v in carries if v.type.rank < a["axis"]), None)
    if short is not None:  # the saved carries stack on the scan's axis, as its emits
        raise KilnError("K0822", f"cannot differentiate a scan over axis {a['axis']} that "
                        f"carries a value of {short.type.rank} axes ({short.type}): the "
                        "carries saved for the backward pass stack on the scan's axis",
                        gb.span, hint="scan over axis 0, or carry values of at least "
                        f"{a['axis']} axes")
    float_c = [j for j, v in enumerate(carries) if _is_float(v)]
    float_s = [j for j, v in enumerate(seqs) if _is_float(v)]
    float_k = [j for j, v in enumerate(captured) if _is_float(v)]
    float_e = [j for j, v in enumerate(body.outputs[n_carry:]) if _is_float(v)]
    axis = a["axis"]
    seq_axes = (axis,) * n_carry + tuple(a["axes"]) + (axis,) * len(float_e)
    backward = _backward_body(gb, a, float_c, float_s, float_k, float_e, seq_axes)

    n_products = len(backward.products)
    saving = _add_scan(gb, node.inputs, {**a, "body": _saving(body, n_carry,
                                                               backward.products)})
    n_saved = n_emit + n_carry + n_products
    _take_over(gb.graph, node.outputs, saving[:n_emit] + saving[n_saved:])
    saved = saving[n_emit:n_emit + n_carry]
    starts = ([_or_zeros(gb, carry_cts[j], carries[j].type) for j in float_c]
              + [_or_zeros(gb, None, captured[j].type) for j in backward.accumulated])
    stacked_e = [_or_zeros(gb, emit_cts[j], node.outputs[j].type) for j in float_e]
    sequences = [*saved, *seqs, *stacked_e, *saving[n_emit + n_carry:n_saved]]
    outs = _add_scan(gb, [*starts, *sequences, *captured], {
        "body": backward.graph, "axis": axis, "axes": seq_axes + (axis,) * n_products,
        "reverse": not a["reverse"], "n_carry": len(starts), "n_seq": len(sequences),
        "has_index": a["has_index"],
        "n_fixed_inputs": len(starts) + len(sequences) + int(a["has_index"])})
    n_ds = len(float_s)
    n_emitted = sum(not isinstance(ref, int) and ref[0] == "emit" for ref in backward.leaves)
    d_seqs, emitted = outs[:n_ds], outs[n_ds:n_ds + n_emitted]
    d_carries = outs[n_ds + n_emitted:]
    stacked = [sequences[ref] if isinstance(ref, int)
               else (emitted if ref[0] == "emit" else d_seqs)[ref[1]] for ref in backward.leaves]
    grads: list = [None] * len(node.inputs)
    for j, g in zip(float_c, d_carries[:len(float_c)], strict=True):
        grads[j] = g
    for j, g in zip(float_s, d_seqs, strict=True):  # stacked on the scan's axis: move it
        grads[n_carry + j] = _move_axis(gb, g, axis, a["axes"][j])
    for j, g in zip(backward.accumulated, d_carries[len(float_c):], strict=True):
        grads[n_carry + n_seq + j] = g
    for j, plans in backward.deferred.items():  # the terms summed over the steps, after the loop
        for plan in plans:
            term = plan.build(gb, stacked, axis)
            k = n_carry + n_seq + j
            grads[k] = term if grads[k] is None else gb.add(grads[k], term)
    return grads


@dataclass
class _Backward:
    """The backward scan's body (see `_scan_vjp`) and what its results mean."""
    graph: Graph
    accumulated: list[int]  # the captured values (by index) whose gradient is a carry
    deferred: dict[int, list[_Plan]]  # captured index: its gradient terms summed after the loop
    # each leaf of the plans, stacked over the steps: an int (that backward-scan sequence),
    # ("ds", k) (the k-th float sequence's gradient, emitted as it is), or ("emit", k) (the
    # k-th value the body emits after the sequences' gradients)
    leaves: list
    products: list[int]  # the forward body's nodes whose saved results the body reads


def _backward_body(gb, a: dict, float_c: list[int], float_s: list[int], float_k: list[int],
                   float_e: list[int], seq_axes: tuple[int, ...]) -> _Backward:
    """The body of the backward scan (see `_scan_vjp`), from the VJP of the forward body `a`
    holds: inputs (dc, dk | saved c, s, de | [t], k), results (dc_in, dk + dk_t | ds_t,
    leaves), with the float carries, sequences, captured values and emits by index in the
    `float_` lists.

    A captured value's per-step gradient that is a sum of terms like dgates_t^T @ h_t or
    sum(dgates_t, axis=0) is not accumulated step by step (T small GEMMs in the loop): the
    body emits the terms' per-step operands (or the backward scan's own sequences give them),
    and `_Plan.build` computes the sum over all steps after the loop as one GEMM over the
    T*B rows (or one reduction), as cuDNN's and PyTorch's RNN backward do."""
    body: Graph = a["body"]
    n_carry, n_seq, fixed = a["n_carry"], a["n_seq"], a["n_fixed_inputs"]
    c_in, s_in, k_in = body.inputs[:n_carry], body.inputs[n_carry:n_carry + n_seq], \
        body.inputs[fixed:]
    names = [body.node(nid)["attrs"]["name"] for nid in body.inputs]
    if len(set(names)) != len(names):
        raise IRError(f"scan: the body's inputs need distinct names, not {names}")
    wrt = [c_in[j] for j in float_c] + [s_in[j] for j in float_s] + [k_in[j] for j in float_k]
    vjp_body, layout = gb.differentiate(body, wrt_params=[],
                                        wrt_inputs=[body.node(n)["attrs"]["name"] for n in wrt])
    by_name = {vjp_body.node(nid)["attrs"]["name"]: nid for nid in vjp_body.inputs}

    def cotangent_input(output: int) -> int:  # the body's input holding output's cotangent
        return by_name[layout.cotangents[output]]

    def gradient(nid: int) -> Value:  # the body's gradient of body input nid
        return vjp_body.outputs[layout.input_output(body.node(nid)["attrs"]["name"])]

    inner = type(gb)(vjp_body, gb.span, gb.scope)  # a builder of the body (ops cannot import one)
    sequence_inputs = (c_in + s_in + [cotangent_input(n_carry + j) for j in float_e])
    # a leaf that is a sequence's slice stacks back to that sequence: no copy is emitted
    sequence_of = {nid: k for k, nid in enumerate(sequence_inputs)
                   if seq_axes[k] == a["axis"]}
    per_step = set(sequence_inputs) | set(c_in)
    invariant = set(body.inputs[n_carry + n_seq:]) - per_step
    kept: dict[int, list[Value]] = {}
    deferred: dict[int, list[_Plan]] = {}
    for j in float_k:
        kept[j], plans = _split_terms(vjp_body, gradient(k_in[j]), invariant, a["axis"])
        if plans:
            deferred[j] = plans
    accumulated = [j for j in float_k if kept[j]]
    accumulators = [vjp_body.add_input(f"grad:{names[fixed + j]}", body.node(k_in[j])["types"][0],
                                       gb.span) for j in accumulated]
    d_seqs = [gradient(s_in[j]) for j in float_s]
    leaves: list = []
    emitted: list[Value] = []
    slots: dict[tuple[int, int], int] = {}
    for plan in (p for plans in deferred.values() for p in plans):
        for value in plan.leaves:
            key = (value.node, value.index)
            if key in slots:
                continue
            slots[key] = len(leaves)
            if value.index == 0 and value.node in sequence_of:
                leaves.append(sequence_of[value.node])
            elif value in d_seqs:  # a sequence's gradient, emitted already
                leaves.append(("ds", d_seqs.index(value)))
            else:
                leaves.append(("emit", len(emitted)))
                emitted.append(value)
        plan.slots = [slots[(v.node, v.index)] for v in plan.leaves]
    vjp_body.inputs = ([cotangent_input(j) for j in float_c] + [v.node for v in accumulators]
                       + sequence_inputs + body.inputs[n_carry + n_seq:])
    vjp_body.outputs = ([gradient(c_in[j]) for j in float_c]
                        + [_total(inner, [acc, *kept[j]])
                           for acc, j in zip(accumulators, accumulated, strict=True)]
                        + d_seqs + emitted)
    vjp_body.output_names = []
    vjp_body.prune()
    products = _saved_products(body, vjp_body, set(c_in) | set(s_in)
                               | set(body.inputs[n_carry + n_seq:fixed]), a["axis"])
    at = len(vjp_body.inputs) - len(body.inputs[n_carry + n_seq:])  # before [t] and captured
    for nid in products:  # read the forward's saved result instead of computing it again
        saved = vjp_body.add_input(f"saved:{nid}", body.node(nid)["types"][0], gb.span)
        vjp_body.inputs.remove(saved.node)
        vjp_body.inputs.insert(at, saved.node)
        at += 1
        _redirect(vjp_body, nid, saved)
    vjp_body.prune()
    return _Backward(vjp_body, accumulated, deferred, leaves, products)


def _saved_products(body: Graph, vjp_body: Graph, per_step: set[int], axis: int) -> list[int]:
    """The matmuls of the forward body that its VJP computes again each step (a gate's
    h @ W_hh^T) and that depend on the step (not only on captured weights), each as the end
    of its elementwise chain (`_chain_end`): the forward scan saves those values, stacked on
    the scan's axis like its carries, so the backward scan reads them instead of redoing
    the product (as PyTorch saves an RNN's gates)."""
    chosen = []
    for nid in body.order():
        if (body.op(nid) != "matmul" or nid not in vjp_body.g
                or vjp_body.op(nid) != "matmul"):
            continue
        (t,) = body.node(nid)["types"]
        if t.dtype in FLOATS and t.rank >= axis and nx.ancestors(body.g, nid) & per_step:
            end = _chain_end(body, vjp_body, nid)
            if end not in chosen:  # x @ W_ih + h @ W_hh: two products, one chain
                chosen.append(end)
    return chosen


def _chain_end(body: Graph, vjp_body: Graph, nid: int) -> int:
    """The last node of the elementwise ops of `nid`'s type that follow it one by one, each
    read by the next alone in the forward and in the backward (a gate's matmul + bias +
    input projection): saving that value keeps the forward's fused kernel whole and spares
    the backward the whole chain."""
    while True:
        edges = list(body.g.out_edges(nid))
        if (len(edges) != 1 or any(v.node == nid for v in body.outputs)
                or len(vjp_body.g.out_edges(nid)) != 1):  # the backward reads nid itself
            return nid
        user = edges[0][1]
        if (not REGISTRY[body.op(user)].has(Prop.ELEMENTWISE) or user not in vjp_body.g
                or body.node(user)["types"] != body.node(nid)["types"]):
            return nid
        nid = user


def _redirect(graph: Graph, node: int, new: Value) -> None:
    """Point every use of single-result `node`'s value in `graph` at `new`."""
    for _, user, key, data in list(graph.g.out_edges(node, keys=True, data=True)):
        graph.g.remove_edge(node, user, key)
        graph.g.add_edge(new.node, user, src=new.index, dst=data["dst"])
    graph.outputs = [new if v.node == node else v for v in graph.outputs]


def _total(gb, values: list[Value]) -> Value:
    total = values[0]
    for v in values[1:]:
        total = gb.add(total, v)
    return total


@dataclass
class _Plan:
    """A gradient term summed over the scan's steps after the loop: `leaves` are the body's
    per-step values it reads; `build(gb, stacked, axis)` makes the sum from the leaves stacked
    on the scan's `axis` (stacked[slots[i]] is leaves[i]'s)."""
    leaves: list[Value]
    make: Callable
    slots: list[int] = field(default_factory=list)

    def build(self, gb, stacked: list[Value], axis: int) -> Value:
        return self.make(gb, [stacked[s] for s in self.slots], axis)


def _split_terms(body: Graph, value: Value, invariant: set[int], axis: int
                 ) -> tuple[list[Value], list[_Plan]]:
    """`value`, a per-step gradient, as terms: those that stay summed in the loop, and the
    plans of those whose sum over the steps is computed after it (`_plan_of`)."""
    op = body.op(value.node)
    operands = body.operands(value.node)
    if op == "add" and all(v is not None and v.type == value.type for v in operands):
        kept, plans = [], []
        for v in operands:
            k, p = _split_terms(body, v, invariant, axis)
            kept += k
            plans += p
        return kept, plans
    plan = _plan_of(body, value, invariant, axis)
    return ([], [plan]) if plan is not None else ([value], [])


def _plan_of(body: Graph, value: Value, invariant: set[int], axis: int) -> _Plan | None:
    """The plan of sum_t value_t, where the sum moves out of the loop: a permute or reshape
    of such a term (applied after the sum), a sum over axes of a per-step value (one sum over
    the same axes and the steps), or a matrix product A_t @ B_t contracting a per-step axis
    (one product of the steps' A and B concatenated along that axis)."""
    op = body.op(value.node)
    operands = body.operands(value.node)
    attrs = body.node(value.node)["attrs"]
    if op in ("permute", "reshape"):
        inner = _plan_of(body, operands[0], invariant, axis)
        if inner is None:
            return None
        kwargs = {"perm": list(attrs["perm"])} if op == "permute" else {"shape": value.type.shape}
        return _Plan(inner.leaves, lambda gb, st, ax: gb.op(op, inner.make(gb, st, ax), **kwargs))
    if op == "sum" and not attrs.get("keepdims") and _stackable(operands[0], invariant, axis):
        x = operands[0]
        axes = attrs["axis"]
        axes = range(x.type.rank) if axes is None else [a % x.type.rank for a in axes]

        def summed(gb, st, ax):
            moved = sorted({k + (k >= ax) for k in axes} | {ax})
            return gb.op("sum", st[0], axis=moved, keepdims=False)
        return _Plan([x], summed)
    if op == "matmul" and value.type.rank == 2 and all(
            v.type.rank == 2 for v in operands):
        left, right = operands
        # each operand as (the per-step value it reads, whether that holds its K axis first)
        lhs = _unpermuted(body, left)
        lhs = (lhs, True) if lhs is not None else (left, False)
        rhs = _unpermuted(body, right)
        rhs = (rhs, False) if rhs is not None else (right, True)
        if not all(_stackable(v, invariant, axis) for v, _ in (lhs, rhs)):
            return None
        return _Plan([lhs[0], rhs[0]], lambda gb, st, ax: _concatenated_matmul(
            gb, st, ax, lhs[1], rhs[1]))
    return None


def _unpermuted(body: Graph, value: Value) -> Value | None:
    """X where `value` is X's transpose (a 2-D permute), else None."""
    if body.op(value.node) == "permute" and list(body.node(value.node)["attrs"]["perm"]) == [1, 0]:
        return body.operands(value.node)[0]
    return None


def _stackable(value: Value, invariant: set[int], axis: int) -> bool:
    """Whether `value` is worth stacking over the steps and can be: not a loop-invariant
    input or a constant, and of at least `axis` axes (emits stack on the scan's axis)."""
    if value.node in invariant or value.type.rank < axis:
        return False
    return value.type.dtype in FLOATS


def _concatenated_matmul(gb, stacked: list[Value], axis: int, lhs_k_first: bool,
                         rhs_k_first: bool) -> Value:
    """sum_t A_t @ B_t as one product: the stacked A and B (A_t as [K, M] when
    `lhs_k_first`, else [M, K]; B_t as [K, N] when `rhs_k_first`, else [N, K]) with the step
    axis `axis` merged into K, in the same order in both."""
    def axes(k_first: bool) -> tuple[int, int, int]:  # (step, K, other) of a stacked value
        k, other = (0, 1) if k_first else (1, 0)
        return axis, k + (k >= axis), other + (other >= axis)

    # both merge (step, K) in the same order: the right operand's memory order (no copy)
    t_b, k_b, _ = axes(rhs_k_first)
    step_first = t_b < k_b
    rows = []
    for value, k_first in ((stacked[0], lhs_k_first), (stacked[1], rhs_k_first)):
        t, k, o = axes(k_first)
        perm = [t, k, o] if step_first else [k, t, o]
        if perm != [0, 1, 2]:
            value = gb.permute(value, perm)
        shape = value.type.shape
        rows.append(gb.reshape(value, [shape[0] * shape[1], shape[2]]))
    return gb.matmul(gb.permute(rows[0], [1, 0]), rows[1])


def _add_scan(gb, operands, attrs: dict) -> list[Value]:
    """A scan node of `operands` and `attrs` (its body among them: no call binds that)."""
    types = _scan_infer([v.type for v in operands], attrs)
    return gb.graph.add("scan", list(operands), attrs, types, gb.span, gb.scope)


def _is_float(v) -> bool:
    return v is not None and v.type.dtype in FLOATS


def _saving(body: Graph, n_carry: int, products: list[int]) -> Graph:
    """A copy of `body` that also emits, after its own emits, the carries entering the step
    (the forward values the reverse scan resumes each step from), then the results of the
    nodes `products` (single-result nodes the reverse scan reads instead of recomputing)."""
    saving = body.copy()
    saving.outputs = list(body.outputs) + [
        Value(nid, 0, body.node(nid)["types"][0]) for nid in [*body.inputs[:n_carry],
                                                                *products]]
    return saving


def _take_over(graph: Graph, old: tuple[Value, ...], new: list[Value]) -> None:
    """Point every use of the results `old` (the users of the forward scan, the graph's
    outputs) at the same results `new` (of the scan that also saves its carries), so that the
    loop runs once: the old scan is left unused, and the reverse pass prunes it."""
    node = old[0].node
    same = dict(zip((v.index for v in old), new, strict=True))
    for _, user, key, data in list(graph.g.out_edges(node, keys=True, data=True)):
        graph.g.remove_edge(node, user, key)
        value = same[data["src"]]
        graph.g.add_edge(value.node, user, src=value.index, dst=data["dst"])
    graph.outputs = [same[v.index] if v.node == node else v for v in graph.outputs]


def _or_zeros(gb, value, t):
    """`value`, or zeros of type `t` where no cotangent reached it."""
    return value if value is not None else gb.op("zeros", shape=list(t.shape), dtype=t.dtype)


def _move_axis(gb, value, source: int, dest: int):
    """`value` with its axis `source` moved to position `dest`."""
    if source == dest:
        return value
    order = [k for k in range(value.type.rank) if k != source]
    order.insert(dest, source)
    return gb.permute(value, order)


register(internal(OpRecord(
    name="scan",
    args=(Arg("inputs", "tensors"),),
    infer=_scan_infer,
    reference=_scan_reference,
    doc="Loop a body graph over one axis of its sequences, carrying state and stacking emits.",
    props=frozenset({Prop.CONTROL}),
    vjp=_scan_vjp,
)))


def _fused_infer(types, attrs):
    """The body's results; its inputs must have the operands' types."""
    body = attrs["body"]
    inputs = [body.node(nid)["types"][0] for nid in body.inputs]
    if list(types) != inputs:
        raise ValueError(f"fused: operands {[str(t) for t in types]} do not match the body's "
                         f"inputs {[str(t) for t in inputs]}")
    return [o.type for o in body.outputs]


def _fused_reference(env, inputs, attrs):
    return env.run_graph(attrs["body"], list(inputs))


register(internal(OpRecord(
    name="fused",
    args=(Arg("inputs", "tensors"),),
    infer=_fused_infer,
    reference=_fused_reference,
    doc="A group of ops computed by one kernel (made by the fuse pass): its `body` graph, "
        "optionally headed by a matmul or convolution (`anchor`), then elementwise ops; its "
        "results are the body's outputs (the group's result, then values read outside it).",
    props=frozenset({Prop.CONTROL}),
)))
