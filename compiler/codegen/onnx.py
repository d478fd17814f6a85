"""ONNX emission: one onnx.ModelProto per elaborated model, checked by onnx's own checker.

Each op record's `onnx` function lowers one node through the small `OnnxBuilder` API below
(`node`, `const`, `dim`, `shape`); symbolic sizes become named `dim_param`s, so one file serves
every batch size; parameters are initializers named by their dotted paths; each node carries
the kiln source span it came from (doc_string and metadata) so Netron shows it.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..dims import Dim, assuming
from ..errors import KilnError, Span
from ..files import staged_writes, write_bytes
from ..ir import SIZE_FACTS_KEY, Graph, GraphVisitor
from ..ops import REGISTRY
from ..ops._emit import widened
from ..types import TensorType
from . import onnx_patterns

OPSET = 18
IR_VERSION = 9  # what onnxruntime releases of the last two years load
EXTERNAL_DATA_THRESHOLD = 2 * 1024**3 - 64 * 1024**2  # protobuf's 2 GB limit, with headroom

# onnxruntime (and ONNX itself, for most arithmetic and reductions) has no kernels of the
# narrow integers: every op on them runs on its operands widened exactly, its results cast
# back (wrapping, as kiln's arithmetic on them does)
NARROW_UP = {"i8": "i32", "u8": "i32", "i16": "i32", "u16": "i32", "u32": "i64"}
ONNX_DTYPES = {
    "f32": TensorProto.FLOAT,
    "f16": TensorProto.FLOAT16,
    "bf16": TensorProto.BFLOAT16,
    "f64": TensorProto.DOUBLE,
    "i8": TensorProto.INT8,
    "u8": TensorProto.UINT8,
    "i16": TensorProto.INT16,
    "u16": TensorProto.UINT16,
    "i32": TensorProto.INT32,
    "u32": TensorProto.UINT32,
    "i64": TensorProto.INT64,
    "bool": TensorProto.BOOL,
}


@dataclass
class OnnxNode:
    """What an op's ONNX emitter sees: value names, attributes and types of one node."""

    inputs: list[str | None]
    outputs: list[str]
    attrs: dict
    in_types: list[TensorType | None]
    out_types: list[TensorType]
    span: Span | None


@dataclass
class _Scope:
    """One ONNX graph being filled: the model's, or a Scan body's."""

    nodes: list = field(default_factory=list)
    dims: dict = field(default_factory=dict)  # Dim -> name of its i64 scalar value
    infos: dict = field(default_factory=dict)  # value name -> kiln TensorType
    checks: list = field(default_factory=list)  # (i64 count of failures, message, span)


