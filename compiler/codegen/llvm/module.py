"""A whole model as one LLVM module: a kernel per op node and one entry that runs them in order.

    void run(i8** inputs, i8** outputs, i8** params, i8* workspace, i64* dims, i64* offsets)

`inputs`/`outputs` follow the model's signature, `params` the `ModuleLayout.params` order
(parameters, buffers and constants), `dims` the value of each symbolic size in
`ModuleLayout.symbols` order, and `offsets` the byte offset in `workspace` of each intermediate
tensor, from the memory plan (`plan_memory`). Python crosses into native code once per call.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
from llvmlite import ir

from ...dims import Dim
from ...errors import KilnError
from ...ir import Graph
from ...ops import REGISTRY
from ...types import TensorType
from .kernel import I8, I64, KERNEL_TYPE, PTR, VOID, KernelBuilder

ALIGN = 64  # bytes: a cache line, and an AVX-512 vector


@dataclass
class ModuleLayout:
    """Where every tensor of the model lives at run time."""

    symbols: list[str]
    params: list[str] = field(default_factory=list)  # dotted paths, then "const:N" names
    constants: dict[str, np.ndarray] = field(default_factory=dict)
    slots: list[tuple[TensorType, int, int]] = field(default_factory=list)  # type, born, dies


@dataclass
class NativeNode:
    """What an op's native lowering sees: the node's types and attributes."""

    in_types: list[TensorType | None]
    out_types: list[TensorType]
    attrs: dict
    span: object


ENTRY_TYPE = ir.FunctionType(
    VOID, [PTR.as_pointer(), PTR.as_pointer(), PTR.as_pointer(), PTR, I64.as_pointer(),
           I64.as_pointer()]
)


def build_module(model, triple: str, data_layout: str,
                 with_plan: bool = False) -> tuple[ir.Module, ModuleLayout]:
    """The LLVM IR of `model` (an ElaboratedModel) and the layout its caller must follow;
    `with_plan` adds `int64_t kiln_plan(const int64_t *dims, int64_t *offsets)` for C callers."""
    graph: Graph = model.graph
    layout = ModuleLayout(symbols=list(model.symbols))
    module = ir.Module(name=model.name)
    module.triple, module.data_layout = triple, data_layout
    entry = ir.Function(module, ENTRY_TYPE, "run")
    inputs_p, outputs_p, params_p, work_p, dims_p, offsets_p = entry.args
    b = ir.IRBuilder(entry.append_basic_block("entry"))
    order = graph.order()
    position = {nid: i for i, nid in enumerate(order)}
    last_use: dict[tuple[int, int], int] = {}
    for u, v, d in graph.g.edges(data=True):
        key = (u, d["src"])
        last_use[key] = max(last_use.get(key, -1), position[v])
    outputs = {(o.node, o.index): i for i, o in enumerate(graph.outputs)}
    input_index = {nid: i for i, nid in enumerate(graph.inputs)}
    where: dict[tuple[int, int], ir.Value] = {}

    def pointer(array_ptr, index: int) -> ir.Value:
        return b.load(b.gep(array_ptr, [ir.Constant(I64, index)]))

    for nid in order:
        node = graph.node(nid)
        op = node["op"]
        if op == "input":
            where[(nid, 0)] = pointer(inputs_p, input_index[nid])
            continue
        if op in ("param", "constant"):
            name = node["attrs"]["path"] if op == "param" else f"const:{nid}"
            if op == "constant":
                layout.constants[name] = np.asarray(node["attrs"]["value"], order="C")
            if name not in layout.params:
                layout.params.append(name)
            where[(nid, 0)] = pointer(params_p, layout.params.index(name))
            continue
        rec = REGISTRY[op]
        if rec.llvm is None:
            raise KilnError("K0702", f"the op {op} has no native lowering yet", node["span"],
                            hint='run this model with target = "reference" or "onnx"')
        for i, t in enumerate(node["types"]):
            key = (nid, i)
            if key in outputs:
                where[key] = pointer(outputs_p, outputs[key])
            else:
                slot = len(layout.slots)
                layout.slots.append((t, position[nid], last_use.get(key, position[nid])))
                offset = b.load(b.gep(offsets_p, [ir.Constant(I64, slot)]))
                where[key] = b.gep(work_p, [offset])
        kernel = _kernel(module, rec, nid, graph, node, layout.symbols)
        args = [where[(v.node, v.index)] if v is not None else ir.Constant(PTR, None)
                for v in graph.operands(nid)]
        args += [where[(nid, i)] for i in range(len(node["types"]))]
        array = b.alloca(PTR, len(args), name=f"args{nid}")
        for i, a in enumerate(args):
            b.store(a, b.gep(array, [ir.Constant(I64, i)]))
        b.call(kernel, [array, dims_p])
    for i, o in enumerate(graph.outputs):  # an output that is an input, a param or repeated
        src, dst = where[(o.node, o.index)], pointer(outputs_p, i)
        if outputs.get((o.node, o.index)) != i or graph.op(o.node) in ("input", "param",
                                                                          "constant"):
            _copy(module, b, src, dst, o.type, dims_p, layout.symbols)
    b.ret_void()
    if with_plan:
        _plan_function(module, layout)
    return module, layout


def _plan_function(module: ir.Module, layout: ModuleLayout) -> None:
    """A simple plan for C callers: every intermediate in its own aligned region (no reuse);
    returns the workspace size. (kiln's own runtime reuses memory: plan_memory.)"""
    fn = ir.Function(module, ir.FunctionType(I64, [I64.as_pointer(), I64.as_pointer()]),
                     "kiln_plan")
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    kb = KernelBuilder(ir.Module("scratch"), "scratch", layout.symbols)  # for its size helpers
    kb.b, kb.dims_ptr = b, fn.args[0]
    total: ir.Value = ir.Constant(I64, 0)
    for slot, (t, _born, _dies) in enumerate(layout.slots):
        b.store(total, b.gep(fn.args[1], [ir.Constant(I64, slot)]))
        size = b.mul(kb.numel(t.shape), ir.Constant(I64, t.np_dtype.itemsize))
        aligned = b.mul(b.sdiv(b.add(size, ir.Constant(I64, ALIGN - 1)), ir.Constant(I64, ALIGN)),
                        ir.Constant(I64, ALIGN))
        total = b.add(total, aligned)
    b.ret(total)


def _kernel(module, rec, nid, graph, node, symbols) -> ir.Function:
    kb = KernelBuilder(module, f"k{nid}_{rec.name}", symbols)
    operands = graph.operands(nid)
    n = NativeNode([v.type if v is not None else None for v in operands], list(node["types"]),
                   node["attrs"], node["span"])
    rec.llvm(kb, n)
    return kb.finish()


def _copy(module, b, src, dst, t: TensorType, dims_p, symbols) -> None:
    """memcpy of a whole tensor (an output that is also an input or a parameter)."""
    kb = KernelBuilder(module, f"copy{len(module.functions)}", symbols)
    size = kb.b.mul(kb.numel(t.shape), ir.Constant(I64, t.np_dtype.itemsize))
    src_p = kb.b.load(kb.b.gep(kb.args_ptr, [ir.Constant(I64, 0)]))
    dst_p = kb.b.load(kb.b.gep(kb.args_ptr, [ir.Constant(I64, 1)]))
    memcpy = module.declare_intrinsic("llvm.memcpy", [PTR, PTR, I64])
    kb.b.call(memcpy, [dst_p, src_p, size, ir.Constant(ir.IntType(1), 0)])
    fn = kb.finish()
    array = b.alloca(PTR, 2)
    b.store(src, b.gep(array, [ir.Constant(I64, 0)]))
    b.store(dst, b.gep(array, [ir.Constant(I64, 1)]))
    b.call(fn, [array, dims_p])


def ir_text(module: ir.Module, vector_width: int) -> str:
    """The module as LLVM IR text, for a target whose vectors hold `vector_width` f32s.

    LLVM's loop vectoriser keeps to 256-bit vectors on AVX-512 unless a function asks for
    512 ("prefer-vector-width"), which llvmlite's IR builder cannot spell: add it here.
    """
    text = str(module)
    if vector_width >= 16:
        text = re.sub(r"^(define [^\n]*)\n\{", r'\1 "prefer-vector-width"="512"\n{', text,
                      flags=re.MULTILINE)
    return text


def plan_memory(layout: ModuleLayout, dims: dict[str, int]) -> tuple[np.ndarray, int]:
    """Offsets of the intermediate tensors in one workspace, reusing the bytes of tensors that
    are dead (liveness by op order, first fit by size); returns (offsets, workspace bytes)."""
    sizes = []
    for t, _born, _dies in layout.slots:
        n = int(np.prod([Dim.of(d).evaluate(dims) for d in t.shape], dtype=np.int64))
        sizes.append(-(-max(n * t.np_dtype.itemsize, 1) // ALIGN) * ALIGN)
    offsets = np.zeros(len(sizes), dtype=np.int64)
    live: list[tuple[int, int, int]] = []  # (offset, size, dies)
    total = 0
    for slot, ((_t, born, dies), size) in enumerate(zip(layout.slots, sizes, strict=True)):
        live = [x for x in live if x[2] >= born]  # those still needed at this op
        live.sort()
        offset = 0
        for start, length, _ in live:
            if offset + size <= start:
                break
            offset = max(offset, start + length)
        offsets[slot] = offset
        live.append((offset, size, dies))
        total = max(total, offset + size)
    return offsets, total


__all__ = ["build_module", "plan_memory", "ModuleLayout", "NativeNode", "KERNEL_TYPE", "I8"]
