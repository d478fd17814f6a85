"""The elaborator: from a loaded file and a model name to a checked graph with named parameters."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ..dims import Dim, assuming
from ..errors import KilnError, Span, combine
from ..ir import Graph, Value
from ..limits import CALL_STEPS, MAX_GRAPH_NODES, MAX_UNROLLED_STEPS, LimitExceeded
from ..ops import REGISTRY
from ..syntax import ast as A
from ..types import DTYPES, TensorType
from .builtins import BuiltinMixin
from .exprs import ExprMixin, Poisoned, describe
from .forward import ForwardMixin
from .members import MemberMixin, ParamSlot
from .program import ModuleScope
from .scope import Scope, Unbound
from .values import ABSENT, BlockRef, Namespace, ParamInfo, Tensor


@dataclass
class Frame:
    """A graph being built: the model's, or a scan body's (which captures outer values)."""

    graph: Graph
    captures: list[Value] = field(default_factory=list)  # outer values, by capture order
    capture_map: dict = field(default_factory=dict)  # outer (node, index) -> body Value
    emits: list | None = None  # scan bodies collect `emit` here
    params: dict[str, Value] = field(default_factory=dict)


@dataclass(frozen=True)
class Port:
    """A model input or output: its name, type, and whether it may be left out."""

    name: str
    type: TensorType
    optional: bool = False
    span: Span | None = None

    def __str__(self) -> str:
        return f"{self.name}: {self.type}{'?' if self.optional else ''}"

    __repr__ = __str__  # a list of ports prints as a signature: [x: f32[B, 784]]


@dataclass
class ElaboratedModel:
    """A model after elaboration: its graph, signature and parameters."""

    name: str
    args: dict[str, Any]
    graph: Graph
    inputs: list[Port]
    outputs: list[Port]
    params: dict[str, ParamInfo]
    aliases: dict[str, str]  # tied path -> canonical path
    symbols: list[str]
    present: frozenset[str]  # the optional inputs this graph was built with
    # block-instance path -> the block's name ('' -> the model), for `kiln summary`
    blocks: dict[str, str] = field(default_factory=dict)

    def macs_by_scope(self) -> dict[str, Dim]:
        """Multiply-accumulates of one call, per block-instance path ('' is the model)."""
        out: dict[str, Dim] = {}
        _count_macs(self.graph, Dim.of(1), out)
        return out


def _count_macs(graph: Graph, times: Dim, out: dict) -> None:
    for nid in graph.order():
        node = graph.node(nid)
        rec = REGISTRY.get(node["op"])
        if rec is None:
            continue
        if node["op"] == "scan":
            attrs = node["attrs"]
            first_seq = graph.operands(nid)[attrs["n_carry"]]
            length = first_seq.type.shape[attrs["axes"][0]]
            _count_macs(attrs["body"], times * length, out)
            continue
        if rec.macs is None:
            continue
        types = [v.type if v is not None else None for v in graph.operands(nid)]
        macs = rec.macs(types, node["types"], node["attrs"])
        out[node["scope"]] = out.get(node["scope"], Dim.of(0)) + macs * times


class Elaborator(ExprMixin, MemberMixin, ForwardMixin, BuiltinMixin):
    """Elaborates one model of a loaded file. Use `elaborate_model`."""

    def __init__(self, module: ModuleScope):
        self.module = module
        self.errors: list[KilnError] = []
        self.stack: list[tuple[str, Span]] = []
        self.graphs: list[Frame] = [Frame(Graph())]
        self.params: dict[str, ParamInfo] = {}
        self.param_owners: dict[str, Any] = {}
        self.aliases: dict[str, str] = {}
        self.instances: list = []
        self.member_scope_depth = 0
        self.current_paths: list[str] = [""]  # the block instance whose forward is running
        self.size_facts: dict[str, int] = {}  # `where X % k == 0` facts: {X: k}
        self.sizes_seen: list[Dim] = []  # distinct sizes, as first spelled (spelled_as_seen)
        self.steps = 0  # loop iterations and calls so far (limits.MAX_UNROLLED_STEPS)
        self.nodes = 0  # graph nodes so far (limits.MAX_GRAPH_NODES)

    # ------------------------------------------------------------------ errors
    def chain_notes(self) -> tuple[str, ...]:
        """`in Block, used at file:line:col` for each block or fn being elaborated, innermost
        first."""
        return tuple(
            f"in {name}, used at {span}" for name, span in reversed(self.stack) if span is not None
        )

    def report(self, err: KilnError) -> None:
        chain = self.chain_notes()
        if isinstance(err, LimitExceeded):  # no recovery: stop the elaboration here
            if chain and not err.notes:
                err.notes = chain
            raise err
        for e in err.all:
            if chain and not e.notes:
                e.notes = chain
            if all(e.format_one() != prev.format_one() for prev in self.errors):
                self.errors.append(e)
        err.others = []

    # ------------------------------------------------------------------ graphs
    @property
    def root_graph(self) -> Graph:
        return self.graphs[0].graph

    def new_frame(self, emits=None) -> Frame:
        return Frame(Graph(), emits=emits)

    def wrap(self, value: Value, graph: Graph) -> Tensor:
        return Tensor(value, graph)

    def use(self, t: Tensor) -> Tensor:
        """`t` as a value of the graph being built, capturing it into scan bodies as needed."""
        frames = self.graphs
        if t.graph is frames[-1].graph:
            return t
        level = next((i for i, f in enumerate(frames) if f.graph is t.graph), None)
        if level is None:
            raise KilnError("K0201", "a tensor from another model or scan is used here", None)
        value = t.value
        for frame in frames[level + 1 :]:
            key = (value.node, value.index)
            if key not in frame.capture_map:
                frame.captures.append(value)
                name = f"captured{len(frame.captures) - 1}"
                frame.capture_map[key] = frame.graph.add_input(name, value.type, None)
            value = frame.capture_map[key]
        return Tensor(value, frames[-1].graph)

    def spend(self, steps: int, span: Span | None) -> None:
        """Count `steps` loop iterations or calls against the elaboration's budget."""
        self.steps += steps
        if self.steps > MAX_UNROLLED_STEPS:
            raise LimitExceeded(
                f"the model unrolls more than {MAX_UNROLLED_STEPS:,} loop iterations at compile "
                f"time (a fn call or block instance counts as {CALL_STEPS})", span
            )

    def count_node(self, span: Span | None) -> None:
        """Count one graph node against the limit on graph size."""
        self.nodes += 1
        if self.nodes > MAX_GRAPH_NODES:
            raise LimitExceeded(
                f"the model's graph grows past {MAX_GRAPH_NODES:,} nodes "
                "(loops and blocks are unrolled at compile time)", span
            )

    def add_node(self, op: str, inputs: list, attrs: dict, types, span: Span) -> list[Tensor]:
        self.count_node(span)
        frame = self.graphs[-1]
        values = [self.use(t).value if t is not None else None for t in inputs]
        scope = self.path_of_stack()
        types = [self.spelled_as_seen(t) for t in types]
        uses = self.chain_notes()
        if uses and span is not None:  # a run-time failure of this node names the user's line
            span = dataclasses.replace(span, uses=uses)
        outs = frame.graph.add(op, values, attrs, types, span, scope)
        return [Tensor(v, frame.graph) for v in outs]

    def spelled_as_seen(self, t: TensorType) -> TensorType:
        """t with each size that equals, given the `where` facts, a size met earlier (an input's
        first) spelled as that one: a U-Net's up-sampled path is [B, C, H//2, W//2], not
        [B, C, 2*(H//4), 2*(W//4)]. Every later comparison is made under the same facts."""
        if not self.size_facts:
            return t
        shape = []
        for d in t.shape:
            same = next((s for s in self.sizes_seen if s == d), None)
            if same is None:
                self.sizes_seen.append(d)
            shape.append(d if same is None else same)
        return t.with_shape(tuple(shape))

    def path_of_stack(self) -> str:
        return self.current_paths[-1] if self.current_paths else ""

    # ------------------------------------------------------------------ members as values
    def read_member(self, value, span: Span):
        if isinstance(value, ParamSlot):
            return self.read_param(value.path, span)
        return value

    def read_param(self, path: str, span: Span) -> Tensor:
        path = self.aliases.get(path, path)
        frame = self.graphs[-1]
        if path not in frame.params:
            self.count_node(span)
            info = self.params[path]
            (value,) = frame.graph.add(
                "param",
                [],
                {"path": path, "kind": info.kind},
                [TensorType(info.dtype, info.shape)],
                span,
                path.rsplit(".", 1)[0] if "." in path else "",
            )
            frame.params[path] = value
        return Tensor(frame.params[path], frame.graph)

    def resolve_const(self, module: ModuleScope, name: str):
        if name in module.const_values:
            return module.const_values[name]
        if name in module.evaluating:
            raise KilnError(
                "K0106", f"const {name} is defined in terms of itself", module.consts[name].span
            )
        module.evaluating.add(name)
        try:
            stmt = module.consts[name]
            value = self.eval(stmt.value, Scope({}, None, module, None, False, self.resolve_const))
            if isinstance(value, Tensor):
                raise KilnError(
                    "K0203",
                    f"const {name} must be known at compile time, not {describe(value)}",
                    stmt.value.span,
                )
        finally:
            module.evaluating.discard(name)
        module.const_values[name] = value
        return value

    # ------------------------------------------------------------------ models
    def elaborate_model(
        self, ref: BlockRef, args: dict[str, Any], present: frozenset[str] | None
    ) -> ElaboratedModel:
        # sizes compare under the `where X % k == 0` facts found so far (check_where adds them)
        with assuming() as self.size_facts:
            return self.elaborate_checked(ref, args, present)

    def elaborate_checked(
        self, ref: BlockRef, args: dict[str, Any], present: frozenset[str] | None
    ) -> ElaboratedModel:
        defn = ref.defn
        try:
            self.check_file_requires(self.module)
            root = self.instantiate(ref.extend((), args), "", defn.span)
        except Poisoned:
            root = None
        except KilnError as err:
            self.report(err)
            root = None
        if root is None or self.errors:
            raise combine(self.errors or [KilnError("K0201", "elaboration failed", defn.span)])
        fwd = root.forward
        if fwd is None:
            raise KilnError("K0201", f"model {defn.name} has no forward", defn.span)
        inputs, feed = self.model_inputs(root, fwd, present)
        outputs: list[Port] = []
        try:
            result = self.apply_forward(root, feed, {}, fwd.span)
            results = result if isinstance(result, tuple) else (result,)
            for i, r in enumerate(results):
                if not isinstance(r, Tensor):
                    raise KilnError(
                        "K0202",
                        f"model {defn.name} must return tensors, but result {i} is {describe(r)}",
                        fwd.span,
                    )
            names = self.output_names(fwd, inputs, len(results))
            graph = self.root_graph
            graph.outputs = [r.value for r in results]
            graph.output_names = names
            outputs = [Port(n, r.type) for n, r in zip(names, results, strict=True)]
        except Poisoned:
            pass
        except KilnError as err:
            self.report(err)
        self.resolve_initializers()
        if self.errors:
            raise combine(self.errors)
        graph = self.root_graph
        graph.prune()
        symbols = sorted({s for p in inputs for d in p.type.shape for s in d.symbols()})
        return ElaboratedModel(
            defn.name,
            dict(args),
            graph,
            inputs,
            outputs,
            dict(self.params),
            dict(self.aliases),
            symbols,
            frozenset(p.name for p in inputs if p.optional),
            {inst.path: inst.ref.defn.name for inst in self.instances},
        )

    def output_names(self, fwd: A.Forward, inputs: list[Port], count: int) -> list[str]:
        """The model's output names: those its signature gives (`-> (mu: f32[..], ..)`), the
        rest `output` (a single result) or `output_<i>`; each must be new among the model's
        inputs, outputs and top-level parameters, since ONNX names them all in one graph."""
        names = default_output_names(count)
        taken = {p.name: "an input" for p in inputs}
        taken.update({path: "a parameter" for path in self.params if "." not in path})
        declared = fwd.result_names if count == len(fwd.result_names) else (None,) * count
        taken.update({n: "another output" for n, d in zip(names, declared, strict=True) if not d})
        for i, name in enumerate(declared):
            if name is None:
                continue
            if name in taken:
                raise KilnError(
                    "K0106", f"output {name} has the name of {taken[name]}", fwd.results[i].span
                )
            taken[name] = "another output"
            names[i] = name
        return names

    def check_file_requires(self, module: ModuleScope) -> None:
        """File-level `require`s of this file and of every file it imports."""
        seen: set[int] = set()
        stack = [module]
        while stack:
            mod = stack.pop()
            if id(mod) in seen:
                continue
            seen.add(id(mod))
            scope = Scope({}, None, mod, None, False, self.resolve_const)
            for req in mod.requires:
                self.check_require(req, scope)
            for value in mod.names.values():
                if isinstance(value, Namespace) and value.kind == "module":
                    stack.append(value.target)
                elif isinstance(value, tuple) and value and value[0] == "import":
                    stack.append(value[1])

    def model_inputs(self, root, fwd: A.Forward, present):
        graph = self.root_graph
        env_scope = Scope(root.env, None, root.ref.module, None, False, self.resolve_const)
        inputs, feed = [], []
        symbols: dict[str, Dim] = {}
        for d in fwd.inputs:
            if d.type is None:
                raise KilnError(
                    "K0201",
                    f"model input {d.name} needs a type, e.g. {d.name}: f32[B, 784]",
                    d.span,
                )
            t = d.type
            dtype = t.dtype or "f32"
            if dtype not in DTYPES:
                raise KilnError(
                    "K0302",
                    f"unknown element type {dtype}",
                    t.span,
                    hint=f"element types: {', '.join(DTYPES)}",
                )
            shape = []
            for axis, dim in enumerate(t.dims):
                if isinstance(dim, A.EllipsisLit):
                    raise KilnError(
                        "K0301",
                        "a model input needs a fixed number of axes; "
                        "use a name or _ instead of ...",
                        dim.span,
                    )
                if isinstance(dim, A.AnonDim):
                    shape.append(Dim.of(f"{d.name}_{axis}"))
                    continue
                for name in _free_names(dim, env_scope):
                    symbols.setdefault(name, Dim.of(name))
                v = self.eval(
                    dim,
                    Scope(
                        dict(symbols), env_scope, env_scope.module, resolve_const=self.resolve_const
                    ),
                )
                if not isinstance(v, (int, Dim)) or isinstance(v, bool):
                    raise KilnError(
                        "K0202", f"a dimension must be a size, not {describe(v)}", dim.span
                    )
                if isinstance(v, int) and v < 0:  # no array has it: every call would fail
                    raise KilnError("K0301", f"an input's size cannot be negative ({v})",
                                    dim.span)
                shape.append(Dim.of(v))
            ttype = TensorType(dtype, tuple(shape))
            if t.optional and present is not None and d.name not in present:
                feed.append((ABSENT, d.span))
                continue
            value = graph.add_input(d.name, ttype, d.span, optional=t.optional)
            self.sizes_seen += [s for s in shape if s not in self.sizes_seen]
            inputs.append(Port(d.name, ttype, t.optional, d.span))
            feed.append((Tensor(value, graph), d.span))
        return inputs, feed


def default_output_names(count: int) -> list[str]:
    """What unnamed model outputs are called: `output`, or `output_0`, `output_1`, ..."""
    return ["output"] if count == 1 else [f"output_{i}" for i in range(count)]


def _free_names(expr, scope: Scope) -> list[str]:
    """Names in a dimension expression that no scope defines: symbolic sizes."""
    out = []
    stack = [expr]
    while stack:
        e = stack.pop()
        if isinstance(e, A.Name):
            try:
                scope.lookup(e.id)
            except Unbound:
                out.append(e.id)
        elif isinstance(e, (A.BinOp,)):
            stack.extend([e.left, e.right])
        elif isinstance(e, A.UnaryOp):
            stack.append(e.operand)
    return out


__all__ = ["ElaboratedModel", "Elaborator", "Port", "default_output_names"]
