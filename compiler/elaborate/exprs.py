"""Expressions: compile-time arithmetic, tensors as graph nodes, calls of ops, fns and blocks."""

from __future__ import annotations

import operator
from typing import Any

import numpy as np

from ..dims import ARITHMETIC, Dim, DimError, facts_equating, know
from ..errors import KilnError, Span
from ..limits import (
    MAX_DIM_POWER,
    MAX_DIM_TERMS,
    MAX_SEQUENCE_ITEMS,
    MAX_STRING_CHARS,
    check_int,
    check_power,
    check_size,
)
from ..ops import REGISTRY, OpError
from ..syntax import ast as A
from ..types import NUMPY_DTYPES, TensorType, dtype_of_numpy, promote
from .scope import Scope, Unbound
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
    Sequential,
    Tensor,
)

# operator -> (registry op for tensors, Python function for compile-time values)
BINARY = {
    "+": ("add", operator.add),
    "-": ("sub", operator.sub),
    "*": ("mul", operator.mul),
    "/": ("div", operator.truediv),
    "//": ("floor_div", operator.floordiv),
    "%": ("mod", operator.mod),
    "**": ("pow", operator.pow),
    "@": ("matmul", None),
    "==": ("equal", operator.eq),
    "!=": ("not_equal", operator.ne),
    "<": ("less", operator.lt),
    "<=": ("less_equal", operator.le),
    ">": ("greater", operator.gt),
    ">=": ("greater_equal", operator.ge),
    "and": ("logical_and", None),
    "or": ("logical_or", None),
}
COMPARE = {"==", "!=", "<", "<=", ">", ">="}


class Poisoned(Exception):
    """Raised when an operand is Poison: the statement is skipped without a new error."""


def norm_dim(d: Dim) -> Dim | int:
    """A constant Dim becomes a plain int, so compile-time code sees ordinary numbers."""
    return d.value if d.is_const else d


def is_scalar(v: Any) -> bool:
    return isinstance(v, (bool, int, float)) and not isinstance(v, Absent)


def describe(v: Any) -> str:
    """A value's kind in words, for error messages."""
    if isinstance(v, Tensor):
        return f"a tensor {v.type}"
    if isinstance(v, bool):
        return f"the bool {str(v).lower()}"
    if isinstance(v, int):
        return f"the int {v}"
    if isinstance(v, float):
        return f"the float {v}"
    if isinstance(v, str):
        return f'the string "{v}"'
    if isinstance(v, Dim):
        return f"the size {v}"
    if isinstance(v, (list, tuple)):
        return f"a {'list' if isinstance(v, list) else 'tuple'} of {len(v)}"
    if isinstance(v, BlockRef):
        return f"the block {v.name}"
    if isinstance(v, Instance):
        return f"the block instance {v.path or v.name}"
    if isinstance(v, (OpRef,)):
        return f"the op {v.record.name}"
    if isinstance(v, FnRef):
        return f"the fn {v.defn.name}"
    if isinstance(v, Absent):
        return "an absent optional value"
    if v is None:
        return "none"
    return type(v).__name__


