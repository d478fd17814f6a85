"""Block instantiation: arguments, members (params, buffers, children, lists), ties, inits."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import numpy as np

from ..dims import Dim
from ..errors import KilnError, Span, did_you_mean
from ..ir import Graph
from ..limits import CALL_STEPS
from ..syntax import ast as A
from ..types import DTYPES, NUMPY_DTYPES, TensorType
from .diagnostics import MAX_DEPTH, Budget, Diagnostics
from .graphs import Frame, GraphFrames
from .scope import Scope, Unbound, lookup_global
from .values import (
    POISON,
    Absent,
    BlockRef,
    Builtin,
    FnRef,
    InitializerValue,
    Instance,
    Namespace,
    OpRef,
    ParamInfo,
    Poisoned,
    Sequential,
    Tensor,
    count_of,
    describe,
)

if TYPE_CHECKING:
    from .elaborator import Elaborator

ARG_TYPES = {
    "int": (int,),
    "float": (float, int),
    "bool": (bool,),
    "str": (str,),
    "string": (str,),
    "list": (list, tuple),
    "tuple": (list, tuple),
    "Block": (BlockRef,),
    "block": (BlockRef,),
    "size": (int, Dim),
}


class ParamSlot:
    """A member that is a parameter or buffer; reading it in forward adds a `param` node."""

    def __init__(self, path: str):
        self.path = path


IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z_0-9]*")


class Members:
    """Block instances and the parameters they declare, by path.

    Instantiating a block binds its arguments and defines its members in order: parameters and
    buffers (`params`, with their initial values), children (instances, lists of stages),
    ties (`aliases`) and `init` overrides, which `resolve_initializers` applies at the end.
    Expressions are evaluated by `evaluator`, which instantiates inline stages back through
    `instantiate`.
    """

    def __init__(self, evaluator: Elaborator, diag: Diagnostics, budget: Budget,
                 frames: GraphFrames) -> None:
        self.evaluator = evaluator
        self.diag = diag
        self.budget = budget
        self.frames = frames
        self.params: dict[str, ParamInfo] = {}
        self.param_owners: dict[str, Instance] = {}  # path -> the instance declaring it
        self.aliases: dict[str, str] = {}  # tied path -> canonical path
        self.instances: list[Instance] = []
        self.member_scope_depth = 0  # > 0 while a child member's value is evaluated

    def instantiate(self, ref: BlockRef, path: str, span: Span) -> Instance:
        if len(self.diag.stack) >= MAX_DEPTH:
            raise KilnError(
                "K0201",
                f"blocks nested more than {MAX_DEPTH} deep (a block that contains itself?)",
                span,
            )
        self.budget.spend(CALL_STEPS, span)
        env = self.bind_block_args(ref, span)
        if ref.defn.alias is not None:
            return self.instantiate_alias(ref, env, path, span)
        inst = Instance(ref, path, env, span=span)
        self.instances.append(inst)
        self.diag.stack.append((ref.defn.name, span if path else None))
        try:
            scope = Scope(env, None, ref.module, None, False, self.evaluator.resolve_const)
            self.define_members(inst, ref.defn.members, scope)
        finally:
            self.diag.stack.pop()
        return inst

    def instantiate_alias(self, ref: BlockRef, env: dict, path: str, span: Span) -> Instance:
        """`block A(n) = B(n, 2)`: A's instance is B's, at the same path (B's member names)."""
        scope = Scope(env, None, ref.module, None, False, self.evaluator.resolve_const)
        self.diag.stack.append((ref.defn.name, span if path else None))
        try:
            target = self.evaluator.eval(ref.defn.alias, scope)
            if not isinstance(target, BlockRef):
                raise KilnError(
                    "K0202", f"{ref.defn.name} = ... must name a block, not {describe(target)}",
                    ref.defn.alias.span,
                )
            return self.instantiate(target, path, span)
        finally:
            self.diag.stack.pop()

    def bind_block_args(self, ref: BlockRef, span: Span) -> dict[str, Any]:
        defn = ref.defn
        params = defn.params
        if len(ref.args) > len(params):
            raise KilnError(
                "K0201",
                f"{defn.name} takes {count_of(len(params), 'argument')} "
                f"({', '.join(p.name for p in params)}), got {len(ref.args)}",
                span,
            )
        env: dict[str, Any] = {}
        for p, v in zip(params, ref.args, strict=False):
            env[p.name] = v
        for name, v in ref.kwargs:
            if name not in {p.name for p in params}:
                raise KilnError(
                    "K0201",
                    f"{defn.name} has no argument {name}",
                    span,
                    hint=did_you_mean(name, [p.name for p in params])
                    or f"its arguments: {', '.join(p.name for p in params) or 'none'}",
                )
            if name in env:
                raise KilnError("K0201", f"{defn.name}: argument {name} given twice", span)
            env[name] = v
        scope = Scope(env, None, ref.module, None, False, self.evaluator.resolve_const)
        for p in params:
            if p.name not in env:
                if p.default is None:
                    raise KilnError(
                        "K0201",
                        f"{defn.name} is missing its argument {p.name}",
                        span,
                        hint=f"{defn.name}({', '.join(q.name for q in params)})",
                    )
                env[p.name] = self.evaluator.eval(p.default, scope)
            if p.type is not None and p.type.name in ("Block", "block") and isinstance(
                env[p.name], str
            ):  # a block named by a string (kiln.compile(args = {"block": "Bottleneck"}))
                env[p.name] = self.block_by_name(env[p.name], ref.module, span)
            self.check_arg_type(defn.name, p, env[p.name], span)
        return env

    def block_by_name(self, name: str, module, span: Span) -> BlockRef:
        try:
            value = lookup_global(module, name, self.evaluator.resolve_const)
        except Unbound:
            value = None
        if not isinstance(value, BlockRef):
            raise KilnError("K0202", f"{name!r} does not name a block", span)
        return value

    def block_const(self, ref: BlockRef, name: str, span: Span):
        """`block.expansion`: a block-level const read from a block value, without building it.

        The const may use the arguments given to the block value and the defaults."""
        defn = ref.defn
        env: dict = {p.name: v for p, v in zip(defn.params, ref.args, strict=False)}
        env.update(dict(ref.kwargs))
        scope = Scope(env, None, ref.module, None, False, self.evaluator.resolve_const)
        for p in defn.params:  # defaults that need arguments not given stay unbound
            if p.name not in env and p.default is not None:
                try:
                    env[p.name] = self.evaluator.eval(p.default, scope)
                except KilnError:
                    pass
        for m in defn.members:
            if isinstance(m, A.Const) and m.name == name:
                return self.evaluator.eval(m.value, scope)
            if isinstance(m, A.Const):
                try:
                    env[m.name] = self.evaluator.eval(m.value, scope)
                except KilnError:
                    pass
        raise KilnError("K0103", f"the block {defn.name} has no const {name}", span)

    def check_arg_type(self, owner: str, p: A.ParamDef, value, span: Span) -> None:
        if p.type is None:
            return
        problem = _type_problem(p.type, value)
        if problem:
            raise KilnError("K0202", f"{owner}: argument {p.name} {problem}", span)

    # ------------------------------------------------------------------ members
    def define_members(self, inst: Instance, members, scope: Scope) -> None:
        for m in members:
            try:
                self.define_member(inst, m, scope)
            except Poisoned:
                pass
            except KilnError as err:
                self.diag.report(err)
                if isinstance(m, A.Require):  # the instance is invalid: checking on is noise
                    raise Poisoned() from None
                if isinstance(m, A.Const):
                    scope.set(m.name, POISON)
                for name in _member_names(m):
                    inst.members.setdefault(name, POISON)

    def define_member(self, inst: Instance, m, scope: Scope) -> None:
        if isinstance(m, A.Const):
            scope.set(m.name, self.evaluator.eval(m.value, scope))
        elif isinstance(m, A.Require):
            self.evaluator.check_require(m, scope)
        elif isinstance(m, A.TensorMember):
            self.define_tensor(inst, m, scope)
        elif isinstance(m, A.ChildMember):
            self.define_child(inst, m, scope)
        elif isinstance(m, A.Tie):
            self.define_tie(inst, m, scope)
        elif isinstance(m, A.InitOverride):
            self.define_init(inst, m, scope)
        elif isinstance(m, A.Forward):
            if inst.forward is not None:
                raise KilnError("K0106", f"{inst.name} has two forward definitions", m.span)
            inst.forward = m
        elif isinstance(m, A.For):
            for item in self.evaluator.iterate(self.evaluator.eval(m.iter, scope), m.iter.span):
                inner = scope.child()
                self.evaluator.bind_targets(inner, m.targets, item, m.span)
                self.define_members(inst, m.body, inner)
        elif isinstance(m, A.If):
            taken = self.evaluator.compile_time_bool(m.cond, scope, "a member `if` condition")
            body, skipped = (m.then, m.other) if taken else (m.other, m.then)
            for skipped_member in skipped:
                inst.undefined.update(_member_names(skipped_member))
            self.define_members(inst, body, scope)

    def member_name(self, name: A.MemberName, scope: Scope) -> str:
        parts = []
        for p in name.parts:
            if isinstance(p, A.Name):
                parts.append(p.id)
                continue
            text = self.evaluator.interp_text(p, scope)
            # a path segment: a "." would make it two, a space or newline unreadable
            if not IDENTIFIER.fullmatch(text):
                raise KilnError(
                    "K0203", f"the interpolated name {text!r} is not a name "
                    "(letters, digits and _, not starting with a digit)", p.span,
                )
            parts.append(text)
        return ".".join(parts)

    def guard_holds(self, guard, scope: Scope) -> bool:
        return guard is None or self.evaluator.compile_time_bool(
            guard, scope, "a member's `if` condition"
        )

    def claim(self, inst: Instance, name: str, span: Span) -> None:
        if name in inst.members:
            raise KilnError("K0106", f"{inst.name} already has a member named {name}", span)

    def define_tensor(self, inst: Instance, m: A.TensorMember, scope: Scope) -> None:
        name = self.member_name(m.name, scope)
        if not self.guard_holds(m.guard, scope):
            inst.undefined.add(name)
            return
        self.claim(inst, name, m.name.span)
        dtype = m.type.dtype or "f32"
        if dtype not in DTYPES:
            raise KilnError(
                "K0302",
                f"unknown element type {dtype}",
                m.type.span,
                hint=f"element types: {', '.join(DTYPES)}",
            )
        shape = []
        for d in m.type.dims:
            if isinstance(d, (A.AnonDim, A.EllipsisLit)):
                raise KilnError("K0301", f"a {m.kind}'s shape must be fully known", d.span)
            v = self.evaluator.eval(d, scope)
            if isinstance(v, Dim) and v.is_const:
                v = v.value
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise KilnError(
                    "K0301",
                    f"a {m.kind}'s size must be a non-negative int known at compile "
                    f"time, not {describe(v)}",
                    d.span,
                )
            shape.append(v)
        TensorType(dtype, tuple(shape)).check_size(m.type.span)
        persistent = True
        for opt in m.options:
            if opt.name != "persistent" or m.kind != "buffer":
                raise KilnError(
                    "K0201",
                    f"{m.kind} has no option {opt.name}",
                    opt.span,
                    hint="buffers take persistent = false",
                )
            persistent = self.evaluator.compile_time_bool(opt.value, scope, "persistent")
        init = self.tensor_initializer(m, tuple(shape), dtype, scope)
        path = inst.child_path(name)
        if path in self.params:  # `param w.b.b` beside a child `w` holding `b.b`
            taken = self.params[path]
            raise KilnError(
                "K0106", f"the parameter path {path} is already taken by the {taken.kind} "
                f"defined at {taken.span}", m.name.span,
                hint="rename one of them: they would be one entry of the weights file",
            )
        self.params[path] = ParamInfo(
            path, m.kind, dtype, tuple(shape), init, persistent, inst.name, name, m.span
        )
        self.param_owners[path] = inst
        inst.members[name] = ParamSlot(path)

    def tensor_initializer(self, m: A.TensorMember, shape, dtype, scope: Scope):
        if m.init is None:
            from ..initializers import make_initializer

            return InitializerValue(make_initializer("zeros", [], {}))
        self.frames.enter(Frame(Graph()))
        try:
            value = self.evaluator.eval(m.init, scope)
            if isinstance(value, InitializerValue):
                return value
            if isinstance(value, (bool, int, float)):
                return np.full(shape, value, dtype=NUMPY_DTYPES[dtype])
            if not isinstance(value, Tensor):
                raise KilnError(
                    "K0202",
                    f"a {m.kind} is initialised by init.NAME(...) or a tensor "
                    f"expression, not {describe(value)}",
                    m.init.span,
                )
            frame = self.frames.current
            frame.graph.outputs = [value.value]
            from ..evaluate import run_graph

            (array,) = run_graph(frame.graph, [], {}, {})
        finally:
            self.frames.leave()
        if tuple(array.shape) != tuple(shape):
            raise KilnError(
                "K0301",
                f"initial value has shape {list(array.shape)} but {m.kind} "
                f"is declared {list(shape)}",
                m.init.span,
            )
        return array.astype(NUMPY_DTYPES[dtype])

    def define_child(self, inst: Instance, m: A.ChildMember, scope: Scope) -> None:
        name = self.member_name(m.name, scope)
        if not self.guard_holds(m.guard, scope):
            inst.undefined.add(name)
            return
        self.claim(inst, name, m.name.span)
        self.member_scope_depth += 1
        try:
            value = self.evaluator.eval(m.value, scope)
        finally:
            self.member_scope_depth -= 1
        inst.members[name] = self.make_member(value, inst.child_path(name), m.value)

    def make_member(self, value, path: str, expr):
        """The member a child's value makes: an instance, a list of stages, a tensor..."""
        span = expr.span
        if isinstance(value, BlockRef):
            return self.instantiate(value, path, span)
        if isinstance(value, (list, tuple)) and not all(
            isinstance(v, (int, float, bool, str, Dim)) for v in value
        ):
            return self.build_sequential(value, path, expr)
        if isinstance(value, Tensor):
            raise KilnError(
                "K0202", "a member cannot be a tensor; declare it with param or buffer", span
            )
        if isinstance(value, (InitializerValue, Absent)):
            raise KilnError("K0202", f"a member cannot be {describe(value)}", span)
        return value

    def build_sequential(self, items, path: str, expr) -> Sequential:
        """A list of stages; each entry of a list written out keeps its own span, so an error
        in one stage points at that entry."""
        span = expr.span
        written = expr.items if isinstance(expr, A.ListLit) and len(expr.items) == len(items) \
            else [expr] * len(items)
        stages = []
        for i, (item, item_expr) in enumerate(zip(items, written, strict=True)):
            sub = f"{path}.{i}"
            if isinstance(item, BlockRef):
                stages.append(self.instantiate(item, sub, item_expr.span))
            elif isinstance(item, (list, tuple)):
                stages.append(self.build_sequential(item, sub, item_expr))
            elif isinstance(item, (OpRef, FnRef, Builtin, Instance, Sequential)):
                stages.append(item)
            else:
                raise KilnError(
                    "K0202",
                    f"stage {i} of the list is {describe(item)}, not a block or an op",
                    span,
                )
        return Sequential(path, stages)

    def define_tie(self, inst: Instance, m: A.Tie, scope: Scope) -> None:
        target = inst.child_path(self.member_name(m.target, scope))
        source = inst.child_path(self.member_name(m.source, scope))
        source = self.aliases.get(source, source)
        for path, name in ((target, m.target), (source, m.source)):
            if path not in self.params:
                raise KilnError(
                    "K0101",
                    f"tie: no parameter named {path}",
                    name.span,
                    hint="tie names parameters declared before it",
                )
        a, b = self.params[target], self.params[source]
        if a.shape != b.shape or a.dtype != b.dtype:
            raise KilnError(
                "K0301" if a.shape != b.shape else "K0302",
                f"tie: {target} is {a.dtype}{list(a.shape)} but {source} is "
                f"{b.dtype}{list(b.shape)}",
                m.span,
            )
        del self.params[target]
        self.aliases[target] = source

    def define_init(self, inst: Instance, m: A.InitOverride, scope: Scope) -> None:
        segments = [
            s if isinstance(s, str) else self.evaluator.interp_text(s, scope) for s in m.pattern
        ]
        value = self.evaluator.eval(m.value, scope)
        if not isinstance(value, InitializerValue):
            raise KilnError(
                "K0202",
                f"init needs an initializer such as init.normal(std = 0.02), not {describe(value)}",
                m.value.span,
            )
        block_type = None
        if len(segments) >= 2 and segments[0] != "*":
            found = self._block_in_pattern(segments, scope)
            if found is not None:
                block_type, segments = found
        inst.inits.append((block_type, tuple(segments), value, m.span))

    def _block_in_pattern(self, segments, scope: Scope):
        """`Conv2d.weight` or `nn.Conv2d.weight`: (block name, member path) if it names a block."""
        try:
            value = scope.lookup(segments[0])
        except Unbound:
            return None
        i = 1
        while not isinstance(value, BlockRef) and i < len(segments) - 1:
            if not isinstance(value, Namespace) or value.kind != "module":
                return None
            value = self.evaluator.namespace_attr(value, segments[i], None)
            i += 1
        if isinstance(value, BlockRef):
            return value.name, segments[i:]
        return None

    def resolve_initializers(self) -> None:
        """Apply `init PATTERN = ...` overrides: the nearest ancestor declaring a match wins.

        A pattern that matches no parameter at all is an error (a typo would otherwise pass).
        """
        by_path = {inst.path: inst for inst in self.instances}
        matched: set = set()
        for path, info in self.params.items():
            if info.kind != "param":
                continue
            chosen = None
            for anc_path in _ancestors(self.param_owners[path].path):
                anc = by_path.get(anc_path)
                if anc is None or not anc.inits:
                    continue
                rel = path[len(anc_path) + 1 :] if anc_path else path
                for block_type, segments, init, span in anc.inits:
                    if _matches(block_type, segments, info, rel):
                        matched.add(span)
                        if chosen is None or chosen[0] == anc_path:
                            chosen = (anc_path, init)
            if chosen is not None:
                info.init = chosen[1]
        for inst in self.instances:
            for block_type, segments, _init, span in inst.inits:
                if span not in matched:
                    matched.add(span)  # report each override once
                    pattern = ".".join(([block_type] if block_type else []) + list(segments))
                    self.diag.report(KilnError(
                        "K0101", f"init {pattern} matches no parameter of {inst.name}", span,
                        hint="a pattern is Block.member (every such block below) or a dotted "
                        "path from here, where * matches one name",
                    ))


def _type_problem(t: A.TypeName, value) -> str | None:
    """Why `value` is not of the declared argument type (None when it is)."""
    if t.name not in ARG_TYPES:
        raise KilnError(
            "K0202", f"unknown argument type {t.name}", t.span,
            hint=f"argument types: {', '.join(sorted(set(ARG_TYPES) - {'block', 'string'}))}",
        )
    if value is None:  # `none`: an argument not given (`norm: Block = none`)
        return None
    ok = ARG_TYPES[t.name]
    fits = isinstance(value, ok) and not (isinstance(value, bool) and bool not in ok)
    if t.name in ("int", "size") and isinstance(value, Dim):
        fits = True
    if not fits:
        return f"must be {t.name}, not {describe(value)}"
    if t.args and isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            inner = _type_problem(t.args[0], item)
            if inner:
                return f"item {i} {inner}"
    return None


def _ancestors(path: str) -> list[str]:
    """'a.b.c' -> ['a.b.c', 'a.b', 'a', ''] (nearest first)."""
    out = [path]
    while path:
        path = path.rsplit(".", 1)[0] if "." in path else ""
        out.append(path)
    return out


def _matches(block_type, segments, info: ParamInfo, rel: str) -> bool:
    if block_type is not None:
        return info.owner == block_type and info.member == ".".join(segments)
    parts = rel.split(".")
    return len(parts) == len(segments) and all(
        s in ("*", p) for s, p in zip(segments, parts, strict=False)
    )


def _member_names(m) -> list[str]:
    """Static names a member declares (interpolated names are not known statically)."""
    if isinstance(m, (A.TensorMember, A.ChildMember)) and all(
        isinstance(p, A.Name) for p in m.name.parts
    ):
        return [".".join(p.id for p in m.name.parts)]
    if isinstance(m, A.If):
        return [n for sub in (*m.then, *m.other) for n in _member_names(sub)]
    if isinstance(m, A.For):
        return [n for sub in m.body for n in _member_names(sub)]
    return []
