"""Symbolic dimensions: integer polynomials over named sizes, kept in a normal form.

A `Dim` is a sum of monomials with integer coefficients. An atom of a monomial is a symbol
name (`B`) or an opaque floor-division or modulo of a Dim by a positive integer, so that a
convolution's `(H + 2*p - k) // s + 1` stays symbolic. Normalisation makes `E + N == N + E`.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Union

Atom = Union[str, "DivAtom"]
Monomial = tuple[tuple[Atom, int], ...]  # sorted (atom, power) pairs; () is the constant term


@dataclass(frozen=True)
class DivAtom:
    """`num // den` (kind "//") or `num % den` (kind "%") that could not be simplified."""

    kind: str
    num: Dim
    den: int
    # key() spelled once: every Dim holding this atom sorts and hashes by it
    _key: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_key", f"({self.num}){self.kind}{self.den}")

    def key(self) -> str:
        return self._key

    def text(self) -> str:
        num = self.num.symbol or f"({self.num})"
        return f"{num}{self.kind}{self.den}"

    def evaluate(self, env: dict[str, int]) -> int:
        n = self.num.evaluate(env)
        return n // self.den if self.kind == "//" else n % self.den


def _atom_key(atom: Atom) -> str:
    return atom if isinstance(atom, str) else "~" + atom.key()


# the operators sizes support, by their kiln spelling
ARITHMETIC = {
    "+": operator.add, "-": operator.sub, "*": operator.mul,
    "//": operator.floordiv, "%": operator.mod, "**": operator.pow,
}


class DimError(ValueError):
    """An operation on dimensions that has no symbolic answer (e.g. division by `B`)."""


class Dim:
    """An integer size: a constant or a polynomial in symbolic sizes."""

    # _key: the normal form spelled with atom keys (hash and equality compare it); _symbols
    # and _under are computed on first use: the symbols, and the key under the facts last
    # compared under (see __eq__)
    __slots__ = ("_hash", "_key", "_symbols", "_under", "terms")

    def __init__(self, terms: dict[Monomial, int]):
        keyed = sorted(
            ((tuple((_atom_key(a), p) for a, p in m), m, c) for m, c in terms.items() if c != 0),
            key=lambda kmc: kmc[0],
        )
        self.terms: tuple[tuple[Monomial, int], ...] = tuple((m, c) for _, m, c in keyed)
        self._key = tuple((k, c) for k, _, c in keyed)
        self._hash = hash(self._key)
        self._symbols: frozenset[str] | None = None
        self._under: tuple | None = None

    # construction -------------------------------------------------------------------------
    @staticmethod
    def of(value: int | str | Dim) -> Dim:
        if isinstance(value, Dim):
            return value
        if isinstance(value, bool):
            raise DimError("a bool is not a dimension")
        if isinstance(value, int):
            if 0 <= value < len(_SMALL):  # sizes are mostly small constants: made once
                return _SMALL[value]
            return Dim({(): value})
        if isinstance(value, str):
            return Dim({((value, 1),): 1})
        raise DimError(f"{value!r} is not a dimension")

    # queries ------------------------------------------------------------------------------
    @property
    def is_const(self) -> bool:
        # monomials are distinct and () sorts first: a constant has at most that one term
        return not self.terms or (len(self.terms) == 1 and self.terms[0][0] == ())

    @property
    def value(self) -> int:
        if not self.is_const:
            raise DimError(f"{self} is not a constant")
        return self.terms[0][1] if self.terms else 0

    @property
    def symbol(self) -> str | None:
        """The name when this Dim is exactly one symbol (`B`), else None."""
        atom = self._single_atom()
        return atom if isinstance(atom, str) else None

    def symbols(self) -> set[str]:
        return set(self._symbol_set())

    def _symbol_set(self) -> frozenset[str]:
        if self._symbols is None:
            out: set[str] = set()
            for mono, _ in self.terms:
                for atom, _p in mono:
                    out |= {atom} if isinstance(atom, str) else atom.num._symbol_set()
            self._symbols = frozenset(out)
        return self._symbols

    def evaluate(self, env: dict[str, int]) -> int:
        total = 0
        for mono, coeff in self.terms:
            term = coeff
            for atom, power in mono:
                if isinstance(atom, str):
                    if atom not in env:
                        raise DimError(f"dimension {atom} is not bound")
                    base = env[atom]
                else:
                    base = atom.evaluate(env)
                term *= base**power
            total += term
        return total

    def substitute(self, env: dict[str, Dim]) -> Dim:
        """Replace the symbols named in `env` by Dims."""
        total = Dim.of(0)
        for mono, coeff in self.terms:
            term = Dim.of(coeff)
            for atom, power in mono:
                if isinstance(atom, str):
                    base = env.get(atom, Dim.of(atom))
                else:
                    inner = atom.num.substitute(env)
                    base = inner // atom.den if atom.kind == "//" else inner % atom.den
                for _ in range(power):
                    term = term * base
            total = total + term
        return total

    # arithmetic ---------------------------------------------------------------------------
    def __add__(self, other: int | Dim) -> Dim:
        other = Dim.of(other)
        terms = dict(self.terms)
        for m, c in other.terms:
            terms[m] = terms.get(m, 0) + c
        return Dim(terms)

    __radd__ = __add__

    def __neg__(self) -> Dim:
        return Dim({m: -c for m, c in self.terms})

    def __sub__(self, other: int | Dim) -> Dim:
        return self + (-Dim.of(other))

    def __rsub__(self, other: int | Dim) -> Dim:
        return Dim.of(other) - self

    def __mul__(self, other: int | Dim) -> Dim:
        other = Dim.of(other)
        terms: dict[Monomial, int] = {}
        for m1, c1 in self.terms:
            for m2, c2 in other.terms:
                powers: dict[str, tuple[Atom, int]] = {}
                for atom, p in (*m1, *m2):
                    key = _atom_key(atom)
                    prev = powers.get(key, (atom, 0))[1]
                    powers[key] = (atom, prev + p)
                mono = tuple(sorted(powers.values(), key=lambda ap: _atom_key(ap[0])))
                terms[mono] = terms.get(mono, 0) + c1 * c2
        return Dim(terms)

    __rmul__ = __mul__

    def __pow__(self, other: int | Dim) -> Dim:
        other = Dim.of(other)
        if not other.is_const or other.value < 0:
            raise DimError(f"a size can only be raised to a constant power >= 0, not {other}")
        out = Dim.of(1)
        for _ in range(other.value):
            out = out * self
        return out

    def __floordiv__(self, other: int | Dim) -> Dim:
        other = Dim.of(other)
        if not other.is_const:
            if other == self:
                return Dim.of(1)
            quotient = self._exact_div(other)
            if quotient is None:
                raise DimError(f"cannot divide {self} by the symbolic size {other}")
            return quotient
        den = other.value
        if den <= 0:
            raise DimError(f"division of a dimension by {den}")
        if den == 1:
            return self
        # (r + q*den) // den == r // den + q: keep only the indivisible rest inside the atom
        quotient, rest = self._split(den)
        if not rest.terms:
            return quotient
        if rest.is_const:
            return quotient + rest.value // den
        inner = rest._single_atom()
        if isinstance(inner, DivAtom) and inner.kind == "//":  # (n // a) // b == n // (a*b)
            return quotient + inner.num // (inner.den * den)
        return quotient + Dim({((DivAtom("//", rest, den), 1),): 1})

    def _single_atom(self) -> Atom | None:
        """The atom when this Dim is exactly one atom (`B`, `H//2`), else None."""
        if len(self.terms) == 1:
            ((mono, coeff),) = self.terms
            if coeff == 1 and len(mono) == 1 and mono[0][1] == 1:
                return mono[0][0]
        return None

    def _split(self, den: int) -> tuple[Dim, Dim]:
        """(q, r) with self == q*den + r, r holding the terms not divisible by den and
        a constant in [0, den)."""
        q: dict[Monomial, int] = {}
        r: dict[Monomial, int] = {}
        for m, c in self.terms:
            if m == ():
                q[m], r[m] = divmod(c, den)
            elif c % den == 0:
                q[m] = c // den
            else:
                r[m] = c
        return Dim(q), Dim(r)

    def __mod__(self, other: int | Dim) -> Dim:
        other = Dim.of(other)
        if not other.is_const:
            if other == self or self._exact_div(other) is not None:
                return Dim.of(0)
            raise DimError(f"cannot take {self} modulo the symbolic size {other}")
        den = other.value
        if den <= 0:
            raise DimError(f"modulo of a dimension by {den}")
        _, rest = self._split(den)  # (r + q*den) % den == r % den
        if rest.is_const:
            return Dim.of(rest.value % den)
        return Dim({((DivAtom("%", rest, den), 1),): 1})

    def _exact_div(self, other: Dim) -> Dim | None:
        """self / other when other is a single monomial dividing every term, else None."""
        if len(other.terms) != 1:
            return None
        ((omono, ocoeff),) = other.terms
        odict = {_atom_key(a): p for a, p in omono}
        terms: dict[Monomial, int] = {}
        for mono, coeff in self.terms:
            if coeff % ocoeff:
                return None
            mdict = {_atom_key(a): (a, p) for a, p in mono}
            for key, p in odict.items():
                if key not in mdict or mdict[key][1] < p:
                    return None
                atom, mp = mdict[key]
                mdict[key] = (atom, mp - p)
            rest = tuple(
                sorted(((a, p) for a, p in mdict.values() if p), key=lambda ap: _atom_key(ap[0]))
            )
            terms[rest] = coeff // ocoeff
        return Dim(terms)

    # comparison ---------------------------------------------------------------------------
    def __eq__(self, other: object) -> bool:
        """Equal as polynomials, or equal given the divisibility facts in force (`assuming`):
        with `H % 4 == 0` known, `2*(H//4) == H//2`. Under facts, equal Dims may hash apart."""
        if isinstance(other, int) and not isinstance(other, bool):
            other = Dim.of(other)
        if not isinstance(other, Dim):
            return NotImplemented
        if self._hash == other._hash and self._key == other._key:
            return True
        facts = _FACTS.get()
        if not facts or not (self._symbol_set() | other._symbol_set()) & facts.keys():
            return False
        stamp = tuple(facts.items())  # the facts may grow (`know`) while they are in force
        return self._key_under(facts, stamp) == other._key_under(facts, stamp)

    def _key_under(self, facts: Mapping[str, int], stamp: tuple) -> tuple:
        """The key of `_multiples(self, facts)`, kept for the facts (`stamp`) last asked about:
        under a model's facts each size is compared with many others."""
        if self._under is None or self._under[0] != stamp:
            self._under = (stamp, _multiples(self, facts)._key)
        return self._under[1]

    def __hash__(self) -> int:
        return self._hash

    # printing -----------------------------------------------------------------------------
    def __repr__(self) -> str:
        return f"Dim({self})"

    def __str__(self) -> str:
        if not self.terms:
            return "0"
        parts: list[str] = []
        # constants last, highest degree first, reads like `2*B*T + 1`
        ordered = sorted(self.terms, key=lambda mc: (mc[0] == (), -sum(p for _, p in mc[0])))
        for mono, coeff in ordered:
            mag = abs(coeff)
            leading = [] if mag == 1 and mono else [str(mag)]
            # `a // b` and `a % b` bind like `*` and left to right, and a leading unary minus
            # binds tighter than all three: only a lone first factor may go bare
            # (`H//2*W`), otherwise `2*(H//4)`, `W*(H//2)`, `-(H//2)`, `(H//2)**2`
            bare_first = not leading and (coeff > 0 or bool(parts))
            factors = leading
            for atom, power in mono:
                name = atom if isinstance(atom, str) else atom.text()
                if not isinstance(atom, str) and (factors or power != 1 or not bare_first):
                    name = f"({name})"
                factors.append(name if power == 1 else f"{name}**{power}")
            text = "*".join(factors)
            if not parts:
                parts.append(text if coeff > 0 else f"-{text}")
            else:
                parts.append(f"+ {text}" if coeff > 0 else f"- {text}")
        return " ".join(parts)