class ExprMixin:
    """Evaluation of expressions; mixed into the Elaborator."""

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
            return self.binary(e.op, left, right, e.span, e.left.span, e.right.span)
        left = self.eval(e.left, scope)
        right = self.eval(e.right, scope)
        return self.binary(e.op, left, right, e.span, e.left.span, e.right.span)

    def binary(self, op: str, left, right, span: Span, lspan: Span, rspan: Span):
        op_name, py = BINARY[op]
        if op in ("==", "!=") and (left is None or right is None):
            return (left is right) == (op == "==")  # `b == none`: a tensor is never none
        if isinstance(left, Tensor) or isinstance(right, Tensor):
            return self.call_op(REGISTRY[op_name], [(left, lspan), (right, rspan)], {}, span)
        if isinstance(left, (list, tuple)) and isinstance(right, type(left)) and op == "+":
            check_size(len(left) + len(right), MAX_SEQUENCE_ITEMS, "this list", span)
            return left + right
        if op in ("==", "!=") and not (isinstance(left, Dim) or isinstance(right, Dim)):
            return (left == right) == (op == "==")  # any two compile-time values compare
        if isinstance(left, Dim) or isinstance(right, Dim):
            return self.dim_binary(op, left, right, span)
        if (
            py is None
            or not (is_scalar(left) or isinstance(left, str))
            or not (is_scalar(right) or isinstance(right, str))
        ):
            raise KilnError(
                "K0202",
                f"unsupported operands for {op}: {describe(left)} and {describe(right)}",
                span,
            )
        if op not in COMPARE and (isinstance(left, bool) or isinstance(right, bool)):
            # Python would count true as 1 (true + true == 2); kiln's bool tensors follow
            # numpy (+ is or): neither is what the model says, so it says it itself
            raise KilnError(
                "K0202",
                f"unsupported operands for {op}: {describe(left)} and {describe(right)}: "
                "compile-time bools take no arithmetic",
                span, hint="use `and` / `or`, or int(flag) for a count",
            )
        self.check_cost(op, left, right, span)
        try:
            return py(left, right)
        except ZeroDivisionError:
            raise KilnError("K0203", "division by zero at compile time", span) from None
        except (TypeError, ValueError, OverflowError) as exc:
            raise KilnError("K0202", f"cannot compute {op} here: {exc}", span) from None

    @staticmethod
    def check_cost(op: str, left, right, span: Span) -> None:
        """K0206 before computing `left op right` if its result would be too large."""
        is_int = [isinstance(v, int) and not isinstance(v, bool) for v in (left, right)]
        if op == "**" and all(is_int):
            check_power(left, right, span)
        elif isinstance(left, str) or isinstance(right, str):
            if op == "%":  # Python's printf formatting: "%999999999d" % 1 allocates a gigabyte
                raise KilnError("K0202", "% is not defined on strings", span)
            if op == "*" and any(is_int):
                text, times = (left, right) if isinstance(left, str) else (right, left)
                check_size(len(text) * max(times, 0), MAX_STRING_CHARS, "this string", span,
                           "characters")
            elif op == "+" and isinstance(left, str) and isinstance(right, str):
                check_size(len(left) + len(right), MAX_STRING_CHARS, "this string", span,
                           "characters")

    def dim_binary(self, op: str, left, right, span: Span):
        for v in (left, right):
            if not isinstance(v, (Dim, int)) or isinstance(v, bool):
                if isinstance(v, float):  # a symbolic size in float arithmetic becomes a tensor
                    return self.binary(op, self.as_tensor(left, span), right, span, span, span)
                raise KilnError(
                    "K0202",
                    f"unsupported operands for {op}: {describe(left)} and {describe(right)}",
                    span,
                )
        a, b = Dim.of(left), Dim.of(right)
        if op in COMPARE:
            diff = a - b
            if not diff.is_const:
                raise KilnError(
                    "K0203",
                    f"cannot decide {a} {op} {b} at compile time: it depends on a symbolic size",
                    span,
                    hint="state it as a `where` constraint on forward",
                )
            return BINARY[op][1](diff.value, 0)
        if op == "/":
            return self.binary(op, self.as_tensor(left, span), right, span, span, span)
        if op not in ARITHMETIC:
            raise KilnError("K0202", f"{op} is not defined on sizes ({a} {op} {b})", span)
        if op == "**" and b.is_const:
            if a.is_const:
                check_power(a.value, b.value, span)
            elif b.value > MAX_DIM_POWER:  # Dim ** n multiplies n times
                raise KilnError(
                    "K0206",
                    f"a symbolic size raised to the power {b.value}: the limit is {MAX_DIM_POWER}",
                    span,
                )
        try:
            out = ARITHMETIC[op](a, b)
        except DimError as exc:
            raise KilnError("K0203", str(exc), span) from None
        # each term multiplies the cost of the next product: (A + B + C) ** k grows fast
        check_size(len(out.terms), MAX_DIM_TERMS, "this symbolic size", span, "terms")
        return norm_dim(out)

    def eval_UnaryOp(self, e: A.UnaryOp, scope):
        v = self.eval(e.operand, scope)
        if e.op == "not":
            if isinstance(v, Tensor):
                return self.call_op(REGISTRY["logical_not"], [(v, e.operand.span)], {}, e.span)
            return not v
        if e.op == "+":
            return v
        if isinstance(v, Tensor):
            return self.call_op(REGISTRY["neg"], [(v, e.operand.span)], {}, e.span)
        if isinstance(v, Dim):
            return norm_dim(-v)
        if is_scalar(v):
            return -v
        raise KilnError("K0202", f"cannot negate {describe(v)}", e.span)

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
            self.spend(len(items), span)
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
                return self.call_op(
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
                hint=_close(name, list(base.members) + list(base.env)),
            )
        if isinstance(base, MemberPrefix):
            full = f"{base.prefix}.{name}"
            return self.attribute(base.instance, full, span, scope)
        if isinstance(base, BlockRef):
            return self.block_const(base, name, span)
        if isinstance(base, Sequential) and name.isdigit():
            return self.index_compile_time(base.stages, int(name), span)
        raise KilnError("K0103", f"{describe(base)} has no attribute {name}", span)

    def namespace_attr(self, ns: Namespace, name: str, span: Span):
        if ns.kind == "ops":
            if name not in REGISTRY or "internal" in REGISTRY[name].tags:
                raise KilnError(
                    "K0102", f"unknown op ops.{name}", span, hint=_close(name, REGISTRY)
                )
            return OpRef(REGISTRY[name])
        if ns.kind == "init":
            from ..initializers import INITIALIZER_NAMES

            if name not in INITIALIZER_NAMES:
                raise KilnError(
                    "K0102",
                    f"unknown initializer init.{name}",
                    span,
                    hint=_close(name, INITIALIZER_NAMES)
                    or "known: " + ", ".join(INITIALIZER_NAMES),
                )
            return Builtin("init." + name)
        from .scope import lookup_global

        try:
            return lookup_global(ns.target, name, self.resolve_const)
        except Unbound:
            raise KilnError(
                "K0101",
                f"{name} is not defined in {ns.target.path}",
                span,
                hint=_close(name, list(ns.target.names) + list(ns.target.consts)),
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
            return self.call_op(
                REGISTRY["gather"], [(base, e.value.span), tensor_index], {}, e.span
            )
        return self.call_op(
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
            return self.call_builtin(func.name, args, kwargs, span, scope)
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
        return self.call_op(ref.record, bound_args, bound_kwargs, span)

    # ---------------------------------------------------------------- primitive ops
    def call_op(self, rec, args: list, kwargs: dict, span: Span):
        """Bind arguments to an op's signature, check them, and add its node to the graph."""
        params = rec.args
        if len(args) > len(params):
            raise KilnError(
                "K0201",
                f"{rec.name} takes at most {len(params)} arguments "
                f"({', '.join(p.name for p in params)}), got {len(args)}",
                args[len(params)][1],
            )
        bound = {p.name: a for p, a in zip(params, args, strict=False)}
        for name, value in kwargs.items():
            if name not in {p.name for p in params}:
                raise KilnError(
                    "K0201",
                    f"{rec.name} has no argument {name}",
                    value[1],
                    hint=_close(name, [p.name for p in params])
                    or f"its arguments: {', '.join(p.name for p in params)}",
                )
            if name in bound:
                raise KilnError("K0201", f"{rec.name}: argument {name} given twice", value[1])
            bound[name] = value
        from ..ops.registry import REQUIRED

        values: dict[str, tuple] = {}
        for p in params:
            if p.name in bound:
                values[p.name] = bound[p.name]
            elif p.default is REQUIRED:
                raise KilnError(
                    "K0201",
                    f"{rec.name} is missing its argument {p.name}",
                    span,
                    hint=f"{rec.name}({', '.join(p.name for p in params)})",
                )
            else:
                values[p.name] = (p.default, span)
        if any(isinstance(v, Poison) for v, _ in values.values()):
            raise Poisoned()
        tensor_slots = self.op_tensor_inputs(rec, values, span)
        attrs = {}
        for p in params:
            if p.kind == "attr":
                v, sp = values[p.name]
                if _contains_tensor(v):
                    raise KilnError(
                        "K0203",
                        f"{rec.name}: argument {p.name} must be known at compile time, "
                        f"but it is {describe(v)}",
                        sp,
                    )
                attrs[p.name] = v
        # an elementwise op on compile-time numbers is computed now: sqrt(5), exp(1.0)
        if (
            rec.elementwise
            and tensor_slots
            and all(is_scalar(v) for v, _ in tensor_slots if v is not None)
        ):
            return self.fold_scalar_op(rec, tensor_slots, attrs, span)
        inputs = self.promote_inputs(rec, tensor_slots, span)
        types = [t.type if t is not None else None for t in inputs]
        try:
            out_types = rec.infer(types, attrs)
        except OpError as err:
            # a shape error belongs to the whole call; a bad attribute or dtype to its argument
            where = values[err.arg][1] if err.arg in values and err.code != "K0301" else span
            hint = where_hint(_aligned_sizes(types)) if err.code == "K0301" else None
            raise KilnError(err.code, f"{rec.name}: {err.message}", where, hint) from None
        outs = self.add_node(rec.name, inputs, attrs, out_types, span)
        return tuple(outs) if "multi_output" in rec.tags else outs[0]

    def op_tensor_inputs(self, rec, values: dict, span: Span) -> list:
        """The tensor-kind arguments in signature order, as (value, span) or None."""
        out: list = []
        for p in rec.args:
            v, sp = values[p.name]
            if p.kind == "tensor":
                if v is None or isinstance(v, Absent):
                    raise KilnError("K0201", f"{rec.name}: argument {p.name} needs a tensor", sp)
                out.append((v, sp))
            elif p.kind == "tensor?":
                out.append(None if v is None or isinstance(v, Absent) else (v, sp))
            elif p.kind == "tensors":
                if not isinstance(v, (list, tuple)) or not v:
                    raise KilnError(
                        "K0202",
                        f"{rec.name}: argument {p.name} must be a list of tensors, "
                        f"not {describe(v)}",
                        sp,
                    )
                out.extend((item, sp) for item in v)
        for item in out:
            if item is not None and not isinstance(item[0], (Tensor, Dim, bool, int, float)):
                raise KilnError(
                    "K0202",
                    f"{rec.name}: expected a tensor or a number, not {describe(item[0])}",
                    item[1],
                )
        return out

    def promote_inputs(self, rec, slots: list, span: Span) -> list:
        """Turn numbers into constants and cast the promoted operands to one dtype.

        Python numbers are weak, as in PyTorch: they adopt the tensors' dtype, except that a
        float meeting only ints or bools makes f32.
        """
        names = self.slot_names(rec, len(slots))
        joined = [
            s for s, n in zip(slots, names, strict=False) if s is not None and rec.promoted(n)
        ]
        target = None
        if joined:
            dtypes = [v.type.dtype for v, _ in joined if isinstance(v, Tensor)]
            weak = [v for v, _ in joined if not isinstance(v, Tensor)]
            target = dtypes[0] if dtypes else _scalar_dtype(weak[0])
            for d in dtypes[1:]:
                target = promote(target, d)
            if any(isinstance(w, float) for w in weak) and target in ("bool", "i32", "i64"):
                target = "f32"
            elif any(_scalar_dtype(w) == "i64" for w in weak) and target == "bool":
                target = "i64"
        out = []
        for slot, name in zip(slots, names, strict=False):
            if slot is None:
                out.append(None)
                continue
            v, sp = slot
            want = target if rec.promoted(name) else None
            t = self.as_tensor(v, sp, want)
            if want is not None and t.type.dtype != want:
                t = self.cast(t, want, sp)
            out.append(t)
        return out

    @staticmethod
    def slot_names(rec, n: int) -> list[str]:
        """The argument name of each tensor input slot (a tensor list fills several slots)."""
        fixed = [a for a in rec.args if a.kind in ("tensor", "tensor?")]
        listed = [a for a in rec.args if a.kind == "tensors"]
        if not listed:
            return [a.name for a in fixed]
        names: list[str] = []
        extra = n - len(fixed)
        for a in rec.args:
            if a.kind in ("tensor", "tensor?"):
                names.append(a.name)
            elif a.kind == "tensors":
                names.extend([a.name] * extra)
        return names

    def fold_scalar_op(self, rec, slots, attrs, span):
        """Compute an elementwise op on compile-time numbers, in double precision."""
        from ..evaluate import ConstEnv

        def run(as_float: bool):
            arrays = []
            for slot in slots:
                v = None if slot is None else slot[0]
                if v is None:
                    arrays.append(None)
                elif isinstance(v, bool):
                    arrays.append(np.asarray(v))
                elif isinstance(v, float) or as_float:
                    arrays.append(np.asarray(v, dtype=np.float64))
                else:
                    arrays.append(
                        np.asarray(int(v) if not isinstance(v, Dim) else v.value, dtype=np.int64)
                    )
            names = self.slot_names(rec, len(arrays))
            if any(a is not None and a.dtype == np.float64 for a in arrays):
                arrays = [
                    a.astype(np.float64)
                    if a is not None and rec.promoted(n) and a.dtype != np.bool_
                    else a
                    for a, n in zip(arrays, names, strict=False)
                ]
            types = [None if a is None else TensorType(dtype_of_numpy(a.dtype), ()) for a in arrays]
            rec.infer(types, attrs)
            return rec.reference(ConstEnv(), arrays, attrs)[0]

        try:
            try:
                result = run(False)
            except OpError as err:
                if err.code != "K0302":
                    raise
                result = run(True)
        except OpError as err:
            raise KilnError(err.code, f"{rec.name}: {err.message}", span) from None
        result = np.asarray(result)
        if result.dtype == np.bool_:
            return bool(result)
        if result.dtype.kind in "iu":
            return int(result)
        return float(result)

    def as_tensor(self, v, span: Span, dtype: str | None = None) -> Tensor:
        """A value as a tensor of the current graph: numbers and sizes become constants."""
        if isinstance(v, Tensor):
            return self.use(v)
        if isinstance(v, Dim) and not v.is_const:
            (out,) = self.add_node("dim_value", [], {"dim": v}, [TensorType("i64", ())], span)
            return out
        if isinstance(v, Dim):
            v = v.value
        if is_scalar(v):
            dt = dtype or _scalar_dtype(v)
            return self.constant(np.asarray(v, dtype=NUMPY_DTYPES[dt]), span)
        if isinstance(v, Poison):
            raise Poisoned()
        if isinstance(v, Absent):
            raise KilnError(
                "K0201",
                "this optional value is absent here",
                span,
                hint="test it with defined(name) before using it",
            )
        raise KilnError("K0202", f"expected a tensor, not {describe(v)}", span)

    def cast(self, t: Tensor, dtype: str, span: Span) -> Tensor:
        return self.call_op(REGISTRY["cast"], [(t, span)], {"dtype": (dtype, span)}, span)

    def constant(self, array: np.ndarray, span: Span) -> Tensor:
        dt = dtype_of_numpy(array.dtype)
        if dt is None:
            raise KilnError("K0302", f"unsupported constant dtype {array.dtype}", span)
        (out,) = self.add_node(
            "constant", [], {"value": array}, [TensorType(dt, array.shape)], span
        )
        return out


def _count(n: int, noun: str) -> str:
    """`1 argument`, `2 arguments`."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _scalar_dtype(v) -> str:
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, (int, Dim)):
        return "i64"
    return "f32"


def where_hint(pairs) -> str | None:
    """A hint naming the `where X % k == 0` facts under which each pair of sizes would agree
    (a U-Net's 4*(H//4) and H), or None."""
    facts: dict[str, int] = {}
    for a, b in pairs:
        for x, k in (facts_equating(Dim.of(a), Dim.of(b)) or {}).items():
            know(facts, x, k)
    if not facts:
        return None
    text = ", ".join(f"{x} % {k} == 0" for x, k in sorted(facts.items()))
    return f"the sizes agree when {text}: state it on the model's forward, `where {text}`"


def _aligned_sizes(types) -> list[tuple[Dim, Dim]]:
    """Pairs of different sizes on the same axis (counted from the last) of an op's operands."""
    shapes = [t.shape for t in _flat_types(types)]
    pairs = []
    for i, s in enumerate(shapes):
        for other in shapes[i + 1 :]:
            pairs += [(a, b) for a, b in zip(reversed(s), reversed(other)) if a != b]
    return pairs


def _flat_types(types) -> list[TensorType]:
    out = []
    for t in types:
        out += _flat_types(t) if isinstance(t, (list, tuple)) else [t] if t is not None else []
    return out


def _contains_tensor(v) -> bool:
    if isinstance(v, Tensor):
        return True
    if isinstance(v, (list, tuple)):
        return any(_contains_tensor(x) for x in v)
    return False


def _close(name: str, candidates) -> str | None:
    import difflib

    close = difflib.get_close_matches(name, list(candidates), n=3)
    return f"did you mean {' or '.join(close)}?" if close else None


__all__ = ["ExprMixin", "Poisoned", "describe", "is_scalar", "norm_dim"]
