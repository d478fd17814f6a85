"""Applying blocks: input/shape unification, forward bodies, stages, fn helpers and scan."""

from __future__ import annotations

from typing import Any

from ..dims import Dim, divisibility, know, known_value
from ..errors import KilnError, Span
from ..ir import COMPARISONS, Constraint
from ..limits import CALL_STEPS
from ..syntax import ast as A
from ..types import TensorType, shape_str
from .exprs import Poisoned, _count, describe, norm_dim, where_hint
from .scope import Scope, Unbound
from .values import (
    ABSENT,
    POISON,
    Absent,
    BlockRef,
    Builtin,
    FnRef,
    Instance,
    OpRef,
    Poison,
    Sequential,
    Tensor,
)


class Returned(Exception):
    """Unwinds a body at `return`, carrying the returned values."""

    def __init__(self, values: tuple, span: Span):
        self.values = values
        self.span = span


class ForwardMixin:
    """Forward elaboration; mixed into the Elaborator."""

    # ------------------------------------------------------------------ stages
    def apply_stage(self, x, stage, label: str | None, span: Span, scope: Scope):
        """`x |> stage`: instantiate a block (inline) or call an op/fn with x first."""
        if isinstance(stage, BlockRef):
            inst = self.inline_instance(stage, label, span, scope)
            return self.apply_forward(inst, [x], {}, span)
        if label is not None:
            raise KilnError(
                "K0202", f"only a block stage can be named, not {describe(stage)}", span
            )
        if not isinstance(stage, (Instance, Sequential)):  # members have names of their own
            self.advance_counter(scope)
        return self.apply_callable(stage, [x], {}, span, scope)

    def advance_counter(self, scope: Scope) -> None:
        owner = self.owner_instance(scope)
        if owner is not None:
            owner.stage_counter += 1

    def inline_instance(self, ref: BlockRef, label: str | None, span: Span, scope: Scope):
        """The instance of an inline stage: named by `label`, else by the stage counter."""
        owner = self.owner_instance(scope)
        if owner is None:
            raise KilnError(
                "K0201",
                f"a fn cannot instantiate the block {ref.name}",
                span,
                hint="fn helpers have no members; make it a block",
            )
        if label is None:
            label = str(owner.stage_counter)
            owner.stage_counter += 1
        inst = owner.inline.get(label)
        if inst is None:
            if label in owner.members:
                raise KilnError("K0106", f"{owner.name} already has a member named {label}", span)
            inst = self.instantiate(ref, owner.child_path(label), span)
            owner.inline[label] = inst
            owner.members[label] = inst
        return inst

    def apply_callable(self, f, args: list, kwargs: dict, span: Span, scope: Scope):
        if isinstance(f, Instance):
            return self.apply_forward(f, args, kwargs, span)
        if isinstance(f, Sequential):
            if len(args) != 1 or kwargs:
                raise KilnError("K0201", "a list of stages takes one input", span)
            x = args[0]
            self.stack.append((f"the list {f.path}", span))
            try:
                for st in f.stages:
                    # an instance made from a list entry is used at that entry: a mismatch
                    # there points at it rather than at the `x |> stages` running the list
                    at = st.span if isinstance(st, Instance) and st.span is not None else span
                    x = (self.apply_callable(st, [(x[0], at if at is not span else x[1])], {},
                                             at, scope), x[1])
            finally:
                self.stack.pop()
            return x[0]
        if isinstance(f, (OpRef, FnRef, Builtin)):
            return self.call_value(f, args, kwargs, span, scope)
        raise KilnError("K0202", f"{describe(f)} cannot be applied as a stage", span)

    def eval_Pipe(self, e: A.Pipe, scope: Scope):
        x = (self.eval(e.value, scope), e.value.span)
        stage = e.stage
        if isinstance(stage, A.Call):  # `x |> f(a, b)` means f(x, a, b)
            func = self.eval(stage.func, scope)
            args = [(self.eval(a, scope), a.span) for a in stage.args]
            kwargs = self.eval_kwargs(stage.kwargs, scope)
            if isinstance(func, BlockRef) and isinstance(stage.func, A.Call):
                # `x |> Block(args)(y)`: the block is built; x and y are its inputs
                inst = self.inline_instance(func, e.label, stage.span, scope)
                return self.apply_forward(inst, [x, *args], kwargs, stage.span)
            if isinstance(func, BlockRef):
                ref = func.extend(tuple(a for a, _ in args), {k: v for k, (v, _) in kwargs.items()})
                return self.apply_stage(x, ref, e.label, stage.span, scope)
            if e.label is not None:
                raise KilnError(
                    "K0202", f"only a block stage can be named, not {describe(func)}", stage.span
                )
            if not isinstance(func, (Instance, Sequential)):
                self.advance_counter(scope)
            return self.call_value(func, [x, *args], kwargs, stage.span, scope)
        return self.apply_stage(x, self.eval(stage, scope), e.label, stage.span, scope)

    def owner_instance(self, scope: Scope) -> Instance | None:
        s = scope
        while s is not None:
            if s.in_fn:
                return None
            if s.instance is not None:
                return s.instance
            s = s.parent
        return None

    def member_context(self, scope: Scope) -> bool:
        return self.member_scope_depth > 0

    # ------------------------------------------------------------------ forward
    def apply_forward(self, inst: Instance, args: list, kwargs: dict, span: Span):
        fwd = inst.forward
        if fwd is None:
            raise KilnError(
                "K0201", f"block {inst.name} has no forward and cannot be applied", span
            )
        if any(isinstance(v, Poison) for v, _ in [*args, *kwargs.values()]):
            raise Poisoned()
        values = self.bind_inputs(inst, fwd, args, kwargs, span)
        self.stack.append((inst.name, span if inst.path else None))  # the root needs no note
        self.current_paths.append(inst.path)
        saved_counter, inst.stage_counter = inst.stage_counter, 0
        try:
            env_scope = Scope(inst.env, None, inst.ref.module, None, False, self.resolve_const)
            symbols: dict[str, Any] = {}
            pending: list = []  # bare names bind across every input before expressions check
            for d, (v, vspan) in zip(fwd.inputs, values, strict=False):
                if d.type is not None and not isinstance(v, Absent):
                    pending += self.check_input(inst.name, d, v, vspan, env_scope, symbols)
            self.check_dims(pending, env_scope, symbols)
            body_scope = Scope(
                dict(symbols),
                Scope({}, env_scope, inst.ref.module, inst, False, self.resolve_const),
                inst.ref.module,
                None,
                False,
                self.resolve_const,
            )
            for d, (v, _) in zip(fwd.inputs, values, strict=False):
                body_scope.set(d.name, v)
            absent = {
                dim.id for d, (v, _) in zip(fwd.inputs, values, strict=True)
                if isinstance(v, Absent) and d.type is not None
                for dim in d.type.dims if isinstance(dim, A.Name) and dim.id not in symbols
            }
            self.check_where(fwd.where, body_scope, absent)
            results, return_span = self.run_body_at(fwd.body, body_scope, fwd.span)
            self.check_results(inst.name, fwd, results, env_scope, symbols, return_span)
        except KilnError as err:
            self.report(err)
            raise Poisoned() from None
        finally:
            inst.stage_counter = saved_counter
            self.current_paths.pop()
            self.stack.pop()
        return results[0] if len(results) == 1 and not fwd.results_tuple else tuple(results)

    def bind_inputs(self, inst, fwd: A.Forward, args, kwargs, span) -> list:
        names = [d.name for d in fwd.inputs]
        if len(args) > len(names):
            raise KilnError(
                "K0201",
                f"{inst.name} takes {_count(len(names), 'input')} ({', '.join(names)}), "
                f"got {len(args)}",
                span,
            )
        bound = dict(zip(names, args, strict=False))
        for k, v in kwargs.items():
            if k not in names:
                raise KilnError("K0201", f"{inst.name} has no input {k}", v[1])
            bound[k] = v
        out = []
        for d in fwd.inputs:
            if d.name in bound:
                out.append(bound[d.name])
            elif d.type is not None and d.type.optional:
                out.append((ABSENT, span))
            else:
                raise KilnError("K0201", f"{inst.name} is missing its input {d.name}", span)
        return out

    def check_input(self, owner: str, d: A.InputDef, v, vspan: Span, env_scope, symbols) -> list:
        if not isinstance(v, Tensor):
            raise KilnError(
                "K0202", f"{owner}: input {d.name} must be a tensor, not {describe(v)}", vspan
            )
        t = d.type
        if t.dtype is not None and t.dtype != v.type.dtype:
            raise KilnError(
                "K0302", f"{owner}: input {d.name} must be {t.dtype}, but it is {v.type}", vspan
            )
        return self.bind_dims(t, v.type, env_scope, symbols, vspan, f"{owner}: input {d.name}")

    def unify(self, pattern, actual, env_scope, symbols, span, what) -> None:
        """Match a declared shape against an actual one, binding symbolic names in `symbols`."""
        self.check_dims(
            self.bind_dims(pattern, actual, env_scope, symbols, span, what), env_scope, symbols
        )

    def bind_dims(
        self,
        pattern: A.TensorTypeExpr,
        actual: TensorType,
        env_scope: Scope,
        symbols: dict,
        span: Span,
        what: str,
    ) -> list:
        """Bind the bare symbolic names of a declared shape to the actual sizes; returns the
        dimensions still to check (expressions), with what to report if they differ."""
        dims = pattern.dims
        ell = [i for i, d in enumerate(dims) if isinstance(d, A.EllipsisLit)]
        own: list[str] = []  # the names this shape binds: shown as names, not as what they got

        def mismatch(detail=""):
            shown = self.render_pattern(
                pattern, env_scope, {k: v for k, v in symbols.items() if k not in own}
            )
            return KilnError(
                "K0301",
                f"{what} has shape {shape_str(actual.shape)} but {shown} is expected" + detail,
                span,
            )

        if len(ell) > 1:
            raise KilnError("K0301", "a shape may contain ... only once", pattern.span)
        if ell:
            fixed = len(dims) - 1
            if actual.rank < fixed:
                raise mismatch()
            i = ell[0]
            tail = fixed - i
            pairs = list(zip(dims[:i], actual.shape[:i], strict=False)) + list(
                zip(dims[i + 1 :], actual.shape[actual.rank - tail :], strict=False)
            )
        else:
            if actual.rank != len(dims):
                raise mismatch()
            pairs = list(zip(dims, actual.shape, strict=False))
        deferred = []
        for d, a in pairs:
            if isinstance(d, A.AnonDim):
                continue
            if isinstance(d, A.Name) and d.id not in symbols and not _resolvable(env_scope, d.id):
                symbols[d.id] = norm_dim(a)
                own.append(d.id)
                continue
            deferred.append((d, a, mismatch, what))
        return deferred

    def check_dims(self, pending: list, env_scope: Scope, symbols: dict) -> None:
        """Evaluate each dimension expression with every symbol bound, and compare."""
        scope = Scope(dict(symbols), env_scope, env_scope.module, resolve_const=self.resolve_const)
        for i, (d, a, mismatch, what) in enumerate(pending):
            expect = self.declared_size(d, scope, what)
            if expect != a:
                err = mismatch()
                err.hint = where_hint([(expect, a), *self.other_differences(pending[i + 1 :],
                                                                             mismatch, scope)])
                raise err

    def declared_size(self, d, scope: Scope, what: str) -> Dim:
        """The size a declared dimension expression stands for, every symbol being bound."""
        try:
            expect = self.eval(d, scope)
        except KilnError as err:
            if err.code == "K0101":
                raise KilnError(
                    "K0101",
                    f"{what}: cannot work out the size {err.message[13:]} from the input shapes",
                    d.span,
                ) from None
            raise
        if not isinstance(expect, (int, Dim)) or isinstance(expect, bool):
            raise KilnError("K0202", f"a dimension must be a size, not {describe(expect)}", d.span)
        return Dim.of(expect)

    def other_differences(self, pending: list, mismatch, scope: Scope) -> list:
        """The other (declared, actual) size pairs of the same shape that differ, for a hint;
        those that cannot be worked out are left out (the first mismatch is the error)."""
        pairs = []
        for d, a, m, what in pending:
            if m is mismatch:
                try:
                    pairs.append((self.declared_size(d, scope, what), a))
                except (KilnError, Poisoned):
                    continue
        return [(e, a) for e, a in pairs if e != a]

    def render_pattern(self, pattern: A.TensorTypeExpr, env_scope, symbols) -> str:
        parts = []
        for d in pattern.dims:
            if isinstance(d, A.AnonDim):
                parts.append("_")
            elif isinstance(d, A.EllipsisLit):
                parts.append("...")
            else:
                try:
                    v = self.eval(
                        d,
                        Scope(
                            dict(symbols),
                            env_scope,
                            env_scope.module,
                            resolve_const=self.resolve_const,
                        ),
                    )
                    parts.append(str(v))
                except (KilnError, Poisoned):
                    parts.append(_source_text(d))
        return "[" + ", ".join(parts) + "]"

    def check_where(self, constraints, scope: Scope, absent: set[str]) -> None:
        """Check `where` constraints; those about sizes of absent optional inputs do not apply."""
        for c in constraints:
            if _names_in(c) & absent:
                continue
            left, right = self.eval(c.left, scope), self.eval(c.right, scope)
            if not all(
                isinstance(v, (int, Dim)) and not isinstance(v, bool) for v in (left, right)
            ):
                raise KilnError("K0202", "a where constraint compares sizes", c.span)
            diff = known_value(Dim.of(left) - Dim.of(right))  # facts known so far may prove it
            if diff is not None:
                if not COMPARISONS[c.op](diff, 0):
                    raise KilnError(
                        "K0205",
                        f"constraint {_source_text(c)} does not hold: {left} {c.op} {right}",
                        c.span,
                    )
            else:
                self.root_graph.constraints.append(
                    Constraint(c.op, Dim.of(left), Dim.of(right), _source_text(c), c.span)
                )
                fact = divisibility(c.op, Dim.of(left), Dim.of(right))
                if fact is not None:  # checked on every call, so shapes may rely on it
                    know(self.size_facts, *fact)

    def check_results(self, owner: str, fwd: A.Forward, results, env_scope, symbols,
                      return_span: Span) -> None:
        if fwd.results is None:
            return
        if len(results) != len(fwd.results):
            raise KilnError(
                "K0301",
                f"{owner}: forward returns {len(results)} values but its type lists "
                f"{len(fwd.results)}",
                return_span,
            )
        for i, (t, v) in enumerate(zip(fwd.results, results, strict=False)):
            what = f"{owner}: result {i}" if len(results) > 1 else f"{owner}: the result"
            if not isinstance(v, Tensor):
                raise KilnError("K0202", f"{what} must be a tensor, not {describe(v)}", t.span)
            if t.dtype is not None and t.dtype != v.type.dtype:
                raise KilnError("K0302", f"{what} is {v.type}, but {t.dtype} is declared", t.span)
            self.unify(t, v.type, env_scope, symbols, t.span, what)

    # ------------------------------------------------------------------ statements
    def run_body(self, body, scope: Scope, span: Span) -> tuple:
        return self.run_body_at(body, scope, span)[0]

    def run_body_at(self, body, scope: Scope, span: Span) -> tuple[tuple, Span]:
        """The values a body returns, and the span of the `return` that returned them."""
        try:
            self.exec_stmts(body, scope)
        except Returned as r:
            return r.values, r.span
        raise KilnError("K0201", "this body has no return statement", span)

    def exec_stmts(self, body, scope: Scope) -> None:
        for stmt in body:
            try:
                self.exec_stmt(stmt, scope)
            except (Poisoned, KilnError) as err:
                if isinstance(err, KilnError):
                    self.report(err)
                if _may_return(stmt):  # what follows may never have run: stop here
                    raise Poisoned() from None
                for name in _assigned(stmt):
                    scope.set(name, POISON)

    def exec_stmt(self, stmt, scope: Scope) -> None:
        if isinstance(stmt, A.Assign):
            if isinstance(stmt.value, A.Scan):
                value = self.eval_scan(stmt.value, scope)
                self.bind_targets(scope, stmt.targets, value, stmt.span,
                                  hint=_scan_results(stmt.value, value))
            else:
                self.bind_targets(scope, stmt.targets, self.eval(stmt.value, scope), stmt.span)
        elif isinstance(stmt, A.Return):
            values = tuple(self.eval(v, scope) for v in stmt.values)
            if len(values) == 1 and isinstance(values[0], tuple):  # `return f(x)` of a tuple
                values = values[0]
            raise Returned(values, stmt.span)
        elif isinstance(stmt, A.Const):
            scope.set(stmt.name, self.eval(stmt.value, scope))
        elif isinstance(stmt, A.Require):
            self.check_require(stmt, scope)
        elif isinstance(stmt, A.For):
            for item in self.iterate(self.eval(stmt.iter, scope), stmt.iter.span):
                self.bind_targets(scope, stmt.targets, item, stmt.span)
                self.exec_stmts(stmt.body, scope)
        elif isinstance(stmt, A.If):
            taken = self.compile_time_bool(stmt.cond, scope, "an `if` condition")
            self.exec_stmts(stmt.then if taken else stmt.other, scope)
        elif isinstance(stmt, A.Emit):
            frame = self.graphs[-1]
            if frame.emits is None:
                raise KilnError("K0201", "emit is only allowed inside a scan body", stmt.span)
            frame.emits.append((tuple(self.eval(v, scope) for v in stmt.values), stmt.span))

    # ------------------------------------------------------------------ fn helpers
    def call_fn(self, f: FnRef, args: list, kwargs: dict, span: Span, scope: Scope):
        all_args = [(a, span) for a in f.args] + list(args)
        all_kwargs = {k: (v, span) for k, v in f.kwargs}
        all_kwargs.update(kwargs)
        params = f.defn.params
        if self.member_context(scope) and not any(isinstance(a, Tensor) for a, _ in all_args):
            needed = [p for p in params if p.default is None]
            if len(all_args) + len(all_kwargs) < len(needed):
                return FnRef(
                    f.defn,
                    f.module,
                    tuple(a for a, _ in all_args),
                    tuple((k, v) for k, (v, _) in all_kwargs.items()),
                )
        if len(all_args) > len(params):
            raise KilnError(
                "K0201",
                f"{f.defn.name} takes {_count(len(params), 'argument')}, got {len(all_args)}",
                span,
            )
        local: dict[str, Any] = {p.name: v for p, (v, _) in zip(params, all_args, strict=False)}
        for k, (v, vspan) in all_kwargs.items():
            if k not in {p.name for p in params}:
                raise KilnError("K0201", f"{f.defn.name} has no argument {k}", vspan)
            if k in local:
                raise KilnError("K0201", f"{f.defn.name}: argument {k} given twice", vspan)
            local[k] = v
        fn_scope = Scope(local, None, f.module, None, True, self.resolve_const)
        for p in params:
            if p.name not in local:
                if p.default is None:
                    raise KilnError(
                        "K0201", f"{f.defn.name} is missing its argument {p.name}", span
                    )
                local[p.name] = self.eval(p.default, fn_scope)
        if len(self.stack) >= self.MAX_DEPTH:
            raise KilnError(
                "K0201", f"fn calls nested more than {self.MAX_DEPTH} deep (recursion?)", span
            )
        self.spend(CALL_STEPS, span)
        self.stack.append((f.defn.name, span))
        try:
            results = self.run_body(f.defn.body, fn_scope, f.defn.span)
        finally:
            self.stack.pop()
        return results[0] if len(results) == 1 else tuple(results)

    # ------------------------------------------------------------------ scan
    def eval_scan(self, e: A.Scan, scope: Scope):
        axis = 0 if e.axis is None else self.eval(e.axis, scope)
        if not isinstance(axis, int) or isinstance(axis, bool):
            raise KilnError("K0202", f"scan axis must be an int, not {describe(axis)}", e.axis.span)
        if len(e.targets) != len(e.sequences):
            raise KilnError(
                "K0201",
                f"scan names {len(e.targets)} step values but gives {len(e.sequences)} sequences",
                e.span,
            )
        seqs = []
        for s in e.sequences:
            v = self.eval(s, scope)
            if not isinstance(v, Tensor):
                raise KilnError("K0202", f"scan runs over tensors, not {describe(v)}", s.span)
            if not -v.type.rank <= axis < v.type.rank:
                raise KilnError("K0301", f"scan axis {axis} is out of range for {v.type}", s.span)
            seqs.append(self.use(v))
        ax = [axis % s.type.rank for s in seqs]
        length = seqs[0].type.shape[ax[0]]
        for s, a, src in zip(seqs[1:], ax[1:], e.sequences[1:], strict=False):
            if s.type.shape[a] != length:
                raise KilnError(
                    "K0301",
                    f"scan sequences differ in length: {seqs[0].type} and {s.type} on axis {axis}",
                    src.span,
                )
        carries = []
        for kw in e.carry:
            v = self.as_tensor(self.eval(kw.value, scope), kw.value.span)
            carries.append((kw.name, v))
        frame = self.new_frame(emits=[])
        self.graphs.append(frame)
        body_scope = scope.child()
        try:
            g = frame.graph
            for name, v in carries:
                body_scope.set(name, self.wrap(g.add_input(name, v.type, e.span), g))
            for t, s, a in zip(e.targets, seqs, ax, strict=False):
                step_type = s.type.with_shape(s.type.shape[:a] + s.type.shape[a + 1 :])
                body_scope.set(t.name, self.wrap(g.add_input(t.name, step_type, t.span), g))
            index_names = [t.index for t in e.targets if t.index is not None]
            if len(index_names) > 1 or (index_names and e.targets[0].index is None):
                raise KilnError("K0201", "only the first scan name may bind the step index", e.span)
            if index_names:
                body_scope.set(
                    index_names[0],
                    self.wrap(g.add_input(index_names[0], TensorType("i64", ()), e.span), g),
                )
            n_fixed = len(g.inputs)
            self.exec_stmts(e.body, body_scope)
            if len(frame.emits) > 1:
                raise KilnError("K0201", "a scan body may emit only once", frame.emits[1][1])
            emits = frame.emits[0][0] if frame.emits else ()
            outs = []
            for name, v in carries:
                final = body_scope.vars.get(name)
                if isinstance(final, Poison):
                    raise Poisoned()
                final = self.as_tensor(final, e.span)
                if final.type != v.type:
                    raise KilnError(
                        "K0301",
                        f"scan carry {name} starts as {v.type} but the body makes it {final.type}",
                        _last_assignment(e.body, name) or e.span,
                    )
                outs.append(final.value)
            emit_types = []
            for v in emits:
                t = self.as_tensor(v, frame.emits[0][1])
                outs.append(t.value)
                emit_types.append(t.type)
            g.outputs = outs
            captured = list(frame.captures)
        finally:
            self.graphs.pop()
        stacked = [
            t.with_shape(t.shape[: ax[0]] + (length,) + t.shape[ax[0] :]) for t in emit_types
        ]
        inputs = (
            [v for _, v in carries] + seqs + [self.wrap(c, self.graphs[-1].graph) for c in captured]
        )
        attrs = {
            "body": frame.graph,
            "axis": ax[0],
            "axes": tuple(ax),
            "reverse": e.reverse,
            "n_carry": len(carries),
            "n_seq": len(seqs),
            "has_index": bool(index_names),
            "n_fixed_inputs": n_fixed,
        }
        outs = self.add_node("scan", inputs, attrs, stacked + [v.type for _, v in carries], e.span)
        return outs[0] if len(outs) == 1 else tuple(outs)