class OnnxBuilder:
    """The API op emitters call. Names are unique across the model and its bodies."""

    opset = OPSET

    def __init__(self, symbol_sources: dict[str, tuple[str, int]], checked: bool = False,
                 taken: frozenset[str] = frozenset()):
        self.symbol_sources = symbol_sources  # symbol -> (graph input name, axis)
        self.checked = checked  # whether run-time checks become outputs (see `check`)
        self.taken = taken  # names the model gives (ports, parameters): never fresh
        self.initializers: list[TensorProto] = []
        self.scopes: list[_Scope] = [_Scope()]
        self.params_done: set[str] = set()
        self._ids = itertools.count()
        self.span: Span | None = None
        self.scope_path = ""

    # ---------------------------------------------------------------- names and nodes
    def fresh(self, hint: str = "t") -> str:
        name = f"{hint}__{next(self._ids)}"
        while name in self.taken:
            name = f"{hint}__{next(self._ids)}"
        return name

    def node(
        self, op_type: str, inputs: list[str | None], outputs: list[str] | int = 1, **attrs: Any
    ) -> list[str]:
        """Append one ONNX node; returns its output names (fresh ones when given a count)."""
        if isinstance(outputs, int):
            outputs = [self.fresh(op_type.lower()) for _ in range(outputs)]
        attrs = {k: v for k, v in attrs.items() if v is not None}
        inputs = list(inputs)
        while inputs and inputs[-1] is None:  # trailing absent inputs are left out entirely
            inputs.pop()
        proto = helper.make_node(
            op_type,
            ["" if i is None else i for i in inputs],
            outputs,
            name=self.fresh(op_type),
            **attrs,
        )
        if self.span is not None:
            where = f"{self.span.file}:{self.span.line}:{self.span.col}"
            proto.doc_string = where
            for key, value in (("kiln.source", where), ("kiln.block", self.scope_path)):
                entry = proto.metadata_props.add()
                entry.key, entry.value = key, value
        self.scopes[-1].nodes.append(proto)
        return list(outputs)

    def const(self, value, dtype: str | None = None, name: str | None = None) -> str:
        """An initializer holding `value` (an array or a number)."""
        array = np.asarray(value)
        if dtype is not None:
            from ..types import NUMPY_DTYPES

            array = array.astype(NUMPY_DTYPES[dtype])
        name = name or self.fresh("const")
        self.initializers.append(_to_proto(array, name))
        return name

    def ints(self, values) -> str:
        """A 1-D i64 initializer (axes, pads, shapes known at compile time)."""
        return self.const(np.asarray(list(values), dtype=np.int64))

    # ---------------------------------------------------------------- symbolic sizes
    def dim(self, d: Dim | int) -> str:
        """An i64 scalar holding the run-time value of size `d`."""
        d = Dim.of(d)
        if d.is_const:
            return self.const(np.asarray(d.value, dtype=np.int64))
        root = self.scopes[0]
        if d in root.dims:
            return root.dims[d]
        saved, self.scopes = self.scopes, [root]  # sizes are computed once, in the model graph
        try:
            name = self._dim_value(d)
        finally:
            self.scopes = saved
        root.dims[d] = name
        return name

    def _dim_value(self, d: Dim) -> str:
        if d.symbol is not None:
            if d.symbol not in self.symbol_sources:
                raise self.unsupported(f"size {d.symbol} is not the size of any model input")
            source, axis = self.symbol_sources[d.symbol]
            (shape,) = self.node("Shape", [source], 1, start=axis, end=axis + 1)
            (scalar,) = self.node("Squeeze", [shape, self.ints([0])])
            return scalar
        total = None
        for mono, coeff in d.terms:
            term = self.const(np.asarray(coeff, dtype=np.int64))
            for atom, power in mono:
                if isinstance(atom, str):
                    base = self.dim(Dim.of(atom))
                else:
                    num = self.dim(atom.num)
                    op = "Div" if atom.kind == "//" else "Mod"
                    den = self.const(np.asarray(atom.den, dtype=np.int64))
                    # sizes are non-negative, so ONNX's truncating Div is the floor here
                    (base,) = self.node(op, [num, den], 1, **({"fmod": 0} if op == "Mod" else {}))
                for _ in range(power):
                    (term,) = self.node("Mul", [term, base])
            total = term if total is None else self.node("Add", [total, term])[0]
        return total

    def shape(self, dims) -> str:
        """A 1-D i64 tensor of sizes (a shape), symbolic where needed."""
        dims = [Dim.of(d) for d in dims]
        if all(d.is_const for d in dims):
            return self.ints([d.value for d in dims])
        parts = [self.node("Unsqueeze", [self.dim(d), self.ints([0])])[0] for d in dims]
        return self.node("Concat", parts, 1, axis=0)[0]

    def unsupported(self, message: str) -> KilnError:
        return KilnError("K0701", f"cannot express in ONNX: {message}", self.span)

    # ---------------------------------------------------------------- run-time checks
    def check(self, ok: str, message: str) -> None:
        """Report `message` (K0505, at the node's source) where the bool tensor `ok` is false.

        Only a checked export (the onnx target's own session) carries checks: each becomes an
        output counting the failures, read by the runtime after the call, as native code's
        status. An exported file leaves checking to the runtime that runs it."""
        if self.checked:
            (bad,) = self.node("Cast", [self.node("Not", [ok])[0]], 1, to=TensorProto.INT64)
            self.counted(self.node("ReduceSum", [bad], 1, keepdims=0)[0], message, self.span)

    def counted(self, count: str, message: str, span: Span | None) -> None:
        """Record an i64 scalar counting the failures of one check."""
        self.scopes[-1].checks.append((count, message, span))

    def nonempty(self, size: Dim, outputs: list[str], out_types: list[TensorType],
                 emit: Callable[[list[str]], Any]) -> None:
        """`emit(outputs)`, which indexes an axis of `size`; in a checked export, where that
        axis may be empty, only when it is not (every index then fails its check, and
        onnxruntime would raise before the check is read): else the outputs are zeros."""
        if not self.checked:
            emit(outputs)
            return
        self.if_positive(size, outputs, out_types, emit,
                         lambda names: self.zeros(names, out_types))

    def zeros(self, names: list[str], types: list[TensorType]) -> None:
        """Write zeros of each type (its shape symbolic where needed) to `names`."""
        for name, t in zip(names, types, strict=True):
            wide = "f32" if t.dtype == "bf16" else t.dtype  # onnxruntime: no bf16 Expand
            (full,) = self.node("Expand", [self.const(0, wide), self.shape(t.shape)])
            self.node("Cast", [full], [name], to=ONNX_DTYPES[t.dtype])

    def if_positive(self, size: Dim | str, outputs: list[str], out_types: list[TensorType],
                    emit: Callable[[list[str]], Any],
                    otherwise: Callable[[list[str]], Any]) -> None:
        """`emit(outputs)` where `size` (a Dim, or the name of an i64 scalar) is positive,
        else `otherwise(outputs)`: an ONNX If, unless `size` is a known positive constant.
        For what onnxruntime cannot run on an empty axis (it raises, or worse), in exported
        files too."""
        if not isinstance(size, str):
            size = Dim.of(size)
            if size.is_const and size.value > 0:
                emit(outputs)
                return
            size = self.dim(size)
        positive = self.node("Greater", [size, self.const(np.int64(0))])[0]
        branches = {}
        for key, fill in (("then_branch", emit), ("else_branch", otherwise)):
            self.push()
            names = [self.fresh("branch") for _ in outputs]
            fill(names)
            scope = self.pop()
            assert not scope.checks, "a check inside a branch would never be read"
            branches[key] = helper.make_graph(
                scope.nodes, self.fresh(key), [],
                [value_info(n, t) for n, t in zip(names, out_types, strict=True)],
                value_info=[value_info(k, t) for k, t in scope.infos.items()])
        self.node("If", [positive], outputs, **branches)

    # ---------------------------------------------------------------- bodies
    def push(self) -> None:
        self.scopes.append(_Scope())

    def pop(self) -> _Scope:
        return self.scopes.pop()