_SMALL = tuple(Dim({(): n}) for n in range(1025))


# divisibility facts ---------------------------------------------------------------------------
# A `where H % 4 == 0` fact lets sizes be compared as if H were 4*H' for a fresh H': both sides
# then normalise by plain algebra (`(4*H')//2 == 2*H'`). The facts in force are a context
# variable, set by whoever checks shapes of one model (the elaborator, the passes), because a
# Dim does not know which model it belongs to.
_FACTS: ContextVar[Mapping[str, int]] = ContextVar("kiln_size_facts",
                                                default=MappingProxyType({}))


def _multiples(d: Dim, facts: Mapping[str, int]) -> Dim:
    """`d` with each symbol X known to be a multiple of k replaced by k*X (a renaming of X' to
    X: comparing two Dims so rewritten is comparing them under the facts)."""
    return d.substitute({x: k * Dim.of(x) for x, k in facts.items()})


def known_value(d: Dim) -> int | None:
    """d's value when it is a constant given the divisibility facts in force, else None."""
    if d.is_const:
        return d.value
    facts = _FACTS.get()
    reduced = _multiples(d, facts) if facts else d
    return reduced.value if reduced.is_const else None


def divisibility(op: str, lhs: Dim, rhs: Dim) -> tuple[str, int] | None:
    """A constraint `X % k == 0` (either way round, X a symbol) as (X, k), else None."""
    if op != "==":
        return None
    for side, other in ((lhs, rhs), (rhs, lhs)):
        atom = Dim.of(side)._single_atom()
        if (
            isinstance(atom, DivAtom) and atom.kind == "%" and atom.num.symbol is not None
            and Dim.of(other) == 0
        ):
            return atom.num.symbol, atom.den
    return None


