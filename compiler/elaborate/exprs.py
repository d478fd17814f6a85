"""Expressions: names, operators, containers and comprehensions, attributes and indexing, and
calls of ops, builtins, fns and blocks.

`ExprMixin` and `ForwardMixin` (forward.py) are one recursive evaluator split by topic: an
expression may call a fn or apply a block, whose body is statements of expressions. They share
all of the Elaborator's state (its parts: `ops`, `arith`, `builtins`, `members`, `frames`,
`diag`, `budget`) and keep none of their own.
"""

from __future__ import annotations

from typing import Any

from ..dims import Dim
from ..errors import KilnError, Span, did_you_mean
from ..limits import MAX_SEQUENCE_ITEMS, check_int, check_size
from ..ops import REGISTRY, Prop
from ..syntax import ast as A
from .scope import Scope, Unbound, lookup_global
from .values import (
    POISON,
    Absent,
    BlockRef,
    Builtin,
    FnRef,
    Instance,
    MemberPrefix,
    Namespace,
    OpRef,
    Poison,
    Poisoned,
    Sequential,
    Tensor,
    describe,
    norm_dim,
)


class ExprMixin:
    """Evaluation of expressions: `eval` dispatches on the node's class to `eval_<Class>`."""

    # ---------------------------------------------------------------- entry
    def eval(self, expr, scope: Scope) -> Any:
        method = getattr(self, "eval_" + type(expr).__name__, None)
        if method is None:
            raise KilnError("K0001", f"{type(expr).__name__} is not an expression here", expr.span)
        value = method(expr, scope)
        if isinstance(value, Poison):
            raise Poisoned()
        if type(value) is int:  # every compile-time int, however made, stays in int64
            check_int(value, expr.span)
        return value

    def eval_Literal(self, e: A.Literal, scope):
        return e.value

    def eval_Name(self, e: A.Name, scope: Scope):
        try:
            value = scope.lookup(e.id)
        except Unbound:
            raise self.unknown_name(e.id, e.span, scope) from None
        return self.read_member(value, e.span)

    def eval_InterpName(self, e: A.InterpName, scope: Scope):
        return self.eval_Name(A.Name(e.span, self.interp_text(e, scope)), scope)

    def interp_text(self, e: A.InterpName, scope: Scope) -> str:
        out = []
        for piece in e.pieces:
            if isinstance(piece, str):
                out.append(piece)
                continue
            v = self.eval(piece, scope)
            if isinstance(v, Dim) and v.is_const:
                v = v.value
            if not isinstance(v, (int, str)) or isinstance(v, bool):
                raise KilnError(
                    "K0203",
                    f"a name can only interpolate ints and strings, not {describe(v)}",
                    piece.span,
                )
            out.append(str(v))
        return "".join(out)

    def unknown_name(self, name: str, span: Span, scope: Scope) -> KilnError:
        import difflib

        # `Linear` beside `import std.nn`: the name lives in an imported module
        qualified = [f"{alias}.{name}" for alias, v in sorted(scope.module.names.items())
                     if isinstance(v, Namespace) and v.kind == "module"
                     and (name in v.target.names or name in v.target.consts)] \
            if scope.module is not None else []
        close = qualified or difflib.get_close_matches(name, set(scope.names()), n=3)
        hint = f"did you mean {' or '.join(close)}?" if close else None
        return KilnError("K0101", f"unknown name {name}", span, hint=hint)

    def eval_Ternary(self, e: A.Ternary, scope):
        cond = self.compile_time_bool(e.cond, scope, "the condition of `a if c else b`")
        return self.eval(e.then if cond else e.other, scope)

    def compile_time_bool(self, expr, scope, what: str) -> bool:
        v = self.eval(expr, scope)
        if isinstance(v, Tensor):
            raise KilnError(
                "K0203",
                f"{what} must be known at compile time, but it is {describe(v)}",
                expr.span,
                hint="use where(cond, a, b) to choose between tensors elementwise",
            )
        if not isinstance(v, (bool, int, float, str, list, tuple)) and v is not None:
            if isinstance(v, Absent):
                return False
            raise KilnError("K0202", f"{what} must be a bool, not {describe(v)}", expr.span)
        return bool(v)

    # ---------------------------------------------------------------- operators
    def eval_BinOp(self, e: A.BinOp, scope):
        if e.op in ("and", "or"):
            left = self.eval(e.left, scope)
            if not isinstance(left, Tensor):
                if e.op == "and" and not left:
                    return left
                if e.op == "or" and left:
                    return left
                right = self.eval(e.right, scope)
                if not isinstance(right, Tensor):
                    return right
            else:
                right = self.eval(e.right, scope)
            return self.arith.binary(e.op, left, right, e.span, e.left.span, e.right.span)
        left = self.eval(e.left, scope)
        right = self.eval(e.right, scope)
        return self.arith.binary(e.op, left, right, e.span, e.left.span, e.right.span)
    def eval_UnaryOp(self, e: A.UnaryOp, scope):
        return self.arith.unary(e.op, self.eval(e.operand, scope), e.span, e.operand.span)

    # ---------------------------------------------------------------- containers
    def eval_TupleLit(self, e: A.TupleLit, scope):
        return tuple(self.eval(i, scope) for i in e.items)

    def eval_ListLit(self, e: A.ListLit, scope):
        return [self.eval(i, scope) for i in e.items]

    def eval_ListComp(self, e: A.ListComp, scope):
        out: list = []
        self._comp(e, 0, scope.child(), out)
        return out

    def _comp(self, e: A.ListComp, depth: int, scope: Scope, out: list) -> None:
        if depth == len(e.fors):
            check_size(len(out) + 1, MAX_SEQUENCE_ITEMS, "this list", e.span)
            out.append(self.eval(e.element, scope))
            return
        clause = e.fors[depth]
        for item in self.iterate(self.eval(clause.iter, scope), clause.iter.span):
            self.bind_targets(scope, clause.targets, item, clause.span)
            if clause.cond is None or self.compile_time_bool(clause.cond, scope, "the filter"):
                self._comp(e, depth + 1, scope, out)

    def iterate(self, v, span: Span) -> list:
        """The items a compile-time loop runs over, counted against the unrolling budget."""
        if isinstance(v, (list, tuple, Sequential)):
            items = list(v.stages if isinstance(v, Sequential) else v)
            self.budget.spend(len(items), span)
            return items
        raise KilnError("K0202", f"cannot iterate over {describe(v)} at compile time", span)

    def bind_targets(self, scope: Scope, targets: tuple[str, ...], value, span: Span,
                     hint: str | None = None) -> None:
        """Bind `targets` to `value`, unpacking it when there are several; `hint` explains
        where the value's length comes from (a scan's emits and carries)."""
        if len(targets) == 1:
            scope.set(targets[0], value)
            return
        if isinstance(value, Poison):
            for t in targets:
                scope.set(t, POISON)
            return
        if not isinstance(value, (list, tuple)) or len(value) != len(targets):
            one = "" if isinstance(value, (list, tuple)) else ": it is one value"
            raise KilnError(
                "K0201",
                f"cannot unpack {describe(value)} into {len(targets)} names "
                f"({', '.join(targets)}){one}",
                span,
                hint=hint,
            )
        for t, v in zip(targets, value, strict=False):
            scope.set(t, v)

    # ---------------------------------------------------------------- attribute and index
    def eval_Attribute(self, e: A.Attribute, scope):
        base = self.eval(e.value, scope)
        name = e.name if isinstance(e.name, str) else self.interp_text(e.name, scope)
        return self.attribute(base, name, e.span, scope)

    def attribute(self, base, name: str, span: Span, scope):
        if isinstance(base, Tensor):
            if name == "T":
                if base.type.rank < 2:
                    raise KilnError(
                        "K0301", f".T needs at least 2 axes, but the tensor is {base.type}", span
                    )
                return self.ops.call_op(
                    REGISTRY["transpose"], [(base, span)], {"a": (-2, span), "b": (-1, span)}, span
                )
            if name == "shape":
                return tuple(norm_dim(d) for d in base.type.shape)
            if name == "dtype":
                return base.type.dtype
            if name == "rank":
                return base.type.rank
            raise KilnError(
                "K0103",
                f"a tensor has no attribute {name}",
                span,
                hint="tensors have .T, .shape, .dtype and .rank",
            )
        if isinstance(base, Namespace):
            return self.namespace_attr(base, name, span)
        if isinstance(base, Instance):
            if name in base.members:
                return self.read_member(base.members[name], span)
            if any(m.startswith(name + ".") for m in base.members):
                return MemberPrefix(base, name)
            if name in base.env:
                return base.env[name]
            raise KilnError(
                "K0103",
                f"{base.name} instance {base.path or '(root)'} has no member {name}",
                span,
                hint=did_you_mean(name, list(base.members) + list(base.env)),
            )
        if isinstance(base, MemberPrefix):
            full = f"{base.prefix}.{name}"
            return self.attribute(base.instance, full, span, scope)
        if isinstance(base, BlockRef):
            return self.members.block_const(base, name, span)
        if isinstance(base, Sequential) and name.isdigit():
            return self.index_compile_time(base.stages, int(name), span)
        raise KilnError("K0103", f"{describe(base)} has no attribute {name}", span)

    def namespace_attr(self, ns: Namespace, name: str, span: Span):
        if ns.kind == "ops":
            if name not in REGISTRY or REGISTRY[name].has(Prop.INTERNAL):
                raise KilnError(
                    "K0102", f"unknown op ops.{name}", span, hint=did_you_mean(name, REGISTRY)
                )
            return OpRef(REGISTRY[name])
        if ns.kind == "init":
            from ..initializers import INITIALIZER_NAMES

            if name not in INITIALIZER_NAMES:
                raise KilnError(
                    "K0102",
                    f"unknown initializer init.{name}",
                    span,
                    hint=did_you_mean(name, INITIALIZER_NAMES)
                    or "known: " + ", ".join(INITIALIZER_NAMES),
                )
            return Builtin("init." + name)
        try:
            return lookup_global(ns.target, name, self.resolve_const)
        except Unbound:
            raise KilnError(
                "K0101",
                f"{name} is not defined in {ns.target.path}",
                span,
                hint=did_you_mean(name, list(ns.target.names) + list(ns.target.consts)),
            ) from None

    def eval_Index(self, e: A.Index, scope):
        base = self.eval(e.value, scope)
        if isinstance(base, Tensor):
            return self.index_tensor(base, e, scope)
        if len(e.items) != 1:
            raise KilnError("K0202", f"{describe(base)} takes one index", e.span)
        item = e.items[0]
        if isinstance(item, A.Slice):
            parts = [
                None if p is None else self.eval(p, scope)
                for p in (item.start, item.stop, item.step)
            ]
            seq = base.stages if isinstance(base, Sequential) else base
            if not isinstance(seq, (list, tuple, str)):
                raise KilnError("K0202", f"cannot slice {describe(base)}", e.span)
            return seq[slice(*parts)]
        idx = self.eval(item, scope)
        if isinstance(base, Sequential):
            base = base.stages
        if isinstance(base, (list, tuple, str)):
            return self.read_member(self.index_compile_time(base, idx, item.span), e.span)
        raise KilnError("K0202", f"cannot index {describe(base)}", e.span)

    def index_compile_time(self, seq, idx, span):
        if isinstance(idx, Dim) and idx.is_const:
            idx = idx.value
        if not isinstance(idx, int) or isinstance(idx, bool):
            raise KilnError("K0202", f"a list index must be an int, not {describe(idx)}", span)
        if not -len(seq) <= idx < len(seq):
            raise KilnError("K0203", f"index {idx} is out of range for a list of {len(seq)}", span)
        return seq[idx]

    def index_tensor(self, base: Tensor, e: A.Index, scope):
        items = []
        tensor_index = None
        for item in e.items:
            if isinstance(item, A.EllipsisLit):
                items.append(("ellipsis",))
            elif isinstance(item, A.Slice):
                parts = []
                for p in (item.start, item.stop):
                    parts.append(
                        None if p is None else self.size_value(self.eval(p, scope), p.span)
                    )
                step = 1 if item.step is None else self.eval(item.step, scope)
                if not isinstance(step, int) or isinstance(step, bool) or step == 0:
                    raise KilnError("K0203", "a slice step must be a nonzero int", item.span)
                items.append(("range", parts[0], parts[1], step))
            else:
                v = self.eval(item, scope)
                if isinstance(v, Tensor):
                    if tensor_index is not None or len(e.items) != 1:
                        raise KilnError(
                            "K0202",
                            "indexing with a tensor takes exactly one index",
                            item.span,
                            hint="use gather(x, index, axis = k) for other axes",
                        )
                    tensor_index = (v, item.span)
                elif v is None:
                    items.append(("new",))
                else:
                    items.append(("int", Dim.of(self.size_value(v, item.span))))
        if tensor_index is not None:
            return self.ops.call_op(
                REGISTRY["gather"], [(base, e.value.span), tensor_index], {}, e.span
            )
        return self.ops.call_op(
            REGISTRY["slice"], [(base, e.value.span)], {"items": (tuple(items), e.span)}, e.span
        )

    def size_value(self, v, span: Span):
        """A compile-time int or Dim used as an index or a size."""
        if isinstance(v, Dim):
            return v
        if isinstance(v, int) and not isinstance(v, bool):
            return v
        raise KilnError("K0202", f"expected an int or a size here, not {describe(v)}", span)

    def eval_Slice(self, e: A.Slice, scope):
        raise KilnError("K0001", "a slice can only appear inside [ ]", e.span)

    def eval_EllipsisLit(self, e, scope):
        raise KilnError("K0001", "... can only appear inside [ ] or a shape", e.span)

    # ---------------------------------------------------------------- calls
    def eval_Call(self, e: A.Call, scope: Scope):
        if isinstance(e.func, A.Name) and e.func.id == "defined":
            found, _ = scope.find_local(e.func.id)
            if not found:
                return self.defined(e, scope)
        func = self.eval(e.func, scope)
        args = [(self.eval(a, scope), a.span) for a in e.args]
        kwargs = self.eval_kwargs(e.kwargs, scope)
        return self.call_value(func, args, kwargs, e.span, scope)

    def eval_kwargs(self, kws: tuple[A.Keyword, ...], scope) -> dict:
        out: dict = {}
        for kw in kws:
            if kw.name in out:
                raise KilnError("K0201", f"argument {kw.name} given twice", kw.span)
            out[kw.name] = (self.eval(kw.value, scope), kw.span)
        return out

    def defined(self, e: A.Call, scope: Scope) -> bool:
        if len(e.args) != 1 or e.kwargs or not isinstance(e.args[0], (A.Name, A.InterpName)):
            raise KilnError("K0201", "defined(NAME) takes one name", e.span)
        arg = e.args[0]
        name = arg.id if isinstance(arg, A.Name) else self.interp_text(arg, scope)
        found, value = scope.find_local(name)
        if found:  # an optional input left out, or an argument defaulted to none
            return not isinstance(value, Absent) and value is not None
        try:
            scope.lookup(name)
            return True
        except Unbound:
            raise self.unknown_name(name, arg.span, scope) from None

    def call_value(self, func, args: list, kwargs: dict, span: Span, scope: Scope):
        """Call any callable value with evaluated (value, span) arguments."""
        if isinstance(func, OpRef):
            return self.call_op_ref(func, args, kwargs, span, scope)
        if isinstance(func, Builtin):
            return self.builtins.call(func.name, args, kwargs, span)
        if isinstance(func, FnRef):
            return self.call_fn(func, args, kwargs, span, scope)
        if isinstance(func, BlockRef):
            if args and isinstance(args[0][0], Tensor):  # `Block(args)(x)`: build, then apply
                inst = self.inline_instance(func, None, span, scope)
                return self.apply_forward(inst, args, kwargs, span)
            return func.extend(tuple(a for a, _ in args), {k: v for k, (v, _) in kwargs.items()})
        if isinstance(func, (Instance, Sequential)):
            return self.apply_callable(func, args, kwargs, span, scope)
        raise KilnError("K0202", f"{describe(func)} cannot be called", span)

    def call_op_ref(self, ref: OpRef, args, kwargs, span, scope):
        bound_args = [(a, span) for a in ref.args] + list(args)
        bound_kwargs = {k: (v, span) for k, v in ref.kwargs}
        bound_kwargs.update(kwargs)
        if self.member_context(scope) and not any(isinstance(a, Tensor) for a, _ in bound_args):
            required = [a for a in ref.record.args if a.kind == "tensor"]
            if len(bound_args) < len(required):
                return OpRef(
                    ref.record,
                    tuple(a for a, _ in bound_args),
                    tuple((k, v) for k, (v, _) in bound_kwargs.items()),
                )
        return self.ops.call_op(ref.record, bound_args, bound_kwargs, span)


__all__ = ["ExprMixin"]