def _to_proto(array: np.ndarray, name: str) -> TensorProto:
    if array.dtype.name == "bfloat16":
        proto = helper.make_tensor(
            name, TensorProto.BFLOAT16, array.shape, array.view(np.uint16).tobytes(), raw=True
        )
        return proto
    return numpy_helper.from_array(np.asarray(array, order="C"), name)  # 0-d stays 0-d


def value_info(name: str, t: TensorType) -> onnx.ValueInfoProto:
    dims = [d.value if d.is_const else str(d) for d in t.shape]
    return helper.make_tensor_value_info(name, ONNX_DTYPES[t.dtype], dims)


def export(model, params: dict[str, np.ndarray]) -> onnx.ModelProto:
    """The ONNX ModelProto of an ElaboratedModel with the given parameter values."""
    return _export(model, params, checked=False)[0]


# the outputs of a checked export beyond the model's: failure counts, one per check
FAILURE_OUTPUT = "kiln.failures.{}"


def export_checked(model, params: dict[str, np.ndarray]
                   ) -> tuple[onnx.ModelProto, list[tuple[str, Span | None]]]:
    """The model as `export` gives it, with its run-time checks (indices in range): indices
    out of range are replaced (by 0) so onnxruntime never raises on them, and each check adds
    an output FAILURE_OUTPUT.format(k) counting its failures. Returns the proto and the
    (message, span) of each check, to raise as K0505 after a call (as native code's status)."""
    return _export(model, params, checked=True)


def _export(model, params: dict[str, np.ndarray], checked: bool
            ) -> tuple[onnx.ModelProto, list[tuple[str, Span | None]]]:
    with assuming(model.graph.size_facts()):  # emitters compare shapes as the checker did
        return _emit_model(model, params, checked)


