"""Applying blocks: stages and pipes, forward bodies and their statements, fn helpers and scan.

`ForwardMixin` is the statement half of the evaluator that `ExprMixin` (exprs.py) is the
expression half of; see exprs.py.
"""

from __future__ import annotations

from typing import Any

from ..errors import KilnError, Span
from ..ir import Graph
from ..limits import CALL_STEPS
from ..syntax import ast as A
from ..types import TensorType
from .diagnostics import MAX_DEPTH
from .graphs import Frame
from .scope import Scope
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
    Poisoned,
    Sequential,
    Tensor,
    count_of,
    describe,
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
            inst = self.members.instantiate(ref, owner.child_path(label), span)
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
            self.diag.stack.append((f"the list {f.path}", span))
            try:
                for st in f.stages:
                    # an instance made from a list entry is used at that entry: a mismatch
                    # there points at it rather than at the `x |> stages` running the list
                    at = st.span if isinstance(st, Instance) and st.span is not None else span
                    x = (self.apply_callable(st, [(x[0], at if at is not span else x[1])], {},
                                             at, scope), x[1])
            finally:
                self.diag.stack.pop()
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
        return self.members.member_scope_depth > 0

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
        self.diag.stack.append((inst.name, span if inst.path else None))  # the root needs no note
        self.frames.current_paths.append(inst.path)
        saved_counter, inst.stage_counter = inst.stage_counter, 0
        try:
            env_scope = Scope(inst.env, None, inst.ref.module, None, False, self.resolve_const)
            symbols: dict[str, Any] = {}
            pending: list = []  # bare names bind across every input before expressions check
            for d, (v, vspan) in zip(fwd.inputs, values, strict=False):
                if d.type is not None and not isinstance(v, Absent):
                    pending += self.shapes.check_input(inst.name, d, v, vspan, env_scope, symbols)
            self.shapes.check_dims(pending, env_scope, symbols)
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
            self.shapes.check_where(fwd.where, body_scope, absent)
            results, return_span = self.run_body_at(fwd.body, body_scope, fwd.span)
            self.shapes.check_results(inst.name, fwd, results, env_scope, symbols, return_span)
        except KilnError as err:
            self.diag.report(err)
            raise Poisoned() from None
        finally:
            inst.stage_counter = saved_counter
            self.frames.current_paths.pop()
            self.diag.stack.pop()
        return results[0] if len(results) == 1 and not fwd.results_tuple else tuple(results)

    def bind_inputs(self, inst, fwd: A.Forward, args, kwargs, span) -> list:
        names = [d.name for d in fwd.inputs]
        if len(args) > len(names):
            raise KilnError(
                "K0201",
                f"{inst.name} takes {count_of(len(names), 'input')} ({', '.join(names)}), "
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
                    self.diag.report(err)
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
            frame = self.frames.current
            if frame.emits is None:
                raise KilnError("K0201", "emit is only allowed inside a scan body", stmt.span)
            frame.emits.append((tuple(self.eval(v, scope) for v in stmt.values), stmt.span))

    def check_require(self, m: A.Require, scope: Scope) -> None:
        """`require cond, "message"`: K0204 with the message when cond is false."""
        if not self.compile_time_bool(m.cond, scope, "a require condition"):
            msg = self.eval(m.message, scope)
            raise KilnError("K0204", f"requirement failed: {msg}", m.cond.span)

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
                f"{f.defn.name} takes {count_of(len(params), 'argument')}, got {len(all_args)}",
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
        if len(self.diag.stack) >= MAX_DEPTH:
            raise KilnError(
                "K0201", f"fn calls nested more than {MAX_DEPTH} deep (recursion?)", span
            )
        self.budget.spend(CALL_STEPS, span)
        self.diag.stack.append((f.defn.name, span))
        try:
            results = self.run_body(f.defn.body, fn_scope, f.defn.span)
        finally:
            self.diag.stack.pop()
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
            seqs.append(self.frames.use(v))
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
            v = self.ops.as_tensor(self.eval(kw.value, scope), kw.value.span)
            carries.append((kw.name, v))
        frame = self.frames.enter(Frame(Graph(), emits=[]))
        body_scope = scope.child()
        try:
            g = frame.graph
            for name, v in carries:
                body_scope.set(name, Tensor(g.add_input(name, v.type, e.span), g))
            for t, s, a in zip(e.targets, seqs, ax, strict=False):
                step_type = s.type.with_shape(s.type.shape[:a] + s.type.shape[a + 1 :])
                body_scope.set(t.name, Tensor(g.add_input(t.name, step_type, t.span), g))
            index_names = [t.index for t in e.targets if t.index is not None]
            if len(index_names) > 1 or (index_names and e.targets[0].index is None):
                raise KilnError("K0201", "only the first scan name may bind the step index", e.span)
            if index_names:
                frame.step = g.add_input(index_names[0], TensorType("i64", ()), e.span)
                body_scope.set(index_names[0], Tensor(frame.step, g))
            frame.fixed = len(g.inputs)  # a training-mode dropout may add the step after
            self.exec_stmts(e.body, body_scope)
            if len(frame.emits) > 1:
                raise KilnError("K0201", "a scan body may emit only once", frame.emits[1][1])
            emits = frame.emits[0][0] if frame.emits else ()
            outs = []
            for name, v in carries:
                final = body_scope.vars.get(name)
                if isinstance(final, Poison):
                    raise Poisoned()
                final = self.ops.as_tensor(final, e.span)
                if final.type != v.type:
                    raise KilnError(
                        "K0301",
                        f"scan carry {name} starts as {v.type} but the body makes it {final.type}",
                        _last_assignment(e.body, name) or e.span,
                    )
                outs.append(final.value)
            emit_types = []
            for v in emits:
                t = self.ops.as_tensor(v, frame.emits[0][1])
                outs.append(t.value)
                emit_types.append(t.type)
            g.outputs = outs
            captured = list(frame.captures)
        finally:
            self.frames.leave()
        stacked = [
            t.with_shape(t.shape[: ax[0]] + (length,) + t.shape[ax[0] :]) for t in emit_types
        ]
        outer = self.frames.current.graph
        inputs = [v for _, v in carries] + seqs + [Tensor(c, outer) for c in captured]
        attrs = {
            "body": frame.graph,
            "axis": ax[0],
            "axes": tuple(ax),
            "reverse": e.reverse,
            "n_carry": len(carries),
            "n_seq": len(seqs),
            "has_index": frame.step is not None,
            "n_fixed_inputs": frame.fixed,
        }
        types = stacked + [v.type for _, v in carries]
        outs = self.frames.add_node("scan", inputs, attrs, types, e.span)
        return outs[0] if len(outs) == 1 else tuple(outs)


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


def _scan_results(scan: A.Scan, value) -> str:
    """How a scan's results are laid out, for an unpacking that miscounts them."""
    carries = [c.name for c in scan.carry]
    emitted = (len(value) if isinstance(value, tuple) else 1) - len(carries)
    if not carries:
        return f"a scan gives its emitted values ({emitted} here)"
    return (f"a scan gives its emitted values ({emitted} here), then each carry's final value "
            f"({', '.join(carries)})")


__all__ = ["ForwardMixin", "Returned"]
