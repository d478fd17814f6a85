"""The elaborator: from a loaded file and a model name to a checked graph with named parameters."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..dims import Dim, assuming
from ..errors import KilnError, Span, combine
from ..interface import Port, default_output_names
from ..ir import Graph
from ..macs import macs_by_scope
from ..syntax import ast as A
from ..types import DTYPES, TensorType, dtype_of_numpy
from .arithmetic import Arithmetic
from .builtins import Builtins
from .diagnostics import Budget, Diagnostics
from .exprs import ExprMixin
from .forward import ForwardMixin
from .graphs import GraphFrames
from .members import Members, ParamSlot
from .opcalls import OpCalls
from .program import ModuleScope
from .scope import TRAINING, Scope, Unbound
from .shapes import Shapes
from .training import RNG_KEY, RNG_KEY_TYPE, UPDATED, TrainingContext
from .values import ABSENT, BlockRef, Namespace, ParamInfo, Poisoned, Tensor, describe


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
    training: bool = False  # elaborated with `training = true` (elaborate/training.py)
    # buffer path -> the index of the output holding its new value (training mode's updates)
    updates: dict[str, int] = field(default_factory=dict)

    @staticmethod
    def of_graph(name: str, graph: Graph, params: dict[str, np.ndarray]) -> ElaboratedModel:
        """The model of a graph built without source (an imported ONNX model): its signature
        is the graph's inputs and outputs, its parameters the `param` nodes, whose initial
        values are `params` (by path)."""
        inputs = [Port(graph.node(n)["attrs"]["name"], graph.node(n)["types"][0],
                       graph.node(n)["attrs"].get("optional", False)) for n in graph.inputs]
        names = graph.output_names or default_output_names(len(graph.outputs))
        outputs = [Port(n, v.type) for n, v in zip(names, graph.outputs, strict=True)]
        infos = {}
        for path, array in params.items():
            dtype = dtype_of_numpy(array.dtype)
            infos[path] = ParamInfo(path, "param", dtype, tuple(array.shape), array, True, "",
                                    path, None)
        symbols = sorted({s for p in inputs for d in p.type.shape for s in d.symbols()})
        present = frozenset(p.name for p in inputs if p.optional)
        return ElaboratedModel(name, {}, graph, inputs, outputs, infos, {}, symbols, present)

    def macs_by_scope(self) -> dict[str, Dim]:
        """Multiply-accumulates of one call, per block-instance path ('' is the model)."""
        return macs_by_scope(self.graph)


class Elaborator(ExprMixin, ForwardMixin):
    """Elaborates one model of a loaded file. Use `elaborate_model`.

    It is the evaluator (expressions and statements, from its two mixins, which share all of
    its state) composed with parts that hold their own: `diag` (errors and the chain of uses),
    `budget` (compile-time work), `frames` (the graphs being built), `ops` (op calls),
    `arith` (operators), `builtins`, `members` (instances and parameters) and `shapes`
    (declared shapes against actual ones).
    """

    def __init__(self, module: ModuleScope, training: bool = False):
        self.module = module
        self.training = training
        self.diag = Diagnostics()
        self.budget = Budget()
        self.frames = GraphFrames(self.diag, self.budget)
        self.ops = OpCalls(self.frames)
        self.arith = Arithmetic(self.ops)
        self.builtins = Builtins(self.ops)
        self.members = Members(self, self.diag, self.budget, self.frames)
        self.shapes = Shapes(self, self.frames)
        self.ops.training = TrainingContext(self.frames, self.members.params)

    # ------------------------------------------------------------------ members as values
    def read_member(self, value, span: Span):
        """A member's value in an expression: a parameter or buffer becomes a `param` node."""
        if isinstance(value, ParamSlot):
            path = self.members.aliases.get(value.path, value.path)
            return self.frames.read_param(self.members.params[path], span)
        return value

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
        mode = TRAINING.set(self.training)
        try:
            with assuming() as self.frames.size_facts:
                return self.elaborate_checked(ref, args, present)
        finally:
            TRAINING.reset(mode)

    def elaborate_checked(
        self, ref: BlockRef, args: dict[str, Any], present: frozenset[str] | None
    ) -> ElaboratedModel:
        defn = ref.defn
        try:
            self.check_file_requires(self.module)
            root = self.members.instantiate(ref.extend((), args), "", defn.span)
        except Poisoned:
            root = None
        except KilnError as err:
            self.diag.report(err)
            root = None
        if root is None or self.diag.errors:
            raise combine(self.diag.errors or [KilnError("K0201", "elaboration failed", defn.span)])
        fwd = root.forward
        if fwd is None:
            raise KilnError("K0201", f"model {defn.name} has no forward", defn.span)
        inputs, feed = self.model_inputs(root, fwd, present)
        outputs: list[Port] = []
        updates: dict[str, int] = {}
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
            graph = self.frames.root_graph
            graph.outputs = [r.value for r in results]
            graph.output_names = names
            outputs = [Port(n, r.type) for n, r in zip(names, results, strict=True)]
            updates = self.training_results(inputs, outputs)
        except Poisoned:
            pass
        except KilnError as err:
            self.diag.report(err)
        self.members.resolve_initializers()
        if self.diag.errors:
            raise combine(self.diag.errors)
        graph = self.frames.root_graph
        graph.prune()
        symbols = sorted({s for p in inputs for d in p.type.shape for s in d.symbols()})
        return ElaboratedModel(
            defn.name,
            dict(args),
            graph,
            inputs,
            outputs,
            dict(self.members.params),
            dict(self.members.aliases),
            symbols,
            frozenset(p.name for p in inputs if p.optional),
            {inst.path: inst.ref.defn.name for inst in self.members.instances},
            self.training,
            updates,
        )

    def training_results(self, inputs: list[Port], outputs: list[Port]) -> dict[str, int]:
        """Add what training mode adds to the model's signature (elaborate/training.py): the
        random key input, and an output per updated buffer; returns {buffer path: output}."""
        ctx = self.ops.training
        graph = self.frames.root_graph
        if ctx.key_input is not None:
            inputs.append(Port(RNG_KEY, RNG_KEY_TYPE))
        updates: dict[str, int] = {}
        for path, value in ctx.updates.items():
            updates[path] = len(graph.outputs)
            graph.outputs.append(value)
            graph.output_names.append(UPDATED + path)
            outputs.append(Port(UPDATED + path, value.type))
        return updates

    def output_names(self, fwd: A.Forward, inputs: list[Port], count: int) -> list[str]:
        """The model's output names: those its signature gives (`-> (mu: f32[..], ..)`), the
        rest `output` (a single result) or `output_<i>`; each must be new among the model's
        inputs, outputs and top-level parameters, since ONNX names them all in one graph."""
        names = default_output_names(count)
        taken = {p.name: "an input" for p in inputs}
        taken.update({path: "a parameter" for path in self.members.params if "." not in path})
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
        graph = self.frames.root_graph
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
            self.frames.sizes_seen += [s for s in shape if s not in self.frames.sizes_seen]
            inputs.append(Port(d.name, ttype, t.optional, d.span))
            feed.append((Tensor(value, graph), d.span))
        return inputs, feed


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