def _emit_model(model, params: dict[str, np.ndarray], checked: bool
                ) -> tuple[onnx.ModelProto, list[tuple[str, Span | None]]]:
    graph = model.graph
    sources: dict[str, tuple[str, int]] = {}
    for port in model.inputs:
        for axis, d in enumerate(port.type.shape):
            if d.symbol is not None and d.symbol not in sources:
                sources[d.symbol] = (port.name, axis)
    # fresh names never take a port's or a parameter's (an imported model's parameters may
    # be named const__12, as a fresh name would be)
    taken = frozenset(p.name for p in (*model.inputs, *model.outputs)) | _param_paths(graph)
    b = OnnxBuilder(sources, checked, taken)
    names = _graph_names(graph, model)
    _emit_nodes(b, graph, names, params)
    inputs = [value_info(p.name, p.type) for p in model.inputs]
    outputs = [value_info(p.name, p.type) for p in model.outputs]
    failures = []
    for k, (count, message, span) in enumerate(b.scopes[0].checks):
        b.node("Identity", [count], [FAILURE_OUTPUT.format(k)])
        outputs.append(value_info(FAILURE_OUTPUT.format(k), TensorType("i64", ())))
        failures.append((message, span))
    ports = {p.name for p in (*model.inputs, *model.outputs)}
    infos = [value_info(n, t) for n, t in b.scopes[0].infos.items() if n not in ports]
    _residual_sums(b.scopes[0].nodes, {o.name for o in outputs})
    onnx_graph = helper.make_graph(
        b.scopes[0].nodes, model.name, inputs, outputs, b.initializers, value_info=infos
    )
    proto = helper.make_model(
        onnx_graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="kiln",
        doc_string=f"kiln model {model.name}",
    )
    proto.ir_version = IR_VERSION
    facts = graph.size_facts()
    if facts:  # `where X % k == 0`: what an importer needs to compare sizes as kiln did
        proto.metadata_props.add(key=SIZE_FACTS_KEY,
                                 value=",".join(f"{x}:{k}" for x, k in sorted(facts.items())))
    return proto, failures


def _residual_sums(nodes: list[onnx.NodeProto], outputs: set[str]) -> None:
    """An Add whose result only a LayerNormalization reads (a Transformer's residual
    connection) is written as the two-input Sum, the same operator: onnxruntime (1.32) fuses
    Add + LayerNormalization into its SkipLayerNormalization wherever it can prove the Add's
    operands the same 3-D shape, as kiln's symbolic shapes let it, and on the CPU that kernel
    runs 6-7 times slower than the two it replaces (a [1, 128, 256] residual: 152 against 23
    us); PyTorch's export escapes the fusion only because its shapes are unknown there."""
    readers: dict[str, int] = {}

    def count(graph_nodes) -> None:
        for node in graph_nodes:
            for name in node.input:
                readers[name] = readers.get(name, 0) + 1
            for attr in node.attribute:  # names a subgraph (If, Scan, Loop) captures
                for sub in (*([attr.g] if attr.HasField("g") else []), *attr.graphs):
                    count(sub.node)

    count(nodes)
    made_by = {node.output[0]: node for node in nodes if node.op_type == "Add"}
    for node in nodes:
        add = made_by.get(node.input[0]) if node.op_type == "LayerNormalization" else None
        if add is not None and readers.get(add.output[0]) == 1 and add.output[0] not in outputs:
            add.op_type = "Sum"


def _param_paths(graph: Graph) -> frozenset[str]:
    """The paths of the parameters `graph` and its body graphs read: initializer names."""
    paths = {graph.node(n)["attrs"]["path"] for n in graph.params()}
    for _n, node in graph.g.nodes(data=True):
        for value in node["attrs"].values():
            if isinstance(value, Graph):
                paths |= _param_paths(value)
    return frozenset(paths)


def _graph_names(graph: Graph, model) -> dict[tuple[int, int], str]:
    """Value names: inputs and outputs keep their kiln names, parameters their paths."""
    names: dict[tuple[int, int], str] = {}
    for nid in graph.inputs:
        names[(nid, 0)] = graph.node(nid)["attrs"]["name"]
    for nid in graph.params():
        names[(nid, 0)] = graph.node(nid)["attrs"]["path"]
    for value, name in zip(graph.outputs, graph.output_names):
        key = (value.node, value.index)
        if key not in names:  # an output computed by an op gets the output's name
            names[key] = name
    return names


