"""Binding a call's arguments to an op record's signature (its `Arg`s).

The rules every front end follows, in one place: positional arguments fill the signature in
order, keywords by name, defaults the rest; a surplus, unknown, repeated or missing argument is a
located K0201. The elaborator binds `conv(x, w, stride = 2)` here, and a graph builder can bind
its calls the same way. Arguments are (value, span) pairs, so each error points at its argument;
the values themselves are not looked at.
"""

from __future__ import annotations

from typing import Any

from ..errors import KilnError, Span, did_you_mean
from .registry import REQUIRED, OpRecord

Located = tuple[Any, "Span | None"]  # a value and where it was written


def bind_arguments(
    rec: OpRecord, args: list[Located], kwargs: dict[str, Located], span: Span | None
) -> dict[str, Located]:
    """Each argument of `rec`'s signature, in order, bound to a given or default value (a
    default is located at the call, `span`)."""
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
                hint=did_you_mean(name, [p.name for p in params])
                or f"its arguments: {', '.join(p.name for p in params)}",
            )
        if name in bound:
            raise KilnError("K0201", f"{rec.name}: argument {name} given twice", value[1])
        bound[name] = value
    values: dict[str, Located] = {}
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
    return values


def tensor_slot_names(rec: OpRecord, n: int) -> list[str]:
    """The argument name of each of a node's `n` tensor input slots (a tensor list such as
    concat's fills several)."""
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