def facts_equating(a: Dim, b: Dim) -> dict[str, int] | None:
    """Divisibility facts {X: k} under which a == b though they differ without them
    (`4*(H//4)` and `H` given H % 4 == 0), for a hint; None when no such facts are found."""
    if a == b:
        return None
    facts: dict[str, int] = {}
    for d in (a, b):
        _divisors(d, 1, facts)
    with assuming(facts):
        return facts if facts and a == b else None


def _divisors(d: Dim, outer: int, facts: dict[str, int]) -> None:
    """For each symbol under a `//` or `%` in d, the lcm of the divisions it sits under."""
    for mono, _ in d.terms:
        for atom, _p in mono:
            if isinstance(atom, DivAtom):
                for x in atom.num.symbols():
                    know(facts, x, outer * atom.den)
                _divisors(atom.num, outer * atom.den, facts)


@contextmanager
def assuming(facts: dict[str, int] | None = None) -> Iterator[dict[str, int]]:
    """Compare sizes under divisibility facts {X: k} (X % k == 0), added to those already in
    force; yields the dict in force, which `know` may extend while the block runs."""
    merged = dict(_FACTS.get())
    for x, k in (facts or {}).items():
        merged[x] = math.lcm(merged.get(x, 1), k)
    token = _FACTS.set(merged)
    try:
        yield merged
    finally:
        _FACTS.reset(token)