def _emit_nodes(b: OnnxBuilder, graph: Graph, names: dict, params: dict,
                outputs_named: bool = True) -> None:
    """ONNX nodes for `graph`'s ops; `outputs_named`: its outputs take the graph's
    output names (through Identity where a value already has another name). What ONNX has
    an operator for (onnx_patterns: an LSTM scan, a linear layer) becomes that operator, and
    the nodes only it used are left out."""
    emitter = _NodeEmitter(b, names, params)
    recognised = onnx_patterns.recognise(graph)
    replaced = _replaced_only(graph, {nid: found.reads for nid, found in recognised.items()})
    for nid in graph.order():
        if nid in replaced:
            continue
        node = graph.node(nid)
        b.span, b.scope_path = node["span"], node["scope"]
        if nid in recognised:
            emitter.visit_recognised(graph, nid, node, recognised[nid])
        else:
            emitter.visit(graph, nid)
    aliases: list[tuple[str, str]] = []  # model outputs that are another value
    for value, name in zip(graph.outputs, graph.output_names if outputs_named else []):
        actual = names[(value.node, value.index)]
        if actual != name:
            aliases.append((actual, name))
    for actual, name in aliases:
        b.node("Identity", [actual], [name])


def _replaced_only(graph: Graph, reads: dict[int, list]) -> set[int]:
    """The nodes the outputs need only through a recognised node's operands, which that node
    no longer reads (it reads `reads[nid]`): these are left out. Nodes the outputs never
    needed are still emitted, as they were before recognition."""

    def needed(deps) -> set[int]:
        seen: set[int] = set()
        stack = [v.node for v in graph.outputs]
        while stack:
            nid = stack.pop()
            if nid not in seen:
                seen.add(nid)
                stack.extend(v.node for v in deps(nid) if v is not None)
        return seen

    return needed(graph.operands) - needed(lambda nid: reads.get(nid) or graph.operands(nid))


class _NodeEmitter(GraphVisitor):
    """The ONNX lowering of each kind of node: an op by its record's `onnx` emitter; the ops
    that hold a body graph here, beside the Scan emitter (`scan`, `fused`). `names` maps each
    value (node, output) to its ONNX name."""

    def __init__(self, b: OnnxBuilder, names: dict, params: dict):
        self.b, self.names, self.params = b, names, params

    def visit_param(self, graph: Graph, nid: int, node: dict) -> None:
        path = node["attrs"]["path"]
        if path not in self.b.params_done:  # the model graph's initializers are seen by bodies
            self.b.initializers.append(_to_proto(self.params[path], path))
            self.b.params_done.add(path)
        self.names[(nid, 0)] = path

    def visit_constant(self, graph: Graph, nid: int, node: dict) -> None:
        name = self.names.setdefault((nid, 0), self.b.fresh("const"))
        self.b.const(node["attrs"]["value"], name=name)

    def visit_op(self, graph: Graph, nid: int, node: dict) -> None:
        rec = REGISTRY[node["op"]]
        if rec.onnx is None:
            raise self.b.unsupported(f"the op {node['op']} has no ONNX lowering yet")
        n = self.onnx_node(graph, nid, node)
        narrow = any(t is not None and t.dtype in NARROW_UP for t in (*n.in_types, *n.out_types))
        (widened(rec.onnx, NARROW_UP) if narrow else rec.onnx)(self.b, n)

    def visit_scan(self, graph: Graph, nid: int, node: dict) -> None:
        _emit_scan(self.b, self.onnx_node(graph, nid, node), self.params)

    def visit_recognised(self, graph: Graph, nid: int, node: dict, found) -> None:
        """A node onnx_patterns recognised: ONNX's operator for what it computes, from the
        values it reads (its own operands may not have been emitted)."""
        outputs = self.output_names(nid, node)
        name = self.name_of
        if isinstance(found, onnx_patterns.Recurrent):
            n_carry = node["attrs"]["n_carry"]
            _emit_recurrent(self.b, found, name, outputs, list(node["types"]),
                            [name(v) for v in graph.operands(nid)[:n_carry]])
        else:
            (out,) = outputs
            self.b.node("Gemm", [name(found.a), name(found.w.value), name(found.bias)], [out],
                        transB=int(found.w.transpose))

    def name_of(self, value) -> str:
        return self.names[(value.node, value.index)]

    def output_names(self, nid: int, node: dict) -> list[str]:
        """The node's output names, fresh where not given, each typed (for value_info)."""
        outs = [self.names.setdefault((nid, i), self.b.fresh(node["op"]))
                for i in range(len(node["types"]))]
        for name, t in zip(outs, node["types"]):
            self.b.scopes[-1].infos[name] = t
        return outs

    def visit_fused(self, graph: Graph, nid: int, node: dict) -> None:
        """ONNX has no fused op for these groups: the body's ops, one ONNX node each, in the
        current graph (the body holds no parameters), reading the names of the group's
        operands and writing its result's."""
        n = self.onnx_node(graph, nid, node)
        body: Graph = n.attrs["body"]
        names = {(inner, 0): name for inner, name in zip(body.inputs, n.inputs, strict=True)}
        for value, name in zip(body.outputs, n.outputs, strict=True):
            names[(value.node, value.index)] = name
        b = self.b
        span, scope = b.span, b.scope_path
        _emit_nodes(b, body, names, {}, outputs_named=False)
        b.span, b.scope_path = span, scope

    def onnx_node(self, graph: Graph, nid: int, node: dict) -> OnnxNode:
        """The node as its emitter sees it, its outputs named (and typed, for value_info)."""
        operands = graph.operands(nid)
        outs = self.output_names(nid, node)
        ins = [None if v is None else self.name_of(v) for v in operands]
        return OnnxNode(ins, outs, node["attrs"], [None if v is None else v.type for v in operands],
                        list(node["types"]), node["span"])


