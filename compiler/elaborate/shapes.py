"""Shapes declared on a forward (`x: f32[B, T, C]`, `-> f32[B, C]`, `where H % 4 == 0`) checked
against the tensors a block is applied to and returns: bare names bind to the actual sizes,
expressions are evaluated with them and compared, constraints are proved or kept for run time."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..dims import Dim, divisibility, know, known_value
from ..errors import KilnError, Span
from ..ir import COMPARISONS, Constraint
from ..syntax import ast as A
from ..types import TensorType, shape_str
from .graphs import GraphFrames
from .opcalls import where_hint
from .scope import Scope, Unbound
from .values import Poisoned, Tensor, describe, norm_dim

if TYPE_CHECKING:
    from .elaborator import Elaborator


class Shapes:
    """Unifies declared shapes with actual ones. Holds no state: sizes are evaluated by
    `evaluator`; proved facts and unproved constraints go to `frames` (its `size_facts` and
    root graph)."""

    def __init__(self, evaluator: Elaborator, frames: GraphFrames) -> None:
        self.evaluator = evaluator
        self.frames = frames

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
        scope = Scope(
            dict(symbols), env_scope, env_scope.module, resolve_const=self.evaluator.resolve_const
        )
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
            expect = self.evaluator.eval(d, scope)
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
                    v = self.evaluator.eval(
                        d,
                        Scope(
                            dict(symbols),
                            env_scope,
                            env_scope.module,
                            resolve_const=self.evaluator.resolve_const,
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
            left, right = self.evaluator.eval(c.left, scope), self.evaluator.eval(c.right, scope)
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
                self.frames.root_graph.constraints.append(
                    Constraint(c.op, Dim.of(left), Dim.of(right), _source_text(c), c.span)
                )
                fact = divisibility(c.op, Dim.of(left), Dim.of(right))
                if fact is not None:  # checked on every call, so shapes may rely on it
                    know(self.frames.size_facts, *fact)

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

