"""Operators: `a + b` on compile-time values (ints, floats, strings, lists, symbolic sizes)
computed now, with the limits on what it may cost, and on tensors added as the op's node."""

from __future__ import annotations

import operator

from ..dims import ARITHMETIC, Dim, DimError, known_value
from ..errors import KilnError, Span
from ..limits import (
    MAX_DIM_POWER,
    MAX_DIM_TERMS,
    MAX_SEQUENCE_ITEMS,
    MAX_STRING_CHARS,
    check_power,
    check_size,
)
from ..ops import REGISTRY
from .opcalls import OpCalls
from .values import Tensor, describe, is_scalar, norm_dim

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

class Arithmetic:
    """Binary and unary operators; tensor operands go through `ops`. Holds no state."""

    def __init__(self, ops: OpCalls) -> None:
        self.ops = ops

    def binary(self, op: str, left, right, span: Span, lspan: Span, rspan: Span):
        op_name, py = BINARY[op]
        if op in ("==", "!=") and (left is None or right is None):
            return (left is right) == (op == "==")  # `b == none`: a tensor is never none
        if isinstance(left, Tensor) or isinstance(right, Tensor):
            return self.ops.call_op(REGISTRY[op_name], [(left, lspan), (right, rspan)], {}, span)
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
                    return self.binary(op, self.ops.as_tensor(left, span), right, span, span, span)
                raise KilnError(
                    "K0202",
                    f"unsupported operands for {op}: {describe(left)} and {describe(right)}",
                    span,
                )
        a, b = Dim.of(left), Dim.of(right)
        if op in COMPARE:
            # decided under the `where X % k == 0` facts in force (each call checks them):
            # with H % 4 == 0, `H % 2 == 0` is true
            diff = known_value(a - b)
            if diff is None:
                raise KilnError(
                    "K0203",
                    f"cannot decide {a} {op} {b} at compile time: it depends on a symbolic size",
                    span,
                    hint="state it as a `where` constraint on forward",
                )
            return BINARY[op][1](diff, 0)
        if op == "/":
            return self.binary(op, self.ops.as_tensor(left, span), right, span, span, span)
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

    def unary(self, op: str, v, span: Span, operand_span: Span):
        """`not v`, `+v`, `-v`."""
        if op == "not":
            if isinstance(v, Tensor):
                return self.ops.call_op(REGISTRY["logical_not"], [(v, operand_span)], {}, span)
            return not v
        if op == "+":
            return v
        if isinstance(v, Tensor):
            return self.ops.call_op(REGISTRY["neg"], [(v, operand_span)], {}, span)
        if isinstance(v, Dim):
            return norm_dim(-v)
        if is_scalar(v):
            return -v
        raise KilnError("K0202", f"cannot negate {describe(v)}", span)