def _emit_scan(b: OnnxBuilder, n: OnnxNode, params: dict) -> None:
    """kiln scan -> ONNX Scan: carries are state variables, emits are scan outputs.

    A step index becomes one more scanned input, arange(length); captured outer values are
    referenced by name from inside the body, as ONNX subgraphs may.
    """
    a = n.attrs
    body: Graph = a["body"]
    n_carry, n_seq = a["n_carry"], a["n_seq"]
    carries_in = n.inputs[:n_carry]
    seqs = n.inputs[n_carry : n_carry + n_seq]
    captured = n.inputs[n_carry + n_seq :]
    axes = list(a["axes"])
    if a["has_index"]:
        length = n.in_types[n_carry].shape[axes[0]]
        (steps,) = b.node(
            "Range",
            [b.const(np.asarray(0, np.int64)), b.dim(length), b.const(np.asarray(1, np.int64))],
        )
        seqs = [*seqs, steps]
        axes.append(0)
    names: dict = {}
    body_inputs = []
    fixed = body.inputs[: a["n_fixed_inputs"]]
    for nid in fixed:
        node = body.node(nid)
        name = b.fresh(node["attrs"]["name"])
        names[(nid, 0)] = name
        body_inputs.append(value_info(name, node["types"][0]))
    for nid, outer in zip(body.inputs[a["n_fixed_inputs"] :], captured):
        names[(nid, 0)] = outer
    body_outputs = []
    out_names = []
    for value in body.outputs:
        name = b.fresh("body_out")
        out_names.append(name)
        body_outputs.append(value_info(name, value.type))
    b.push()
    saved_span = b.span
    _emit_nodes(b, body, names, params)
    for value, name in zip(body.outputs, out_names):
        b.node("Identity", [names[(value.node, value.index)]], [name])
    scope = b.pop()
    b.span = saved_span
    for count, _, _ in scope.checks:  # a check in the body: its counts per step, scanned out
        body_outputs.append(value_info(count, TensorType("i64", ())))
    infos = [value_info(k, t) for k, t in scope.infos.items()]
    g = helper.make_graph(
        scope.nodes, b.fresh("scan_body"), body_inputs, body_outputs, value_info=infos
    )
    n_emit = len(body.outputs) - n_carry
    emits_out, carries_out = n.outputs[:n_emit], n.outputs[n_emit:]
    counts_out = [b.fresh("failures") for _ in scope.checks]
    direction = 1 if a["reverse"] else 0
    length = n.in_types[n_carry].shape[axes[0]]

    def scan(outputs: list[str]) -> None:
        scanned_out = {}
        if n_emit + len(counts_out):  # onnx.helper cannot type an empty list attribute
            scanned_out = dict(
                scan_output_axes=[a["axis"]] * n_emit + [0] * len(counts_out),
                scan_output_directions=[direction] * n_emit + [0] * len(counts_out))
        b.node(
            "Scan",
            [*carries_in, *seqs],
            outputs,
            body=g,
            num_scan_inputs=len(seqs),
            scan_input_axes=axes,
            scan_input_directions=[direction] * len(seqs),
            **scanned_out,
        )

    types = [*n.out_types[n_emit:], *n.out_types[:n_emit],
             *(TensorType("i64", (length,)) for _ in counts_out)]
    _if_steps(b, length, (n.inputs[n_carry], axes[0]), carries_in,
              [*carries_out, *emits_out, *counts_out], types, scan)
    for counts, (_, message, span) in zip(counts_out, scope.checks, strict=True):
        b.counted(b.node("ReduceSum", [counts], 1, keepdims=0)[0], message, span)


