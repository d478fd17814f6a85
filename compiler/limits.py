"""Bounds on compile-time work, so a model file cannot make the compiler hang or run out of memory.

Compile-time values are small by nature (sizes, layer counts, names); a model that needs more is
almost certainly a mistake or an attack. Each bound is checked before the work it limits is done
(a power's size before computing it, a string's length before repeating it), and exceeding one is
a located KilnError K0206. docs/language.md ("Compile-time limits") lists them.
"""

from __future__ import annotations

from .errors import KilnError, Span

# compile-time ints are int64, as sizes and integer tensors are
INT_MIN = -(2**63)
INT_MAX = 2**63 - 1
# characters in a compile-time string (names, messages)
MAX_STRING_CHARS = 65_536
# items in a compile-time list or tuple, and in one `range`
MAX_SEQUENCE_ITEMS = 100_000
# terms of a symbolic size (a polynomial in the symbols), and the power a symbolic size is raised to
MAX_DIM_TERMS = 256
MAX_DIM_POWER = 64
# loop iterations (for, comprehensions) plus CALL_STEPS per fn call or block instance, in one
# model's elaboration, all together (a call costs some 25 times an iteration to elaborate)
MAX_UNROLLED_STEPS = 1_000_000
CALL_STEPS = 25
# nodes in one model's graph (after unrolling loops and inlining blocks); ResNet-18 has 174
MAX_GRAPH_NODES = 50_000


class LimitExceeded(KilnError):
    """A budget of the whole elaboration ran out: fatal, since carrying on past the failing
    statement (as other errors do, to report more at once) would only hit it again."""

    def __init__(self, message: str, span: Span | None):
        super().__init__("K0206", message, span)


def check_int(value: int, span: Span | None, what: str = "a compile-time int") -> int:
    """`value` if it lies in int64, else K0206 at `span`."""
    if not INT_MIN <= value <= INT_MAX:
        shown = str(value) if value.bit_length() < 200 else f"a {value.bit_length()}-bit number"
        raise KilnError(
            "K0206", f"{what} must fit in 64 bits (int64), but it is {shown}", span
        )
    return value


def check_power(base: int, exponent: int, span: Span | None) -> None:
    """K0206 unless `base ** exponent` fits in int64, decided without computing it."""
    if exponent < 0 or abs(base) < 2:
        return
    # |base| ** exponent >= 2 ** ((bits(|base|) - 1) * exponent)
    if (abs(base).bit_length() - 1) * exponent > 63:
        raise KilnError(
            "K0206", f"{base} ** {exponent} does not fit in 64 bits (int64)", span
        )


def check_size(n: int, limit: int, what: str, span: Span | None, unit: str = "items") -> None:
    """K0206 if `what` (a string, a list, a loop...) would have `n` `unit`, over `limit`."""
    if n > limit:
        raise KilnError(
            "K0206", f"{what} would have {n:,} {unit}, more than the limit of {limit:,}", span
        )
