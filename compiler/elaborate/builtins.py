"""Compile-time builtin functions: range, len, min, max, dim, shape, and friends."""

from __future__ import annotations

import builtins

from ..dims import Dim, known_value
from ..errors import KilnError, Span
from ..limits import MAX_SEQUENCE_ITEMS, check_size
from ..ops import REGISTRY
from .opcalls import OpCalls
from .values import (
    BlockRef,
    InitializerValue,
    Instance,
    Sequential,
    Tensor,
    describe,
    is_scalar,
    norm_dim,
)


def kiln_repr(v) -> str:
    """A compile-time value as kiln writes it: true, none, [1, 2], "text"."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "none"
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, list):
        return "[" + ", ".join(kiln_repr(x) for x in v) + "]"
    if isinstance(v, tuple):
        return "(" + ", ".join(kiln_repr(x) for x in v) + ("," if len(v) == 1 else "") + ")"
    if isinstance(v, BlockRef):
        given = [kiln_repr(a) for a in v.args] + [f"{k} = {kiln_repr(x)}" for k, x in v.kwargs]
        return f"{v.name}({', '.join(given)})" if given else v.name
    if isinstance(v, (Tensor, Instance)):
        return describe(v)
    return str(v)


# a builtin that is also an op: with a tensor argument the op runs instead
OP_OVERLOADS = {"min": "min", "max": "max", "sum": "sum", "abs": "abs"}


class Builtins:
    """The compile-time builtins, each a `builtin_NAME` method; a builtin that is also an op
    (`max(x, axis = 1)`) calls it through `ops`. Holds no state."""

    def __init__(self, ops: OpCalls) -> None:
        self.ops = ops

    def call(self, name: str, args: list, kwargs: dict, span: Span):
        """Call the builtin `name` with (value, span) arguments."""
        if name.startswith("init."):
            return self.make_init(name[5:], args, kwargs, span)
        values = [v for v, _ in args]
        if name in OP_OVERLOADS and (any(isinstance(v, Tensor) for v in values) or kwargs):
            if name in ("max", "min") and len(args) == 2 and not kwargs:  # max(a, b): elementwise
                return self.ops.call_op(REGISTRY[name + "imum"], args, kwargs, span)
            return self.ops.call_op(REGISTRY[OP_OVERLOADS[name]], args, kwargs, span)
        if kwargs:
            raise KilnError("K0201", f"{name} takes no keyword arguments", span)
        method = getattr(self, "builtin_" + name)
        return method(values, span)

    def make_init(self, name: str, args, kwargs, span: Span):
        from ..initializers import InitError, make_initializer

        for v, vspan in [*args, *kwargs.values()]:
            if isinstance(v, Dim):
                raise KilnError(
                    "K0203",
                    f"init.{name}: arguments must be numbers known at compile "
                    f"time, not the symbolic size {v}",
                    vspan,
                )
        try:
            init = make_initializer(
                name, [v for v, _ in args], {k: v for k, (v, _) in kwargs.items()}
            )
        except InitError as err:
            where = kwargs[err.arg][1] if err.arg in kwargs else span
            raise KilnError("K0201", f"init.{name}: {err.message}", where) from None
        return InitializerValue(init)

    def _ints(self, values, span, name):
        out = []
        for v in values:
            if isinstance(v, Dim):
                if not v.is_const:
                    raise KilnError(
                        "K0203", f"{name} needs sizes known at compile time, not {v}", span
                    )
                v = v.value
            if not isinstance(v, int) or isinstance(v, bool):
                raise KilnError("K0202", f"{name} takes ints, not {describe(v)}", span)
            out.append(v)
        return out

    def builtin_range(self, values, span):
        if not 1 <= len(values) <= 3:
            raise KilnError("K0201", "range takes 1 to 3 arguments", span)
        ints = self._ints(values, span, "range")
        if len(ints) == 3 and ints[2] == 0:
            raise KilnError("K0203", "range step must not be zero", span)
        r = range(*ints)
        # len() itself overflows past 2**63 items; the count is exact without it
        count = max(0, -((r.start - r.stop) // r.step))
        check_size(count, MAX_SEQUENCE_ITEMS, "this range", span)
        return list(r)

    def _one(self, values, span, name):
        if len(values) != 1:
            raise KilnError("K0201", f"{name} takes one argument", span)
        return values[0]

    def builtin_is_list(self, values, span):
        """True for a list or tuple: `k if is_list(k) else [k, k]` (PyTorch's _pair)."""
        return isinstance(self._one(values, span, "is_list"), (list, tuple))

    def builtin_known(self, values, span):
        """True for a number, and for a size known at compile time (under the `where` facts
        in force): `avg_pool(x, [h // n, w // n]) if known(h) and known(w) else ...`."""
        v = self._one(values, span, "known")
        if isinstance(v, Dim):
            return known_value(v) is not None
        return is_scalar(v) and not isinstance(v, bool)

    def builtin_len(self, values, span):
        v = self._one(values, span, "len")
        if isinstance(v, Sequential):
            return len(v.stages)
        if isinstance(v, Tensor):
            return norm_dim(v.type.shape[0]) if v.type.rank else 0
        if not isinstance(v, (list, tuple, str)):
            raise KilnError("K0202", f"len of {describe(v)}", span)
        return len(v)

    def _convert(self, values, span, kind):
        v = self._one(values, span, kind.__name__)
        if isinstance(v, Dim) and v.is_const:
            v = v.value
        if not (is_scalar(v) or isinstance(v, str)):
            raise KilnError("K0202", f"{kind.__name__}() of {describe(v)}", span)
        try:
            return kind(v)
        except (ValueError, OverflowError) as exc:
            raise KilnError("K0203", f"{kind.__name__}(): {exc}", span) from None

    def builtin_int(self, values, span):
        return self._convert(values, span, int)

    def builtin_float(self, values, span):
        return self._convert(values, span, float)

    def builtin_bool(self, values, span):
        return self._convert(values, span, bool)

    def builtin_str(self, values, span):
        v = self._one(values, span, "str")
        return v if isinstance(v, str) else kiln_repr(v)

    def _seq(self, v, span, name):
        if isinstance(v, Sequential):
            return list(v.stages)
        if not isinstance(v, (list, tuple)):
            raise KilnError("K0202", f"{name} takes a list, not {describe(v)}", span)
        return list(v)

    def builtin_list(self, values, span):
        return self._seq(self._one(values, span, "list"), span, "list")

    def builtin_reversed(self, values, span):
        return self._seq(self._one(values, span, "reversed"), span, "reversed")[::-1]

    def builtin_enumerate(self, values, span):
        return [
            (i, v)
            for i, v in enumerate(
                self._seq(self._one(values, span, "enumerate"), span, "enumerate")
            )
        ]

    def builtin_zip(self, values, span):
        return [tuple(t) for t in zip(*(self._seq(v, span, "zip") for v in values), strict=False)]

    def builtin_round(self, values, span):
        return round(self._convert(values, span, float))

    def _numbers(self, values, span, name):
        items = values[0] if len(values) == 1 and isinstance(values[0], (list, tuple)) else values
        if not items:
            raise KilnError("K0201", f"{name} of nothing", span)
        for v in items:
            if not (is_scalar(v) or isinstance(v, Dim)):
                raise KilnError("K0202", f"{name} of {describe(v)}", span)
        return items

    def _extreme(self, values, span, name):
        items = self._numbers(values, span, name)
        if any(isinstance(v, Dim) and not v.is_const for v in items):
            raise KilnError("K0203", f"{name} of symbolic sizes is not known at compile time", span)
        items = [v.value if isinstance(v, Dim) else v for v in items]
        return getattr(builtins, name)(items)

    def builtin_min(self, values, span):
        return self._extreme(values, span, "min")

    def builtin_max(self, values, span):
        return self._extreme(values, span, "max")

    def builtin_sum(self, values, span):
        total = 0
        for v in self._numbers(values, span, "sum"):
            total = total + v
        return norm_dim(total) if isinstance(total, Dim) else total

    def builtin_abs(self, values, span):
        v = self._one(values, span, "abs")
        if not is_scalar(v):
            raise KilnError("K0202", f"abs of {describe(v)}", span)
        return abs(v)

    def _tensor_arg(self, values, span, name, n):
        if len(values) != n or not isinstance(values[0], Tensor):
            raise KilnError(
                "K0201", f"{name} takes a tensor" + (" and an axis" if n == 2 else ""), span
            )
        return values[0]

    def builtin_dim(self, values, span):
        t = self._tensor_arg(values, span, "dim", 2)
        axis = values[1]
        if (
            not isinstance(axis, int)
            or isinstance(axis, bool)
            or not -t.type.rank <= axis < t.type.rank
        ):
            raise KilnError("K0203", f"dim: axis {axis!r} is out of range for {t.type}", span)
        return norm_dim(t.type.shape[axis])

    def builtin_shape(self, values, span):
        t = self._tensor_arg(values, span, "shape", 1)
        return tuple(norm_dim(d) for d in t.type.shape)

    def builtin_rank(self, values, span):
        return self._tensor_arg(values, span, "rank", 1).type.rank

    def builtin_defined(self, values, span):
        raise KilnError("K0201", "defined(NAME) takes a name", span)


__all__ = ["Builtins", "kiln_repr"]