def _resolvable(scope: Scope, name: str) -> bool:
    try:
        scope.lookup(name)
        return True
    except Unbound:
        return False


def _source_text(node) -> str:
    span = node.span
    line = span.source_line()
    if line is None or span.end_line != span.line:
        return "expression"
    return line[span.col - 1 : span.end_col - 1]


def _names_in(expr) -> set[str]:
    """The bare names an expression mentions."""
    if isinstance(expr, A.Name):
        return {expr.id}
    if isinstance(expr, (A.BinOp, A.Constraint)):
        return _names_in(expr.left) | _names_in(expr.right)
    if isinstance(expr, A.UnaryOp):
        return _names_in(expr.operand)
    return set()


def _may_return(stmt) -> bool:
    if isinstance(stmt, A.Return):
        return True
    if isinstance(stmt, A.For):
        return any(_may_return(s) for s in stmt.body)
    if isinstance(stmt, A.If):
        return any(_may_return(s) for s in (*stmt.then, *stmt.other))
    return False


def _last_assignment(stmts, name: str):
    """The span of the last statement in `stmts` (or nested in their `if`s and `for`s) that
    assigns `name`, or None."""
    found = None
    for stmt in stmts:
        if isinstance(stmt, A.Assign) and name in stmt.targets:
            found = stmt.span
        elif isinstance(stmt, (A.For, A.If)):
            body = stmt.body if isinstance(stmt, A.For) else (*stmt.then, *stmt.other)
            found = _last_assignment(body, name) or found
    return found


def _assigned(stmt) -> list[str]:
    if isinstance(stmt, A.Assign):
        return list(stmt.targets)
    if isinstance(stmt, A.Const):
        return [stmt.name]
    if isinstance(stmt, (A.For, A.If)):
        body = stmt.body if isinstance(stmt, A.For) else (*stmt.then, *stmt.other)
        return [n for s in body for n in _assigned(s)]
    return []


__all__ = ["ForwardMixin", "Returned"]


def _scan_results(scan: A.Scan, value) -> str:
    """How a scan's results are laid out, for an unpacking that miscounts them."""
    carries = [c.name for c in scan.carry]
    emitted = (len(value) if isinstance(value, tuple) else 1) - len(carries)
    if not carries:
        return f"a scan gives its emitted values ({emitted} here)"
    return (f"a scan gives its emitted values ({emitted} here), then each carry's final value "
            f"({', '.join(carries)})")
