"""From a validated ONNX model (reader.py) to a kiln Graph, node by node through the converters.

    imported = import_graph(read_model("model.onnx"))
    imported.graph, imported.params            # the graph, and each parameter's initial value

The walk, in the reader's topological order:
- a graph input becomes an `input` node; a dim_param becomes a symbolic size of that name (made
  an identifier), a size with neither value nor name a fresh symbol;
- an initializer of a float type becomes a `param` named by its ONNX name (dots are paths), any
  other initializer and every Constant node a constant known at import time; both are made
  on first use, so a shape a converter takes as a number adds no node;
- each node goes to its converter (convert.py) with an OnnxNode. A node that is unsupported
  (Unsupported, an op with no converter, a KilnError from an op's rule) is recorded with its
  name and position, its outputs become unknown, and nodes reading unknown values are skipped
  (but named too when their op has no converter). At the end, one KilnError K0906 lists every
  recorded node: nothing runs before the whole graph converts.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..builder import GraphBuilder
from ..dims import Dim, assuming
from ..errors import KilnError
from ..ir import SIZE_FACTS_KEY, Constraint, Graph, Value
from ..types import TensorType, dtype_of_numpy
from .convert import Unsupported, convert_node, converter_of, similar_ops
from .convert_base import KILN_DTYPES, fold, kiln_dtype
from .convert_control import NodeWithSubgraphs
from .reader import STANDARD_DOMAINS, ReadModel, node_label, node_order
from .unify import paired_axes

SUBGRAPH_ATTRS = (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
FLOAT_ELEMENTS = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16,
                  onnx.TensorProto.DOUBLE)
# how many unsupported nodes the error lists by name (the rest are counted)
MAX_LISTED = 50


@dataclass
class ImportedModel:
    """An ONNX model as kiln holds it: a name, a graph whose inputs and outputs are the
    model's (named as in the file), and the initial value of each parameter by path."""

    name: str
    graph: Graph
    params: dict[str, np.ndarray]
    source: ReadModel
    symbols: dict[str, str] = field(default_factory=dict)  # dim_param -> kiln symbol


def import_graph(model: ReadModel, name: str | None = None,
                 sizes: dict[str, int] | None = None) -> ImportedModel:
    """The kiln graph of `model` (K0906 listing every node kiln cannot convert), with the
    inputs' sizes named in `sizes` (by dim_param or kiln symbol) fixed to those numbers, as
    onnxruntime's free dimension overrides fix them. Where a node does not convert because
    two sizes of the inputs its rule needs equal are distinct symbols (unify.py), they are
    made one and the model converted again."""
    aliases: dict[str, str] = {}
    while True:
        walk = _Walk(model, aliases=aliases, sizes=sizes)
        walk.order = model.order
        walk.inputs()
        unknown = sorted(set(walk.sizes) - set(walk.symbols) - set(walk.symbols.values()))
        if unknown:
            raise KilnError("K0602", f"{model.path}: no input has a size named "
                            f"{', '.join(unknown)}", hint="its inputs' symbolic sizes: "
                            f"{', '.join(sorted(set(walk.symbols.values()))) or 'none'}")
        facts = walk.size_facts()
        with assuming(facts):
            walk.nodes()
            if walk.unified:
                continue  # each round joins two sizes at least: it ends
            walk.finish()
        return ImportedModel(name or model_name(model), walk.graph, walk.used_params(),
                             model, walk.symbols)


def model_name(model: ReadModel) -> str:
    """The model's name: its file's stem in CamelCase (`resnet_18.onnx` -> Resnet18), or its
    graph's name for a model given in memory."""
    from pathlib import Path

    stem = Path(model.path).stem if model.path != "<model>" else model.proto.graph.name
    name = "".join(w[:1].upper() + w[1:] for w in re.split(r"[^A-Za-z0-9]+", stem))
    return identifier(name, "Model")


def identifier(text: str, fallback: str) -> str:
    """`text` as an ASCII identifier: other characters become `_`, a leading digit gets `_`."""
    name = re.sub(r"[^A-Za-z0-9_]", "_", text)
    if not name:
        return fallback
    return f"_{name}" if name[0].isdigit() else name