def know(facts: dict[str, int], symbol: str, k: int) -> None:
    """Add `symbol % k == 0` to a dict of facts (as yielded by `assuming`)."""
    facts[symbol] = math.lcm(facts.get(symbol, 1), k)


# reading sizes back ---------------------------------------------------------------------------
_TOKEN = re.compile(r"\s*(?:(\d+)|([A-Za-z_][A-Za-z_0-9]*)|(\*\*|//|[-+*%()]))")


def parse_size(text: str) -> Dim:
    """A size as `str(Dim)` prints it (`2*B + 1`, `(H + 1)//2`, `-(H//2)`, `(H//2)**2`), read
    back with Python's precedence (as kiln reads sizes): a library's or a compile-cache entry's
    metadata needs no parser for it. ValueError for anything else."""
    tokens: list[str | int] = []
    pos, text = 0, text.rstrip()
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None or match.end() == pos:
            raise ValueError(f"not a size: {text!r}")
        number, name, op = match.groups()
        tokens.append(int(number) if number is not None else name or op)
        pos = match.end()
    reader = _SizeReader(tokens, text)
    value = reader.sum()
    if reader.at < len(tokens):
        raise ValueError(f"not a size: {text!r}")
    return value


class _SizeReader:
    """Recursive descent over Python's grammar for + - * // % ** and unary minus."""

    def __init__(self, tokens: list[str | int], text: str):
        self.tokens, self.text, self.at = tokens, text, 0

    def _peek(self) -> str | int | None:
        return self.tokens[self.at] if self.at < len(self.tokens) else None

    def _take(self) -> str | int:
        token = self._peek()
        if token is None:
            raise ValueError(f"not a size: {self.text!r}")
        self.at += 1
        return token

    def sum(self) -> Dim:
        value = self.term()
        while self._peek() in ("+", "-"):
            value = ARITHMETIC[self._take()](value, self.term())
        return value

    def term(self) -> Dim:
        value = self.unary()
        while self._peek() in ("*", "//", "%"):
            value = ARITHMETIC[self._take()](value, self.unary())
        return value

    def unary(self) -> Dim:
        if self._peek() == "-":
            self._take()
            return -self.unary()
        return self.power()

    def power(self) -> Dim:
        base = self.atom()
        if self._peek() == "**":
            self._take()
            return base ** self.unary()
        return base

    def atom(self) -> Dim:
        token = self._take()
        if token == "(":
            value = self.sum()
            if self._take() != ")":
                raise ValueError(f"not a size: {self.text!r}")
            return value
        if isinstance(token, int) or (token not in ARITHMETIC and token not in "()"):
            return Dim.of(token)
        raise ValueError(f"not a size: {self.text!r}")
