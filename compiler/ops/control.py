"""Ops that hold a body graph: `scan`, a loop over one axis of its sequences with carried
state, and `fused`, a group of ops one kernel computes.

Their records give the shape rule and the reference; each backend lowers them itself, beside
its walk over a graph (codegen/onnx.py: Scan and the body's ops inline; codegen/llvm/module.py:
a loop function, and one kernel made by codegen/llvm/fused.py), since what a body means is the
backend's business.
"""

from __future__ import annotations

import numpy as np

from .registry import Arg, OpRecord, Prop, internal, register


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


register(internal(OpRecord(
    name="scan",
    args=(Arg("inputs", "tensors"),),
    infer=_scan_infer,
    reference=_scan_reference,
    doc="Loop a body graph over one axis of its sequences, carrying state and stacking emits.",
    props=frozenset({Prop.CONTROL}),
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
        "optionally headed by a matmul or convolution (`anchor`), then elementwise ops.",
    props=frozenset({Prop.CONTROL}),
)))