def decode_attr(attr: onnx.AttributeProto) -> Any:
    """An attribute's value as a converter takes it: tensors as numpy arrays, strings as str,
    subgraphs as GraphProto."""
    value = helper.get_attribute_value(attr)
    if isinstance(value, onnx.TensorProto):
        return numpy_helper.to_array(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, list) and value and isinstance(value[0], bytes):
        return [v.decode("utf-8", "replace") for v in value]
    return value


def constant_value(node: onnx.NodeProto) -> np.ndarray:
    """The value of a Constant node (whichever of its value attributes it has)."""
    if len(node.attribute) != 1:
        raise Unsupported("a Constant has exactly one value attribute")
    attr = node.attribute[0]
    value = decode_attr(attr)
    if attr.name == "sparse_value":
        raise Unsupported("sparse constants are not supported")
    dtypes = {"value_float": np.float32, "value_floats": np.float32, "value_int": np.int64,
              "value_ints": np.int64}
    if attr.name in ("value_string", "value_strings"):
        raise Unsupported("string constants are not supported")
    return np.asarray(value, dtype=dtypes.get(attr.name))


class _Walk:
    """The state of one import: kiln Values and known constants by ONNX name. A subgraph's
    walk (a Scan's body, an If's branch: see `subgraph`) has the walk around it as `parent`,
    where the names it reads without defining them are found."""

    def __init__(self, model: ReadModel, proto: onnx.GraphProto | None = None,
                 graph: Graph | None = None, parent: _Walk | None = None,
                 aliases: dict[str, str] | None = None, sizes: dict[str, int] | None = None):
        self.model = model
        self.proto = proto or model.proto.graph
        self.path = model.path
        self.parent = parent
        self.graph = graph if graph is not None else Graph()
        self.gb = GraphBuilder(self.graph)
        self.values: dict[str, Value] = {}
        self.consts: dict[str, np.ndarray] = {}  # values known at import time, by name
        self.initializers: dict[str, onnx.TensorProto] = {}
        self.unknown: set[str] = set()  # outputs of nodes that did not convert
        self.problems: list[str] = []
        self.symbols: dict[str, str] = parent.symbols if parent else {}
        # sizes made one (unify.py): an axis's key (its dim_param, or `input_axis` for an
        # axis with no name) -> the key of the size it is, and each symbol's key
        self.aliases: dict[str, str] = parent.aliases if parent else \
            aliases if aliases is not None else {}
        self.key_of: dict[str, str] = parent.key_of if parent else {}
        self.unified = False
        self.sizes: dict[str, int] = parent.sizes if parent else sizes or {}
        self.param_paths: set[str] = set()
        self.captured: list[Value] = []  # outer values a body reads, as its extra inputs
        for init in self.proto.initializer:
            self.initializers[init.name] = init
        for sparse in self.proto.sparse_initializer:
            self.problems.append(f"initializer {sparse.values.name}: sparse initializers "
                                 "are not supported")
            self.unknown.add(sparse.values.name)

    # inputs ---------------------------------------------------------------------------------
    def inputs(self) -> None:
        """An `input` node per graph input that is not an initializer (before IR 4, every
        initializer was listed as an input too)."""
        for info in self.proto.input:
            if info.name in self.initializers:
                continue
            try:
                type_ = self.input_type(info)
            except Unsupported as err:
                self.problems.append(f"input {info.name}: {err.reason}")
                self.unknown.add(info.name)
                continue
            self.values[info.name] = self.graph.add_input(info.name, type_, None)

    def input_type(self, info: onnx.ValueInfoProto) -> TensorType:
        """The kiln type of a graph input: its element type, and a size or symbol per axis."""
        if not info.type.HasField("tensor_type"):
            raise Unsupported("only tensor inputs are supported (not sequences, maps or "
                              "optionals)")
        tensor = info.type.tensor_type
        dtype = kiln_dtype(tensor.elem_type, "its element type")
        if not tensor.HasField("shape"):
            raise Unsupported("its rank is not given: kiln needs each input's rank")
        shape: list[Any] = []
        for axis, d in enumerate(tensor.shape.dim):
            if d.HasField("dim_value") and d.dim_value >= 0:
                shape.append(int(d.dim_value))
            else:  # an empty dim_param names no size: a size of its own
                param = d.dim_param or f"{info.name}_{axis}"
                key = self.size_key(param)
                symbol = self.symbol(key)
                self.symbols.setdefault(param, symbol)  # a name made one: the same
                fixed = next((self.sizes[k] for k in (symbol, key, param) if k in self.sizes),
                             None)
                shape.append(symbol if fixed is None else fixed)
        return TensorType(dtype, tuple(shape))

    def symbol(self, dim_param: str) -> str:
        """The kiln symbol of a dim_param: the same name for the same dim_param, each an
        identifier (`--bind` takes it) and distinct."""
        if dim_param not in self.symbols:
            base = identifier(dim_param, "D")
            name, k = base, 1
            while name in self.symbols.values():
                name, k = f"{base}_{k}", k + 1
            self.symbols[dim_param] = name
            self.key_of[name] = dim_param
        return self.symbols[dim_param]

    def size_key(self, key: str) -> str:
        """The key of the size an input's axis is: its own, or the one it was made one with
        (the first input's)."""
        while key in self.aliases:
            key = self.aliases[key]
        return key

    def unify(self, proto: onnx.NodeProto, attrs: dict[str, Any]) -> None:
        """Make one size of each two distinct symbols of the inputs that `proto`'s rule needs
        equal (unify.py), the later one named as the earlier: `unified` asks for another
        round of the import."""
        types = [v.type if v is not None else None for v in
                 (self.value(n) if n else None for n in proto.input)]
        for a, b in paired_axes(proto.op_type, attrs, types):
            keys = [self.key_of.get(d.symbol or "") for d in (a, b)]
            if None in keys or keys[0] == keys[1]:
                continue
            first, later = sorted(keys, key=list(self.key_of.values()).index)
            self.aliases[later] = first
            root = self
            while root.parent is not None:
                root = root.parent
            root.unified = True

    def size_facts(self) -> dict[str, int]:
        """The divisibility facts kiln's own export records (`kiln.size_facts`: `H:4,W:4`, for
        a model's `where H % 4 == 0`), on the inputs' symbols: sizes are compared under them
        while converting, and every call checks them, as the kiln model did. An entry that
        names no symbol of the inputs or no divisor in 2..2**31 is ignored."""
        symbols = {s for i in self.graph.inputs for d in self.graph.node(i)["types"][0].shape
                   for s in d.symbols()}
        text = next((p.value for p in self.model.proto.metadata_props
                     if p.key == SIZE_FACTS_KEY), "")
        facts: dict[str, int] = {}
        for entry in text.split(",", 64)[:64]:  # a bounded number of entries
            symbol, _, k = entry.partition(":")
            symbol = self.symbols.get(symbol, symbol)
            if symbol in symbols and k.isdigit() and 2 <= int(k) <= 2**31:
                facts[symbol] = int(k)
                self.graph.constraints.append(Constraint(
                    "==", Dim.of(symbol) % int(k), Dim.of(0), f"{symbol} % {k} == 0", None))
        return facts

    # values by name -------------------------------------------------------------------------
    def value(self, name: str) -> Value | None:
        """The kiln Value of ONNX name `name`: made on first use for an initializer (a param
        if of float type, else a constant) or a Constant (a constant; None where kiln has no
        such element type, the value being known still)."""
        if name in self.values:
            return self.values[name]
        if self.parent is not None and name not in self.initializers and \
                name not in self.consts:
            return self.outer(name)
        init = self.initializers.get(name)
        if init is not None and init.data_type in FLOAT_ELEMENTS:
            array = self.known(name)
            (value,) = self.graph.add("param", [], {"path": name, "kind": "param"},
                                      [TensorType(KILN_DTYPES[init.data_type], array.shape)])
            self.param_paths.add(name)
        elif name in self.consts or init is not None:
            array = self.known(name)
            if array is None or dtype_of_numpy(array.dtype) is None:
                return None
            value = self.gb.constant(array)
        else:
            return None
        self.values[name] = value
        return value

    def known(self, name: str) -> np.ndarray | None:
        """The value of an initializer or a Constant's output, read on first use."""
        if name not in self.consts and name in self.initializers:
            self.consts[name] = numpy_helper.to_array(self.initializers[name])
        if name not in self.consts and self.parent is not None:
            return self.parent.known(name)  # ONNX names are unique across a model's graphs
        return self.consts.get(name)

    def outer(self, name: str) -> Value | None:
        """A name of an enclosing graph, read from a subgraph: the same Value when the
        subgraph is built into the enclosing graph (an If's branch), else a new input of the
        body, fed by the outer Value (a scan's captured value)."""
        value = self.parent.value(name)
        if value is None or self.graph is self.parent.graph:
            return value
        known = self.parent.known(name)
        if known is None:  # computed from constants alone (a shape from Shape ops): known too
            known = fold(self.parent.graph, value)
        if known is not None and name not in self.parent.param_paths \
                and dtype_of_numpy(known.dtype) is not None:
            inner = self.gb.constant(known)  # a constant is a constant inside a body too
        else:
            inner = self.graph.add_input(f"captured_{len(self.captured)}", value.type, None)
            self.captured.append(value)
        self.values[name] = inner
        return inner

    def subgraph(self, proto: onnx.GraphProto, input_types: list[TensorType] | None
                 ) -> tuple[list[Value], Graph, list[Value]]:
        """Convert a node's subgraph. With `input_types` (a Scan's body): into a new Graph
        whose inputs are the subgraph's, of those types, then one per outer value it reads;
        returns its outputs, the Graph and those outer values. With None (an If's branch,
        which has no inputs): into this walk's graph; returns its outputs."""
        graph = self.graph if input_types is None else Graph()
        walk = _Walk(self.model, proto, graph, self)
        if input_types is not None:
            if len(input_types) != len(proto.input):
                raise Unsupported(f"its body takes {len(proto.input)} inputs, not "
                                  f"{len(input_types)}")
            for info, t in zip(proto.input, input_types):
                walk.values[info.name] = graph.add_input(info.name, t, None)
        outer = frozenset(self.scope_names())
        walk.order = node_order(proto, self.path, outer)
        walk.nodes()
        if walk.problems:
            raise Unsupported("in its subgraph: " + "; ".join(walk.problems))
        outputs = [walk.value(o.name) for o in proto.output]
        if any(v is None for v in outputs):
            raise Unsupported("its subgraph has an output kiln cannot compute")
        if input_types is not None:
            graph.outputs = outputs
        return outputs, graph, walk.captured

    def scope(self, values: dict[str, Value | None], consts: dict[str, np.ndarray | None]
              ) -> Callable[..., Any]:
        """The `subgraph` converter of a scope around this walk's graph that holds `values`
        and `consts` by name (a function body's: its nodes' subgraphs read those names)."""
        walk = _Walk(self.model, onnx.GraphProto(), self.graph, self)
        walk.values.update({k: v for k, v in values.items() if v is not None})
        # every local name is in consts (None: not known), so no lookup of a local name
        # reaches an outer name that happens to be spelled the same
        # (a body's values computed from constants alone, its Constants' among them, are
        # known: a Scan's body inside it takes them as numbers, as the model's own)
        walk.consts.update({k: consts.get(k) if consts.get(k) is not None else
                            None if v is None else fold(self.graph, v)
                            for k, v in values.items()})
        walk.param_paths = {k for k, v in values.items()
                            if v is not None and self.graph.node(v.node)["op"] == "param"}
        return walk.subgraph

    def scope_names(self) -> set[str]:
        """Every name this walk and those around it can give a subgraph."""
        names = set(self.values) | set(self.initializers) | set(self.consts)
        names |= {o for n in self.proto.node for o in n.output if o}
        names |= {i.name for i in self.proto.input}
        return names | (self.parent.scope_names() if self.parent else set())

    # nodes ----------------------------------------------------------------------------------
    def nodes(self) -> None:
        """Convert every node in order, recording what does not convert."""
        for index in self.order:
            proto = self.proto.node[index]
            label = node_label(proto, index)
            domain = "" if proto.domain in STANDARD_DOMAINS else proto.domain
            known_op = converter_of(domain, proto.op_type) is not None and \
                domain in self.model.opsets
            if not known_op and (domain or proto.op_type != "Constant"):
                where = f" of domain {proto.domain!r}" if domain else ""
                close = similar_ops(domain, proto.op_type)
                near = f" (kiln converts {', '.join(close)})" if close else ""
                self.fail(proto, f"{label}: kiln has no converter for {proto.op_type}{where}"
                          f"{near}")
                continue
            if any(n in self.unknown for n in proto.input if n):
                self.unknown.update(proto.output)  # its input's node is listed already
                continue
            try:
                self.convert(proto, index)
            except (Unsupported, KilnError) as err:
                self.unify(proto, {a.name: decode_attr(a) for a in proto.attribute})
                reason = err.reason if isinstance(err, Unsupported) else err.message
                self.fail(proto, f"{label}: {reason}")

    def fail(self, proto: onnx.NodeProto, message: str) -> None:
        self.problems.append(message)
        self.unknown.update(proto.output)

    def convert(self, proto: onnx.NodeProto, index: int) -> None:
        """One node: its converter's Values bound to its output names."""
        if proto.op_type == "Constant":
            (out,) = proto.output
            self.consts[out] = constant_value(proto)
            return
        if self.exact_widening(proto):
            self.values[proto.output[0]] = self.value(proto.input[0])
            return
        node = NodeWithSubgraphs(
            subgraph=self.subgraph if any(a.type in SUBGRAPH_ATTRS for a in proto.attribute)
            else None, scope=self.scope,
            name=proto.name or f"#{index}", op_type=proto.op_type, domain=proto.domain,
            index=index, opset=self.model.opsets.get(
                "" if proto.domain in STANDARD_DOMAINS else proto.domain, self.model.opset),
            attrs={a.name: decode_attr(a) for a in proto.attribute},
            inputs=[self.value(n) if n else None for n in proto.input],
            consts=[self.known(n) if n else None for n in proto.input],
            outputs=list(proto.output))
        outs = convert_node(self.gb, node)
        for name, value in zip(proto.output, outs):
            if name and value is not None:
                self.values[name] = value
        for name in proto.output[len(outs):]:
            if name:
                self.unknown.add(name)

    def exact_widening(self, proto: onnx.NodeProto) -> bool:
        """Whether `proto` casts a float to DOUBLE (computing in f64 for nothing) only
        for ops whose results are the same on the value kept as it was: IsInf and IsNaN, and
        a Cast to another type (PyTorch's TorchScript exporter writes `torch.isinf(x)` as
        `IsInf(Cast(x, to=DOUBLE))`). The widening is exact, so the value stands for it."""
        if proto.op_type != "Cast" or len(proto.input) != 1 or not proto.output[0]:
            return False
        to = next((a.i for a in proto.attribute if a.name == "to"), None)
        source = self.value(proto.input[0])
        if to != onnx.TensorProto.DOUBLE or source is None or \
                source.type.dtype not in ("f32", "f16", "bf16"):
            return False
        out = proto.output[0]
        if any(o.name == out for o in self.proto.output) or any(
                a.type in SUBGRAPH_ATTRS for n in self.proto.node for a in n.attribute):
            return False  # (a subgraph's reads of it are not looked for)
        readers = [n for n in self.proto.node if out in n.input]
        return bool(readers) and all(
            n.op_type in ("IsInf", "IsNaN") or (n.op_type == "Cast" and not any(
                a.name == "to" and a.i == onnx.TensorProto.DOUBLE for a in n.attribute))
            for n in readers)

    # the end --------------------------------------------------------------------------------
    def finish(self) -> None:
        """The graph's outputs, or K0906 listing every node that did not convert."""
        missing = [o.name for o in self.model.proto.graph.output
                   if o.name not in self.unknown and self.value(o.name) is None]
        for name in missing:
            self.problems.append(f"output {name}: no converter produced it")
        if self.problems:
            listed = self.problems[:MAX_LISTED]
            more = len(self.problems) - len(listed)
            lines = "\n  ".join(listed) + (f"\n  ... and {more} more" if more else "")
            raise KilnError("K0906", f"{self.path}: kiln cannot import {len(self.problems)} "
                            f"node{'s' if len(self.problems) > 1 else ''} of this model:\n  "
                            f"{lines}", hint=self.hint(listed))
        for o in self.model.proto.graph.output:
            declared = KILN_DTYPES.get(o.type.tensor_type.elem_type) \
                if o.type.HasField("tensor_type") else None
            computed = self.value(o.name).type.dtype
            if declared is not None and declared != computed:
                raise KilnError("K0903", f"{self.path}: the graph output '{o.name}' is declared "
                                f"{declared} but its node computes {computed}",
                                hint="onnxruntime refuses this model too: the output's type "
                                "in the file is wrong")
        self.graph.outputs = [self.as_declared(self.value(o.name), o)
                              for o in self.model.proto.graph.output]
        self.graph.output_names = [o.name for o in self.model.proto.graph.output]
        self.graph.prune()

    def hint(self, problems: list[str]) -> str:
        """What to do about K0906's `problems`: where they name a symbolic size of the inputs
        (an exporter that traced `seq` as the number 7 reshapes `[seq, ...]` to `[7, ...]`),
        fixing that size; for an op of onnxruntime's own domain, where it comes from."""
        hints = ["docs/onnx-import.md lists the supported ops"]
        symbols = {s for i in self.graph.inputs for d in self.graph.node(i)["types"][0].shape
                   for s in d.symbols()}
        named = sorted(s for s in symbols if any(re.search(rf"\b{re.escape(s)}\b", p)
                                                 for p in problems))
        if named:
            hints.insert(0, f"if the exporter fixed a size of the inputs (here "
                         f"{', '.join(named)}) to a number while tracing, fix that size when "
                         f"compiling: kiln.compile(path, args={{'{named[-1]}': N}}) or `--arg "
                         f"{named[-1]}=N`, as onnxruntime's free dimension overrides do")
        if any("of domain 'com.microsoft'" in p for p in problems):
            hints.insert(0, "com.microsoft ops are onnxruntime's own, written by its graph "
                         "optimizer or transformer fusion: import the model as exported, "
                         "before optimization (SessionOptions.graph_optimization_level = "
                         "ORT_DISABLE_ALL, or no optimized_model_filepath)")
        return "; ".join(hints)

    def as_declared(self, value: Value, info: onnx.ValueInfoProto) -> Value:
        """An output in the shape the file declares for it where that is the same shape
        written otherwise (`H` for `4*(H//4)` under `H % 4 == 0`): each axis declared with a
        size or a symbol of the inputs; other axes keep the size kiln inferred."""
        dims = info.type.tensor_type.shape.dim if info.type.HasField("tensor_type") else []
        if len(dims) != value.type.rank:
            return value
        inputs = {s for i in self.graph.inputs for d in self.graph.node(i)["types"][0].shape
                  for s in d.symbols()}
        shape = []
        for d, inferred in zip(dims, value.type.shape):
            declared = (Dim.of(int(d.dim_value)) if d.HasField("dim_value") else
                        Dim.of(self.symbols.get(d.dim_param, "")) if d.dim_param else None)
            usable = declared is not None and declared.symbols() <= inputs
            shape.append(declared if usable and declared == inferred else inferred)
        if tuple(shape) == tuple(value.type.shape) and all(
                a.terms == b.terms for a, b in zip(shape, value.type.shape)):
            return value
        return self.gb.reshape(value, shape)  # the same elements, typed as declared

    def used_params(self) -> dict[str, np.ndarray]:
        """The initial value of each parameter a node still reads (the converters may have
        taken some as numbers: an initializer holding Resize's scales)."""
        live = {self.graph.node(n)["attrs"]["path"] for n in self.graph.params()}
        return {name: self.consts[name] for name in self.initializers if name in live}