def _if_steps(b: OnnxBuilder, length: Dim, measured: tuple[str, int], carries_in: list[str],
              outputs: list[str], types: list[TensorType],
              run: Callable[[list[str]], Any]) -> None:
    """`run(outputs)` where a loop of `length` steps has any; else what the reference gives
    for none: the initial carries, and zeros for the rest (emits, empty along the loop's
    axis). `outputs` and `types` list the carries first. onnxruntime's Scan cannot run no
    steps (over axis 0 it raises, over another it dies of SIGFPE), nor can its GRU (it
    aborts) or LSTM (its final state is zeros): an If on the step count, read at run time
    from axis `measured[1]` of the value `measured[0]` (a body's sizes may be its own)."""

    def no_steps(names: list[str]) -> None:
        for carry, name in zip(carries_in, names[:len(carries_in)], strict=True):
            b.node("Identity", [carry], [name])
        b.zeros(names[len(carries_in):], types[len(carries_in):])

    if not Dim.of(length).is_const:
        source, axis = measured
        (length,) = b.node("Squeeze", [b.node("Shape", [source], 1, start=axis,
                                              end=axis + 1)[0]])
    b.if_positive(length, outputs, types, run, no_steps)


def _emit_recurrent(b: OnnxBuilder, rec: onnx_patterns.Recurrent, name: Callable[[Any], str],
                    outputs: list[str], out_types: list[TensorType],
                    carries_in: list[str]) -> None:
    """A scan recognised as one direction of a recurrent layer -> ONNX LSTM/GRU/RNN.

    Weights go from the scan's gate order to ONNX's by a Gather of rows on the parameter
    itself, so every parameter stays an initializer under its own name (onnxruntime folds the
    Gather); ONNX's direction axis is a leading 1; a batch_first sequence is transposed to
    ONNX's [T, B, in] and back, as PyTorch's export does (onnxruntime runs no layout = 1)."""
    cell, hidden = rec.cell, rec.hidden
    rows = cell.gate_rows(hidden)
    first = b.ints([0])

    def gates(value: str) -> str:
        return value if rows is None else b.node("Gather", [value, b.ints(rows)], 1, axis=0)[0]

    def weight(w: onnx_patterns.Weight) -> str:
        value = name(w.value)
        if w.transpose:
            (value,) = b.node("Transpose", [value], 1, perm=[1, 0])
        return b.node("Unsqueeze", [gates(value), first])[0]

    def bias() -> str | None:
        if rec.wb is None and rec.rb is None:
            return None
        width = len(cell.order) * hidden
        halves = [gates(name(v)) if v is not None else b.const(np.zeros(width, np.float32))
                  for v in (rec.wb, rec.rb)]
        return b.node("Unsqueeze", [b.node("Concat", halves, 1, axis=0)[0], first])[0]

    x = name(rec.x)
    if rec.batch_first:
        (x,) = b.node("Transpose", [x], 1, perm=[1, 0, 2])
    initial = [b.node("Unsqueeze", [name(v), first])[0] for v in rec.initial]
    attrs: dict[str, Any] = {"hidden_size": hidden,
                             "direction": "reverse" if rec.reverse else "forward"}
    if cell.op == "GRU":
        attrs["linear_before_reset"] = 1  # r * (h @ R_h^T + Rb_h), as std.rnn and PyTorch
    if cell.activation is not None:
        attrs["activations"] = [cell.activation]
    n_carry = len(carries_in)
    n_emit = len(outputs) - n_carry

    def run(names: list[str]) -> None:  # names: the carries, then the emits
        y = b.fresh("y") if rec.emits else ""
        states = [b.fresh(f"{s}_n") for s in cell.states]
        b.node(cell.op, [x, weight(rec.w), weight(rec.r), bias(), None, *initial], [y, *states],
               **attrs)
        for state, carry in zip(states, rec.carries, strict=True):
            b.node("Squeeze", [state, first], [names[carry]])
        if rec.emits:
            (seq,) = b.node("Squeeze", [y, b.ints([1])])  # [T, 1, B, H] -> [T, B, H]
            if rec.batch_first:
                (seq,) = b.node("Transpose", [seq], 1, perm=[1, 0, 2])
            for k in rec.emits:
                b.node("Identity", [seq], [names[n_carry + k]])

    axis = 1 if rec.batch_first else 0
    _if_steps(b, rec.x.type.shape[axis], (name(rec.x), axis), carries_in,
              [*outputs[n_emit:], *outputs[:n_emit]],
              [*out_types[n_emit:], *out_types[:n_emit]], run)


