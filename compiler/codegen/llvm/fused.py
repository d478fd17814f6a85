"""A `fused` node (fuse.py) as one kernel.

With an anchor (a matmul or convolution), the anchor's own lowering writes its result into
the fused node's output buffer; then one loop over that buffer computes the group's
elementwise ops per element, in registers, reading the anchor's value where it stands and
writing the group's result in its place. An anchor may take the chain instead (an
`Epilogue`, offered where one element's result needs only values at its own index) and apply
it to each block of its result as it finishes it: the im2col convolution (finish.py).
Without an anchor, the loop alone. A split in the group is no loop of its own: the loop reads
each of its parts where it stands in the operand split (elementwise.Part). Intermediate
values are rounded to their own dtype between ops, as separate kernels would store them.

A group with several results (values its members compute that the model or later kernels
read: an optimizer's new state beside the new weight) stores each in the same loop, into the
fused node's output buffers; per element, every operand is loaded before any result is
stored, so a result written over an operand (the anchor's result, the one buffer the kernel
shares between an operand and a result) is read first. The memory plan never gives a
result the bytes of another operand of the same node (passes/memory.place: an operand is
alive until its last reader is done).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from llvmlite import ir

from ...dims import Dim
from ...ir import Graph
from ...ops import REGISTRY, Prop
from ...ops.signature import tensor_slot_names
from ...ops.slicing import _split_parts
from .abi import I64, PTR
from .elementwise import Part
from .irgen import element
from .kernel import NativeNode

# body ops the loop reads values of rather than computes: the node's inputs, and a split's
# parts of one (fuse.py), each read where it stands in the input
READ = ("input", "split")


def fused_kernel(kb, n) -> None:
    """The kernel of fused node `n` (a kernel.NativeNode)."""
    body: Graph = n.attrs["body"]
    anchor = n.attrs.get("anchor")
    out_t = n.out_types[0]
    slot_of = {nid: i for i, nid in enumerate(body.inputs)}
    out = kb.output()
    # the loop reads the body inputs the elementwise ops use, the parts of a split input where
    # they stand in it, and the anchor's result
    read: list[tuple[int, int]] = []
    for nid in body.order():
        if nid == anchor or body.op(nid) in READ:
            continue
        for v in body.operands(nid):
            outside = v is not None and (v.node == anchor or body.op(v.node) in READ)
            if outside and (v.node, v.index) not in read:
                read.append((v.node, v.index))
    ins = []
    for node_id, index in read:
        if node_id == anchor:
            ins.append((out, out_t))
        elif body.op(node_id) == "split":
            (source,) = body.operands(node_id)
            whole = n.in_types[slot_of[source.node]]
            axis, sizes = _split_parts(whole, body.node(node_id)["attrs"])
            ins.append((kb.input(slot_of[source.node]), body.node(node_id)["types"][index],
                        Part(whole, axis, sum(sizes[:index], Dim.of(0)))))
        else:
            t = n.in_types[slot_of[node_id]]
            ins.append((kb.input(slot_of[node_id]), t))
    results = [(o.node, o.index) for o in body.outputs]
    outs = [(out, out_t)] + [(kb.output(i), t) for i, t in enumerate(n.out_types) if i]

    # no FMA contraction or reassociation across a rounded f16 intermediate: LLVM narrows each
    # rounded f32 op to a half op (exact for one op), then, where the CPU has half arithmetic
    # (AVX512-FP16), would contract mul and add into one half FMA that skips the rounding
    halves = any(t.dtype == "f16" for nid in body.order() for t in body.node(nid)["types"])

    def compute(kb_, *values):
        saved_flags = kb_.flags
        if halves:
            kb_.flags = ()
        env = dict(zip(read, values, strict=True))
        for nid in body.order():
            if nid == anchor or body.op(nid) in READ:
                continue
            node = body.node(nid)
            args = [env[(v.node, v.index)] for v in body.operands(nid)]
            value = REGISTRY[node["op"]].scalar(kb_, node["attrs"], *args)
            if (nid, 0) != results[0]:  # stored between separate kernels: round it as they
                dtype = node["types"][0].dtype  # would (a stored result again, exactly)
                value = kb_.to_compute(kb_.to_storage(value, dtype), dtype)
            env[(nid, 0)] = value
        kb_.flags = saved_flags
        return [env[r] for r in results]

    epilogue = None
    if anchor is not None:
        epilogue = _epilogue(read, ins, anchor, out_t, len(outs), halves, compute)
        _anchor(kb, n, body, anchor, slot_of, epilogue)
    if epilogue is None or not epilogue.consumed:
        kb.elementwise_into(outs, ins, compute)


@dataclass
class Epilogue:
    """A fused node's elementwise chain after its anchor, for an anchor that applies it to
    blocks of its result itself, while they are in cache (finish.py): `inputs`, the
    other tensors the chain reads, (pointer, type), each of the result's shape or a scalar;
    `apply(kb, value, others)`, the chain's result at one element from the anchor's value
    there and the inputs'. An anchor that takes it sets `consumed`: the node's own loop over
    the result is then not emitted."""

    inputs: list
    apply: Callable
    consumed: bool = False


def _epilogue(read, ins, anchor, out_t, results: int, halves: bool,
              compute) -> Epilogue | None:
    """The chain as an Epilogue where one element's result needs only the values at its own
    index: one f32 result, every input of the result's shape or a scalar (no split's part,
    no broadcast), no f16 rounding (its flags are the loop's own)."""
    others = [entry for (node_id, _), entry in zip(read, ins, strict=True) if node_id != anchor]
    flat = all(len(entry) == 2 and (entry[1].shape == out_t.shape or entry[1].rank == 0)
               for entry in others)
    if results != 1 or halves or out_t.dtype != "f32" or not flat:
        return None

    def apply(kb_, value, values):
        given = iter(values)
        return compute(kb_, *(value if node_id == anchor else next(given)
                              for node_id, _ in read))[0]

    return Epilogue(others, apply)


def _anchor(kb, n, body: Graph, anchor: int, slot_of: dict, epilogue: Epilogue | None) -> None:
    """The anchor's own lowering, writing its result into the fused node's output, with the
    kernel's arguments seen as the anchor's and `epilogue` offered to it (kb.epilogue)."""
    node = body.node(anchor)
    operands = body.operands(anchor)
    pointers = [ir.Constant(PTR, None) if v is None else _raw(kb, slot_of[v.node])
                for v in operands] + [_raw(kb, len(n.in_types))]
    b = kb.b
    array = b.alloca(PTR, len(pointers), name="anchor_args")
    for i, p in enumerate(pointers):
        b.store(p, b.gep(array, [ir.Constant(I64, i)]))
    saved, kb.args_ptr = kb.args_ptr, array
    prepacked = frozenset(i for i, v in enumerate(operands)
                          if v is not None and slot_of[v.node] in n.prepacked)
    rec = REGISTRY[node["op"]]
    anchor_node = NativeNode([None if v is None else v.type for v in operands],
                             list(node["types"]), node["attrs"], node["span"], prepacked,
                             tuple(tensor_slot_names(rec, len(operands))))
    saved_node, kb.node = kb.node, anchor_node
    saved_epilogue, kb.epilogue = kb.epilogue, epilogue
    rec.llvm(kb, anchor_node)
    kb.args_ptr, kb.node, kb.epilogue = saved, saved_node, saved_epilogue


def _raw(kb, index: int) -> ir.Value:
    """Argument `index` of the kernel, as the untyped pointer it was passed as."""
    return element(kb.b, kb.args_ptr, index)


def props(node: dict) -> frozenset[Prop]:
    """A fused node's kernel properties: its anchor's (a convolution's split by sample), or
    without one Prop.ELEMENTWISE (the group is an elementwise chain: fuse.py; its operands
    `part_slots` are read in parts of the result's shape, not broadcast)."""
    anchor = node["attrs"].get("anchor")
    if anchor is None:
        return frozenset({Prop.ELEMENTWISE})
    return REGISTRY[node["attrs"]["body"].op(anchor)].props


def anchor_weight(node: dict) -> tuple[dict, int] | None:
    """(the anchor's body node, the fused node's input slot feeding the anchor's weight) of
    a fused node headed by a matmul or convolution whose weight the epilogue does not read
    too: that weight may be stored packed (module.GraphEmitter.prepacked_weights)."""
    anchor = node["attrs"]["anchor"]
    if anchor is None:
        return None
    body = node["attrs"]["body"]
    weight = body.operands(anchor)[1]
    if body.g.out_degree(weight.node) != 1:  # the epilogue reads the weight too
        return None
    return body.node(anchor), body.inputs.index(weight.node)


def part_slots(node: dict) -> frozenset[int]:
    """The input slots of a fused node whose kernel reads them in parts (a split's, fuse.py),
    each part of the shape of the node's result."""
    body = node["attrs"]["body"]
    return frozenset(body.inputs.index(body.operands(nid)[0].node) for nid in body.order()
                     if body.op(nid) == "split")
