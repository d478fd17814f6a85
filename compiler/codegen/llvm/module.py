"""A whole model as one LLVM module: a kernel per op node and one entry that runs them in order.

    void run(i8** inputs, i8** outputs, i8** params, i8* workspace, i64* dims, i64* offsets,
             i64* status)

`inputs`/`outputs` follow the model's signature, `params` the `ModuleLayout.params` order
(parameters, buffers and constants), `dims` the value of each symbolic size in
`ModuleLayout.symbols` order, and `offsets` the byte offset in `workspace` of each intermediate
tensor, from the memory plan (`plan_memory`); `status[0]` is 0 after a call, or the code of
an input value an op could not handle (`ModuleLayout.failures`). Python crosses into native
code once per call.

A module built with `profile=True` also times each kernel the entry calls: the CPU's cycle
counter (`llvm.readcyclecounter`, the TSC on x86-64) is read around every call and the
difference added to `kiln_profile[k]` (i64, one per call in run order; `ModuleLayout.profiled`
gives each one's node), and `int64_t kiln_cycles(void)` reads the counter, for the runtime to
convert cycles to seconds. A scan's kernel counts as one, its body's steps included; each
kernel of its body has a counter of its own too, summed over the steps (its entry in
`profiled` is the path of scan nodes down to it).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from llvmlite import ir

from ...errors import KilnError
from ...ir import STRUCTURAL_OPS, Graph, GraphVisitor
from ...ops import REGISTRY, Prop
from ...ops.signature import tensor_slot_names
from ...passes.memory import ALIGN, plan
from ...types import TensorType
from . import bf16, irgen, parts, share
from .abi import F32, I8, I64, KERNEL_TYPE, PTR, VOID, declare
from .calling import (  # noqa: F401  (re-exported)
    CYCLES_SYMBOL,
    PROFILE_SYMBOL,
    ModuleLayout,
    plan_memory,
)
from .derived import derived_name, parse
from .elementwise import FLAT_PARALLEL
from .fused import anchor_weight, fused_kernel, part_slots
from .fused import props as fused_props
from .irgen import i64
from .kernel import KernelBuilder, NativeNode
from .layout import (
    PACKED,
    WINOGRAD,
    WINOGRAD_LAZY_OR_PACKED,
    WINOGRAD_OR_PACKED,
    captured_weights,
)
from .microkernels import STREAM_ROWS, tiling
from .plan import plan_function
from .threads import parallel_rows, threads_global

# kernels are inlined into `run` up to this many: beyond, LLVM's time grows with the square of
# run's size (500 softmax kernels inlined: 25 s; called: 6 s, linear), and a call per kernel
# costs nothing next to a kernel's work
MAX_INLINED_KERNELS = 64


ENTRY_TYPE = ir.FunctionType(
    VOID, [PTR.as_pointer(), PTR.as_pointer(), PTR.as_pointer(), PTR, I64.as_pointer(),
           I64.as_pointer(), I64.as_pointer()]
)




def build_module(model, triple: str, data_layout: str, with_plan: bool = False,
                 vector_width: int | None = None, profile: bool = False,
                 precision: str = "f32", amx: bool = False) -> tuple[ir.Module, ModuleLayout]:
    """The LLVM IR of `model` (an ElaboratedModel) and the layout its caller must follow;
    `with_plan` adds `int64_t kiln_plan(const int64_t *dims, int64_t *offsets)` for C callers
    (plan.py: -1 when the sizes are out of range for the model); `profile` times each kernel
    (see the module's docstring); `precision`: the GEMM's ("bf16": codegen/llvm/bf16.py),
    with `amx` on AMX tiles where the process may use them (bf16.amx)."""
    graph: Graph = model.graph
    layout = ModuleLayout(symbols=list(model.symbols))
    module = ir.Module(name=model.name)
    module.triple, module.data_layout = triple, data_layout
    if amx:
        bf16.use_amx(module)
    entry = ir.Function(module, ENTRY_TYPE, "run")
    inputs_p, outputs_p, params_p, work_p, dims_p, offsets_p, status_p = entry.args
    b = ir.IRBuilder(entry.append_basic_block("entry"))
    b.store(ir.Constant(I64, 0), status_p)  # checks keep the first failure: none yet
    position = {nid: i for i, nid in enumerate(graph.order())}

    def slot(t: TensorType, nid: int, last: int) -> ir.Value:
        layout.slots.append((t, position[nid], last))
        offset = b.load(b.gep(offsets_p, [ir.Constant(I64, len(layout.slots) - 1)]))
        return b.gep(work_p, [offset])

    ins = [irgen.element(b, inputs_p, i) for i in range(len(graph.inputs))]
    outs = [irgen.element(b, outputs_p, i) for i in range(len(graph.outputs))]
    emitter = GraphEmitter(module, layout, params_p, dims_p, vector_width, status_p)
    emitter.precision = precision
    if profile:
        emitter.profile = _profile_counters(module, graph)
    emitter.emit(b, graph, ins, outs, slot)
    b.ret_void()
    threads_global(module)  # kiln_set_threads, for every model (kernels read kiln_threads)
    if with_plan:
        plan_function(module, graph, layout.symbols, layout.slots)
    return module, layout


def _kernel_count(graph: Graph) -> int:
    """The kernels `graph` calls, those of its scans' bodies included."""
    return sum(1 + (_kernel_count(graph.node(nid)["attrs"]["body"]) if graph.op(nid) == "scan"
                    else 0)
               for nid in graph.g if graph.op(nid) not in STRUCTURAL_OPS)


def _profile_counters(module: ir.Module, graph: Graph) -> ir.GlobalVariable:
    """`kiln_profile`, a zeroed i64 per kernel the entry may call (a scan body's too), and
    `kiln_cycles()`."""
    calls = _kernel_count(graph)
    counters = ir.GlobalVariable(module, ir.ArrayType(I64, max(1, calls)), PROFILE_SYMBOL)
    counters.initializer = ir.Constant(counters.type.pointee, None)
    cycles = ir.Function(module, ir.FunctionType(I64, []), CYCLES_SYMBOL)
    b = ir.IRBuilder(cycles.append_basic_block("entry"))
    b.ret(b.call(declare(module, "llvm.readcyclecounter", I64, []), []))
    return counters


@dataclass
class _Frame:
    """One graph being emitted: where each value lives, and how to place the new ones."""

    b: ir.IRBuilder
    inputs: list
    outputs: list
    slot: Any
    where: dict[tuple[int, int], ir.Value]
    position: dict[int, int]
    last_use: dict[tuple[int, int], int]
    out_index: dict[tuple[int, int], int]
    input_index: dict[int, int]
    noinline: bool
    views: dict[tuple[int, int], tuple[int, int]]  # a reshape's result -> the value it views


@dataclass(frozen=True)
class _ParamRef:
    """Where a param or constant node's value lives, before any kernel reads it (its pointer
    is made at each use: GraphEmitter.pointer)."""

    nid: int
    node: dict = field(compare=False)


@dataclass(frozen=True)
class Lowering:
    """How a node becomes a kernel: its name (in the kernel's), the function that builds the
    kernel's body, `build(kernel_builder, native_node)`, and the op's properties."""

    name: str
    build: Callable[[Any, NativeNode], None]
    props: frozenset[Prop]


class GraphEmitter(GraphVisitor):
    """Emits calls of one kernel per node of a graph (a model's, or a scan body's): an op's
    by its record's `llvm` lowering, a fused group's by fused.py, a scan as a loop function
    (ScanEmitter)."""

    def __init__(self, module: ir.Module, layout: ModuleLayout, params_p, dims_p,
                 vector_width: int | None, status_p):
        self.module, self.layout = module, layout
        self.params_p, self.dims_p, self.status_p = params_p, dims_p, status_p
        self.vector_width = vector_width
        # a scan body's emitter: {body input: (outer node, its dict)} for captured weights
        # known before the call (layout.captured_weights), which its GEMMs read packed
        self.captured: dict[int, tuple[int, dict]] = {}
        self.profile: ir.GlobalVariable | None = None  # kiln_profile, when timing kernels
        self.path: tuple[int, ...] = ()  # a scan body's: the scan nodes down to it
        # a scan body's: {body input: its B panels} for captured matrices its GEMMs read as
        # B, packed once per call before the loop (ScanEmitter._pack_captured)
        self.packed_per_call: dict[int, ir.Value] = {}
        self.shared = share.SharedKernels(layout.failures)  # a scan body's: its parent's
        self.precision = "f32"  # the GEMM's products (bf16.py)

    def emit(self, b: ir.IRBuilder, graph: Graph, inputs: list, outputs: list, slot) -> None:
        """Run `graph` reading `inputs` and writing `outputs` (pointers); `slot(type, node,
        last_use)` gives the memory of each intermediate tensor."""
        # the plan_memory pass's plan; an unoptimized graph (-O0) is planned here
        memory = graph.memory if graph.memory is not None else plan(graph)
        order = memory.order
        kernels = sum(1 for nid in order if graph.op(nid) not in STRUCTURAL_OPS)
        frame = _Frame(
            b, inputs, outputs, slot, where={},
            position={nid: i for i, nid in enumerate(order)},
            last_use={(buf.node, buf.index): buf.dies for buf in memory.buffers},
            out_index={(o.node, o.index): i for i, o in enumerate(graph.outputs)},
            input_index={nid: i for i, nid in enumerate(graph.inputs)},
            noinline=kernels > MAX_INLINED_KERNELS,
            views=memory.views,
        )
        for nid in order:
            self.visit(graph, nid, frame)
        where, out_index = frame.where, frame.out_index
        for i, o in enumerate(graph.outputs):  # an output that is an input, a param, repeated
            key = (o.node, o.index)
            if out_index.get(key) != i or graph.op(o.node) in STRUCTURAL_OPS:
                _copy(self.module, b, self.pointer(b, where[key]), outputs[i], o.type,
                      self.dims_p, self.layout.symbols, self.status_p)

    def visit_input(self, graph: Graph, nid: int, node: dict, f: _Frame) -> None:
        f.where[(nid, 0)] = f.inputs[f.input_index[nid]]

    def visit_param(self, graph: Graph, nid: int, node: dict, f: _Frame) -> None:
        # listed in `params` (and so bound, stored and kept alive) only when some kernel reads
        # it as it is: a weight that every reader takes packed is not an array of the model
        f.where[(nid, 0)] = _ParamRef(nid, node)

    visit_constant = visit_param

    def visit_op(self, graph: Graph, nid: int, node: dict, f: _Frame) -> None:
        if (nid, 0) in f.views:  # the viewed value's bytes: no kernel, no memory of its own
            f.where[(nid, 0)] = f.where[f.views[(nid, 0)]]
            return
        rec = REGISTRY[node["op"]]
        if rec.llvm is None:
            raise KilnError("K0702", f"the op {rec.name} has no native lowering yet", node["span"],
                            hint='run this model with target = "reference" or "onnx"')
        self.call_kernel(f, graph, nid, node, Lowering(rec.name, rec.llvm, rec.props), (node, 1))

    def visit_fused(self, graph: Graph, nid: int, node: dict, f: _Frame) -> None:
        self.call_kernel(f, graph, nid, node, Lowering("fused", fused_kernel, fused_props(node)),
                         anchor_weight(node))

    def visit_scan(self, graph: Graph, nid: int, node: dict, f: _Frame) -> None:
        args = self.pointers(f, graph, nid, node, set())
        kernel = ScanEmitter(self, graph, nid, node).function()
        args.append(f.b.bitcast(self.params_p, PTR))
        self.call(f, kernel, args, nid)

    def pointers(self, f: _Frame, graph: Graph, nid: int, node: dict, packed: set[int]
                 ) -> list[ir.Value]:
        """The pointers a node's kernel takes: its operands', then its results' (each placed
        here: a model output, or an intermediate's slot); a null one at each slot in `packed`
        (the caller passes the weight's packed array there instead)."""
        for i, t in enumerate(node["types"]):
            key = (nid, i)
            f.where[key] = (f.outputs[f.out_index[key]] if key in f.out_index
                            else f.slot(t, nid, f.last_use.get(key, f.position[nid])))
        args = [self.pointer(f.b, f.where[(v.node, v.index)])
                if v is not None and i not in packed else ir.Constant(PTR, None)
                for i, v in enumerate(graph.operands(nid))]
        return args + [f.where[(nid, i)] for i in range(len(node["types"]))]

    def pointer(self, b: ir.IRBuilder, where: ir.Value | _ParamRef) -> ir.Value:
        """A value's pointer; a param's or constant's from the parameter array, listing it
        in `params` now (at its first use as it is)."""
        if isinstance(where, _ParamRef):
            return irgen.element(b, self.params_p, self.param_index(where.nid, where.node))
        return where

    def call_kernel(self, f: _Frame, graph: Graph, nid: int, node: dict, lowering: Lowering,
                    weight: tuple[dict, int] | None) -> None:
        """Build the node's kernel by `lowering` and call it; `weight`: the GEMM op node and
        the input slot of its weight, which may be stored packed."""
        prepacked = self.prepacked_weights(graph, nid, weight)
        args = self.pointers(f, graph, nid, node, set(prepacked))
        for index, name in prepacked.items():
            args[index] = (name if isinstance(name, ir.Value) else
                           irgen.element(f.b, self.params_p, self.layout.param(name)))
        operands = [v.type if v is not None else None for v in graph.operands(nid)]
        key = share.kernel_key(lowering.name, lowering.build, lowering.props, operands,
                               node["types"], node["attrs"], frozenset(prepacked),
                               self.vector_width, precision=self.precision)
        kernel, remap = self.shared.kernel(key, node["span"], lambda: _kernel(
            self.module, lowering, nid, graph, node, self.layout, self.vector_width,
            prepacked=frozenset(prepacked), precision=self.precision))
        self.call(f, kernel, args, nid, remap)

    def call(self, f: _Frame, kernel: ir.Function, args: list[ir.Value], nid: int,
             remap: share.Remap | None = None) -> None:
        """Call `kernel` for node `nid` (timed when profiling); `remap`: a shared kernel's
        status codes for this node (share.py)."""
        b = f.b
        if f.noinline or self.profile is not None:  # timed: each kernel its own function
            kernel.attributes.add("noinline")
        array = b.alloca(PTR, len(args), name=f"args{nid}")
        for i, a in enumerate(args):
            b.store(a, b.gep(array, [ir.Constant(I64, i)]))
        if self.profile is None:
            share.call(b, kernel, [array, self.dims_p, self.status_p], self.status_p, remap)
            return
        counter = declare(self.module, "llvm.readcyclecounter", I64, [])
        start = b.call(counter, [])
        share.call(b, kernel, [array, self.dims_p, self.status_p], self.status_p, remap)
        spent = b.sub(b.call(counter, []), start)
        self.layout.profiled.append((*self.path, nid))
        total = b.gep(self.profile, [ir.Constant(I64, 0),
                                     ir.Constant(I64, len(self.layout.profiled) - 1)])
        b.store(b.add(b.load(total), spent), total)

    def prepacked_weights(self, graph: Graph, nid: int,
                          weight: tuple[dict, int] | None) -> dict[int, str | ir.Value]:
        """{input slot: derived parameter name} for the weight the conv_layout pass chose to
        store packed (f32, known before any call) that node `nid` reads (a conv, transposed
        conv or matmul, or a fused group headed by one: `weight` is the GEMM op's node and
        the slot of node `nid` that feeds its weight): the GEMM's A or B panels
        (gemm.prepack_a / prepack_b, by the op record's packed_weight), made once when the weights
        are bound instead of on every call. In a scan body, a captured matrix that is not known
        before the call (a training step's weight) and that a matmul reads as B maps to its
        panels, packed once before the loop (`packed_per_call`): a pointer, not a name."""
        if weight is None:
            return {}
        op_node, slot = weight
        operands = graph.operands(nid)
        source = operands[slot] if slot < len(operands) else None
        if (source is not None and source.node in self.packed_per_call
                and _packable_b(graph, nid, op_node, slot, self.precision)):
            return {slot: self.packed_per_call[source.node]}
        layout = op_node["attrs"].get("weight_layout")
        if layout not in (PACKED, WINOGRAD, WINOGRAD_OR_PACKED, WINOGRAD_LAZY_OR_PACKED):
            return {}
        source = graph.operands(nid)[slot]
        src_nid, src_node = source.node, graph.node(source.node)
        if src_node["op"] == "input" and src_nid in self.captured:  # a scan's outer weight
            src_nid, src_node = self.captured[src_nid]
        if src_node["op"] not in ("param", "constant"):
            return {}
        name = self.param_name(src_nid, src_node)
        t = tiling(self.vector_width)
        groups = op_node["attrs"].get("groups", 1)  # a matmul's weight is one group
        over_winograd = bf16.gemm_over_winograd(self.module, self.precision)
        if layout == WINOGRAD_LAZY_OR_PACKED and not over_winograd:
            # the GEMM's panels, then the weight channels-last (U made during a call)
            if op_node["op"] == "conv":
                return {slot: derived_name("winograd_lazy_a", name, kc=t.kc)}
            return {slot: derived_name("winograd_lazy_or_b", name, nr=t.nr)}
        if layout in (WINOGRAD, WINOGRAD_OR_PACKED) and not over_winograd:
            # U = G g G^T as 36 B operands (winograd.py), of a transposed convolution's
            # stride-1 form (packing.transposed_as_conv3), and the GEMM's panels after it
            # where a call's batch chooses between the two
            kind = "winograd_b" if op_node["op"] != "conv_transpose" else \
                "winograd_ct" if layout == WINOGRAD else "winograd_ct_or_b"
            return {slot: derived_name(kind, name, nr=t.nr)}
        suffix = "_bf16" if self.precision == "bf16" else ""  # paired for the bf16 GEMM
        if REGISTRY[op_node["op"]].packed_weight == "b":
            return {slot: derived_name("prepack_b" + suffix, name, nr=t.nr, groups=groups)}
        return {slot: derived_name("prepack_a" + suffix, name, kc=t.kc, groups=groups)}

    def param_index(self, nid: int, node: dict) -> int:
        """The index in `params` of a param or constant node's array (listed now if new)."""
        return self.layout.param(self.param_name(nid, node))

    def param_name(self, nid: int, node: dict) -> str:
        """The name of a param or constant node's array. A constant derived from a weight by
        a name `resolve` knows (a weight.T) has that name, so that new weights remake it;
        other constants are `const:N`, their values kept in the layout."""
        layout = self.layout
        derived = node["attrs"].get("derived")
        if node["op"] == "param":
            name = node["attrs"]["path"]
        elif derived is not None and parse(derived) is not None:
            name = derived
        else:
            name = f"const:{len(layout.constants)}"
            for known, value in layout.constants.items():
                if value is node["attrs"]["value"]:
                    name = known
            layout.constants[name] = node["attrs"]["value"]
            if derived is not None:
                layout.folded.add(name)
        return name


class ScanEmitter:
    """A scan node as one function: the body's kernels run once per step in a loop.

    args: carry inits, sequences, captured values, then the outputs (emits stacked, final
    carries), then the model's parameter array. Each carry has two buffers of its own: a step
    reads one and writes the other, and they swap. A step of a sequence scanned on axis 0 is
    a pointer into it, on another axis a gathered copy.
    """

    def __init__(self, parent: GraphEmitter, graph: Graph, nid: int, node: dict):
        self.parent, self.graph, self.nid, self.node = parent, graph, nid, node
        self.attrs = node["attrs"]

    def _captured_b(self, body: Graph) -> dict[int, int]:
        """{body input: the scan operand it captures} for each captured matrix that a body
        GEMM reads as its B and that is not a weight known before the call (those are packed
        when the weights are bound): a training step's W_hh, packed once per call here
        instead of at every step."""
        a = self.attrs
        first = a["n_carry"] + a["n_seq"]
        captured = body.inputs[first + (1 if a["has_index"] else 0):]
        index = {nid: first + j for j, nid in enumerate(captured)}
        known = captured_weights(self.graph, self.nid)
        chosen: dict[int, int] = {}
        for nid in body.order():
            node = body.node(nid)
            weight = (anchor_weight(node) if node["op"] == "fused"
                      else (node, 1) if node["op"] == "matmul" else None)
            if weight is None:
                continue
            op_node, slot = weight
            source = body.operands(nid)[slot]
            if (source is not None and source.node in index and source.node not in known
                    and _packable_b(body, nid, op_node, slot, self.parent.precision)):
                chosen[source.node] = index[source.node]
        return chosen

    def function(self) -> ir.Function:
        a, parent = self.attrs, self.parent
        body: Graph = a["body"]
        n_carry, n_seq = a["n_carry"], a["n_seq"]
        operands = self.graph.operands(self.nid)
        n_in = len(operands)
        kb = KernelBuilder(parent.module, f"scan{len(parent.module.functions)}",
                           parent.layout.symbols)
        kb.function.linkage = "internal"
        kb.failures, kb.span = parent.layout.failures, self.node["span"]
        b = kb.b
        arg = [irgen.element(b, kb.args_ptr, i) for i in range(n_in + len(self.node["types"]) + 1)]
        params_p = b.bitcast(arg[-1], PTR.as_pointer())
        seq_types = [v.type for v in operands[n_carry:n_carry + n_seq]]
        carry_types = [v.type for v in operands[:n_carry]]
        emit_types = self.node["types"][: len(self.node["types"]) - n_carry]
        malloc = declare(parent.module, "malloc", PTR, [I64])
        owned: list[ir.Value] = []

        def buffer(t: TensorType) -> ir.Value:
            size = kb.nbytes(t.shape, t.dtype)
            p = b.call(malloc, [b.add(size, ir.Constant(I64, ALIGN))])
            owned.append(p)
            return p

        # each carry has two buffers, the step's input and its output, swapped after each step
        # (pointers in allocas: no copy of the state between steps)
        cur_p, nxt_p = [], []
        for t in carry_types:
            for pointers in (cur_p, nxt_p):
                pointers.append(b.alloca(PTR, name="carry"))
                b.store(buffer(t), pointers[-1])
        axes = a["axes"]
        length = kb.dim(seq_types[0].shape[axes[0]])
        steps = [buffer(_step_type(t, ax)) if ax != 0 else None
                 for t, ax in zip(seq_types, axes, strict=True)]
        emit_tmp = [buffer(_step_type(t, a["axis"])) if a["axis"] != 0 else None
                    for t in emit_types]
        index = b.alloca(I64, name="step")
        # the body's intermediates get their buffers once, before the loop, in emit order
        body_slots = [buffer(buf.type) for buf in plan(body).buffers]
        body_slots.reverse()

        def slot(_t: TensorType, _nid: int, _last: int) -> ir.Value:
            return body_slots.pop()

        packed = self._captured_b(body)  # {body input: its outer operand's index}
        nr = tiling(parent.vector_width).nr
        panels_of: dict[int, ir.Value] = {}
        sizes_of: dict[int, list[ir.Value]] = {}
        for body_input, k in packed.items():
            depth, width = sizes_of[body_input] = [kb.dim(d) for d in operands[k].type.shape]
            count = b.mul(b.mul(b.sdiv(b.add(width, i64(nr - 1)), i64(nr)), i64(nr)), depth)
            panels_of[body_input] = b.call(malloc, [b.add(b.mul(count, i64(4)), i64(ALIGN))])
            owned.append(panels_of[body_input])
        with kb.allocated(owned, "a scan's buffers"):
            for body_input, k in packed.items():
                kb.call_kernel(_b_packer(kb, nr), [arg[k], panels_of[body_input]],
                               sizes_of[body_input], "pack_b")
            for k, t in enumerate(carry_types):
                _memcpy(kb, b.load(cur_p[k]), arg[k], t)
            with kb.for_range(length) as s:
                cur = [b.load(p) for p in cur_p]
                nxt = [b.load(p) for p in nxt_p]
                t = b.sub(b.sub(length, ir.Constant(I64, 1)), s) if a["reverse"] else s
                b.store(t, index)
                ins = list(cur)
                for k, (seq_t, ax) in enumerate(zip(seq_types, axes, strict=True)):
                    ins.append(_step(kb, arg[n_carry + k], seq_t, ax, t, steps[k], gather=True))
                if a["has_index"]:
                    ins.append(b.bitcast(index, PTR))
                ins += arg[n_carry + n_seq:n_in]  # captured outer values
                outs = list(nxt)
                for k, et in enumerate(emit_types):
                    outs.append(emit_tmp[k] if emit_tmp[k] is not None else
                                _step(kb, arg[n_in + k], et, a["axis"], t, None, gather=False))
                inner = GraphEmitter(parent.module, parent.layout, params_p, kb.dims_ptr,
                                     parent.vector_width, kb.status_ptr)
                inner.captured = {k: (v, self.graph.node(v)) for k, v in
                                  captured_weights(self.graph, self.nid).items()}
                inner.shared = parent.shared
                inner.precision = parent.precision
                inner.profile, inner.path = parent.profile, (*parent.path, self.nid)
                inner.packed_per_call = panels_of
                inner.emit(b, body, ins, outs, slot)
                for k, et in enumerate(emit_types):
                    if emit_tmp[k] is not None:  # scatter the step into the stacked output
                        _step(kb, arg[n_in + k], et, a["axis"], t, emit_tmp[k], gather=False)
                for k in range(n_carry):
                    b.store(nxt[k], cur_p[k])
                    b.store(cur[k], nxt_p[k])
            for k, ct in enumerate(carry_types):
                _memcpy(kb, arg[n_in + len(emit_types) + k], b.load(cur_p[k]), ct)
        return kb.finish()


def _packable_b(graph: Graph, nid: int, op_node: dict, slot: int, precision: str) -> bool:
    """Whether node `nid` (a matmul, or a fused group headed by one) reads its input `slot`
    as an f32 matrix B of an f32 product: what the GEMM can read as B panels (PackedB)."""
    if op_node["op"] != "matmul" or precision != "f32":
        return False
    if graph.op(nid) == "fused":
        inner = graph.node(nid)["attrs"]["body"]
        a, b = inner.operands(graph.node(nid)["attrs"]["anchor"])[:2]
    else:
        a, b = graph.operands(nid)[:2]
    return (a is not None and b is not None and a.type.dtype == "f32"
            and b.type.dtype == "f32" and b.type.rank == 2
            and graph.operands(nid)[slot].type == b.type)


def _b_packer(kb: KernelBuilder, nr: int) -> ir.Function:
    """kiln_pack_b_panels(src, dst; K, N): a row-major [K, N] matrix as PackedB's panels,
    [ceil(N / NR), K, NR], zero past column N (packing.prepack_b's layout, made at run
    time). One function per module."""
    name = f"kiln_pack_b_panels_{nr}"
    fn = kb.module.globals.get(name)
    if fn is not None:
        return fn
    pk = kb.shared_helper(name)
    b = pk.b
    src, dst = pk.buffer(0, "f32"), pk.buffer(1, "f32")
    depth, width = (b.load(b.gep(pk.dims_ptr, [i64(i)])) for i in range(2))
    panels = b.sdiv(b.add(width, i64(nr - 1)), i64(nr))
    last = b.sub(width, i64(1))
    with pk.for_range(panels) as p, pk.for_range(depth) as k, pk.for_range(i64(nr)) as j:
        col = b.add(b.mul(p, i64(nr)), j)
        inside = b.icmp_signed("<", col, width)
        at = b.add(b.mul(k, width), b.select(inside, col, last))
        value = b.select(inside, b.load(b.gep(src, [at])), ir.Constant(F32, 0.0))
        b.store(value, b.gep(dst, [b.add(b.mul(b.add(b.mul(p, depth), k), i64(nr)), j)]))
    return pk.finish()


def _memcpy(kb: KernelBuilder, dst, src, t: TensorType) -> None:
    """dst = src, a whole tensor of type t."""
    irgen.memcpy(kb.b, dst, src, kb.nbytes(t.shape, t.dtype))


def _step_type(t: TensorType, axis: int) -> TensorType:
    """One step of a tensor scanned (or stacked) on `axis`."""
    return t.with_shape(t.shape[:axis] + t.shape[axis + 1:])


def _step(kb: KernelBuilder, whole, t: TensorType, axis: int, index, tmp, gather: bool):
    """Step `index` of `whole` along `axis`: on axis 0 a pointer into it; otherwise copied
    into (gather) or out of (scatter) the contiguous buffer `tmp`."""
    b = kb.b
    step_bytes = kb.nbytes(t.shape[axis + 1:], t.dtype)
    if axis == 0:
        return b.gep(whole, [b.mul(index, step_bytes)])
    outer = kb.numel(t.shape[:axis])
    row = b.mul(kb.dim(t.shape[axis]), step_bytes)
    with kb.for_range(outer) as o:
        at_whole = b.gep(whole, [b.add(b.mul(o, row), b.mul(index, step_bytes))])
        at_tmp = b.gep(tmp, [b.mul(o, step_bytes)])
        dst, src = (at_tmp, at_whole) if gather else (at_whole, at_tmp)
        irgen.memcpy(b, dst, src, step_bytes)
    return tmp


def _kernel(module, lowering: Lowering, nid, graph, node, layout, vector_width=None,
            serial: bool = False, split: bool = True,
            prepacked: frozenset[int] = frozenset(), precision: str = "f32") -> ir.Function:
    least = _split_work(lowering, graph, nid, node) if split and not serial else None
    if least is not None:
        split = _batch_split(module, lowering, nid, graph, node, layout, vector_width,
                             prepacked, precision, *least)
        if split is not None:
            return split
    # node ids repeat between a model and its scan bodies: number kernels per module
    kb = KernelBuilder(module, f"k{len(module.functions)}_{lowering.name}", layout.symbols)
    kb.vector_width = vector_width
    kb.precision = precision
    kb.serial = serial
    kb.failures, kb.span = layout.failures, node["span"]
    kb.function.linkage = "internal"  # called only from `run`: inlined, never emitted twice
    operands = graph.operands(nid)
    n = NativeNode([v.type if v is not None else None for v in operands], list(node["types"]),
                   node["attrs"], node["span"], prepacked,
                   tuple(tensor_slot_names(REGISTRY[node["op"]], len(operands))))
    kb.node = n
    lowering.build(kb, n)
    return kb.finish()


# A product heading a fused epilogue (a linear layer's bias and activation, a residual add)
# splits its batch across the threads from ROW_BLOCK rows a thread (one AVX-512 micro-tile
# high): each thread's rows go through the GEMM and then the epilogue while they are in its
# cache, where a GEMM shared by columns left the epilogue a pass over all of C from L3. A
# [1024, 256] @ [256, 1024] product with a bias on two threads: 2.01 -> 1.77 ms; the
# Transformer encoder at batch 32 0.89 of its time. At 8 rows a thread (an MLP at batch 16)
# it was 2 % slower, at 12 8 % faster.
PRODUCTS = ("matmul", "matmul_bt")
ROW_BLOCK = 12
# a block of rows must take the path the whole product takes (the threads must not change the
# result): no block is streamed where the whole C is not
assert ROW_BLOCK > STREAM_ROWS


def _split_work(lowering: Lowering, graph: Graph, nid: int,
                node: dict) -> tuple[int, bool] | None:
    """(the least work, whether it counts rows a thread) at which a node's kernel runs its
    batch on several threads (_batch_split), or None where it may not; work is samples times
    elements per sample of the result unless it counts rows:

    - an op with Prop.SAMPLEWISE (a convolution, alone or heading a fused epilogue): from 2
      elements (so 2 samples), each sample a GEMM's worth of work;
    - an elementwise op or fused chain with a broadcast operand (without one its flat loop,
      or its loop over rows reading a split's parts, is shared by the threads already:
      elementwise.py), or a movement node its record's
      `samplewise` rule accepts (a permute keeping axis 0 first, a pad leaving it alone):
      from elementwise.FLAT_PARALLEL elements, below which threads cost more than they save;
    - a matmul heading a fused epilogue: from ROW_BLOCK rows of the result a thread.
    """
    if Prop.SAMPLEWISE in lowering.props:
        return 2, False
    if (node["op"] == "fused" and node["attrs"].get("anchor") is not None
            and node["attrs"]["body"].op(node["attrs"]["anchor"]) in PRODUCTS):
        return ROW_BLOCK, True
    operands = [v.type if v is not None else None for v in graph.operands(nid)]
    if Prop.ELEMENTWISE in lowering.props:
        out = node["types"][0]
        parts = part_slots(node) if node["op"] == "fused" else frozenset()
        if all(t is None or t.rank == 0 or t.shape == out.shape or slot in parts
               for slot, t in enumerate(operands)):
            return None
        return FLAT_PARALLEL, False
    rec = REGISTRY.get(node["op"])
    if rec is not None and rec.samplewise is not None and rec.samplewise(operands,
                                                                         node["attrs"]):
        return FLAT_PARALLEL, False
    return None


def _sample_types(types: list, out: TensorType) -> str | None:
    """The batch symbol of a kernel whose operand and result types are `types` (None where
    absent) and first result `out`: the symbol `out` leads with, where every type that
    mentions it has out's rank and leads with it, and mentions it nowhere else (a sample
    kernel sees that symbol as its block's sample count); else None."""
    batch = out.shape[0].symbol if out.rank else None
    if batch is None:
        return None
    for t in types:
        if t is None or not any(batch in d.symbols() for d in t.shape):
            continue
        if (t.rank != out.rank or t.shape[0].symbol != batch
                or any(batch in d.symbols() for d in t.shape[1:])):
            return None
    return batch


def _batch_split(module, lowering, nid, graph, node, layout, vector_width, prepacked,
                 precision: str = "f32", min_work: int = 2, by_rows: bool = False):
    """A samplewise node (_split_work) whose first input and results (a fused epilogue may
    have several) lead with the same symbolic batch size runs its samples on several threads
    (each a block of samples, with its GEMMs whole: no packing is done twice), once the
    samples times the elements of one sample of the result reach `min_work`; one sample, or
    one thread, runs the ordinary kernel. An operand without the batch axis (a weight, a
    per-channel operand broadcast over the batch) is read whole by every block. `by_rows`:
    `min_work` counts rows of the result a thread instead (_split_work's products)."""
    operands = graph.operands(nid)
    first, out = operands[0].type, node["types"][0]
    types = [v.type if v is not None else None for v in operands] + list(node["types"])
    batch = _sample_types(types, out)
    if (batch is None or first.rank == 0 or first.shape[0].symbol != batch
            or any(not t.rank or t.shape[0].symbol != batch for t in node["types"])):
        return None
    whole = _kernel(module, lowering, nid, graph, node, layout, vector_width, split=False,
                    prepacked=prepacked, precision=precision)
    samples = _kernel(module, lowering, nid, graph, node, layout, vector_width, serial=True,
                      prepacked=prepacked, precision=precision)
    index = layout.symbols.index(batch)

    def sizes_of(b) -> KernelBuilder:
        kb = KernelBuilder(ir.Module("scratch"), "scratch", layout.symbols)
        kb.b, kb.dims_ptr = b, b.function.args[1]  # the model's sizes (whole batch)
        return kb

    def work(b, _sizes):  # the result's elements: samples times one sample's
        if by_rows:  # rows a thread
            rows = sizes_of(b).numel(out.shape[:-1])
            return b.sdiv(rows, b.load(threads_global(module)))
        return sizes_of(b).numel(out.shape)

    def shift(b, pointers, sizes, row0):
        kb = sizes_of(b)
        moved = list(pointers)
        for i, t in enumerate(types):
            if t is not None and t.rank == out.rank and t.shape[0].symbol == batch:
                sample = kb.nbytes(t.shape[1:], t.dtype)
                moved[i] = b.gep(pointers[i], [b.mul(row0, sample)])
        return moved, list(sizes)

    # a convolution's blocks keep the old uneven split (an odd batch on two threads runs
    # whole): its path can depend on the samples a call has (winograd._lazy_or_gemm: 9
    # samples take F(4, 3), blocks of 4 and 5 the GEMM), and the threads must not change
    # the result. Even batches do not escape it either (10 samples take F(4, 3), blocks of 5
    # the GEMM: not bit-equal to one thread): an open gap, benchmarks/README.md, session 29
    return parallel_rows(module, samples, len(types), max(1, len(layout.symbols)), shift,
                         min_rows=1, min_work=min_work, rows_index=index, work=work,
                         alone=whole, even=Prop.SAMPLEWISE not in lowering.props,
                         name=f"{samples.name}_samples")


def _copy(module, b, src, dst, t: TensorType, dims_p, symbols, status_p) -> None:
    """memcpy of a whole tensor (an output that is also an input or a parameter)."""
    kb = KernelBuilder(module, f"copy{len(module.functions)}", symbols)
    size = kb.nbytes(t.shape, t.dtype)
    src_p, dst_p = (irgen.element(kb.b, kb.args_ptr, i) for i in range(2))
    irgen.memcpy(kb.b, dst_p, src_p, size)
    fn = kb.finish()
    array = b.alloca(PTR, 2)
    b.store(src, b.gep(array, [ir.Constant(I64, 0)]))
    b.store(dst, b.gep(array, [ir.Constant(I64, 1)]))
    b.call(fn, [array, dims_p, status_p])


def ir_text(module: ir.Module, vector_width: int, bodies: dict[str, str] | None = None) -> str:
    """The module as LLVM IR text, for a target whose vectors hold `vector_width` f32s
    (`bodies`: its functions' text, parts.bodies_of, when already made)."""
    return prefer_vector_width(str(module) if bodies is None else
                               parts.module_text(module, bodies), vector_width)


def prefer_vector_width(text: str, vector_width: int) -> str:
    """IR text whose functions ask for 512-bit vectors where the target has them.

    LLVM's loop vectoriser keeps to 256-bit vectors on AVX-512 unless a function asks for
    512 ("prefer-vector-width"), which llvmlite's IR builder cannot spell: add it here.
    """
    if vector_width >= 16:
        text = re.sub(r"^(define [^\n]*)\n\{", r'\1 "prefer-vector-width"="512"\n{', text,
                      flags=re.MULTILINE)
    return text


__all__ = ["build_module", "plan_memory", "ModuleLayout", "KERNEL_TYPE", "I8"]