def save(proto: onnx.ModelProto, path: str | os.PathLike) -> None:
    """Write the model, atomically; weights over 2 GB go to an external data file beside it
    (`path` + `.data`), replaced together with the model. Never written through a symlink."""
    path = os.fspath(path)
    large = proto.ByteSize() > EXTERNAL_DATA_THRESHOLD if _fits(proto) else True
    with staged_writes(lambda why: KilnError("K0403", f"{path}: {why}")) as staging:
        staged = staging.path(path)
        if large:
            data = path + ".data"
            # onnx writes the data file by its location relative to the model, in the same
            # private directory: stage it under its destination's name (none if every
            # tensor is under size_threshold)
            staging.path(data, optional=True)
            onnx.save_model(proto, staged, save_as_external_data=True,
                            all_tensors_to_one_file=True, location=os.path.basename(data),
                            size_threshold=1024)
        else:
            write_bytes(staged, proto.SerializeToString())


def _fits(proto: onnx.ModelProto) -> bool:
    try:
        proto.ByteSize()
        return True
    except Exception:  # protobuf refuses messages over 2 GB
        return False


def check(proto: onnx.ModelProto) -> list[str]:
    """Run onnx's full checker, then onnx's own shape inference on the graph stripped of
    kiln's shapes, and compare: returns every value whose shapes disagree (none, if kiln and
    onnx agree). A failure here is a bug in kiln."""
    onnx.checker.check_model(proto, full_check=True)
    ours = {vi.name: vi for vi in proto.graph.value_info}
    ours.update({vi.name: vi for vi in proto.graph.output})
    bare = onnx.ModelProto()
    bare.CopyFrom(proto)
    del bare.graph.value_info[:]
    inferred = onnx.shape_inference.infer_shapes(bare, strict_mode=True, data_prop=True)
    theirs = {vi.name: vi for vi in inferred.graph.value_info}
    problems = []
    for name, vi in ours.items():
        if name not in theirs:
            continue
        a, b = _dims(vi), _dims(theirs[name])
        if a is None or b is None:
            continue
        if (
            len(a) != len(b)
            or any(isinstance(x, int) and isinstance(y, int) and x != y for x, y in zip(a, b))
            or vi.type.tensor_type.elem_type != theirs[name].type.tensor_type.elem_type
        ):
            problems.append(f"{name}: kiln {a} vs onnx {b}")
    return problems


def _dims(vi: onnx.ValueInfoProto) -> list | None:
    t = vi.type.tensor_type
    if not t.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in t.shape.dim]
