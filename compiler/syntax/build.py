"""Parse tree -> AST: one method per grammar rule (the rule's name or alias)."""

from __future__ import annotations

import ast as pyast
import math
import re
import warnings

from lark import Token, Transformer, v_args
from lark.exceptions import VisitError

from ..errors import KilnError, Span
from ..limits import check_int
from . import ast as A
from .parser import parse

_INTERP = re.compile(r"\{([^{}]*)\}")
RESERVED = frozenset({"true", "false", "none"})


def parse_module(text: str, filename: str) -> A.Module:
    """Parse kiln source text into an AST Module; KilnError on any syntax error."""
    tree = parse(text, filename)
    try:
        return ASTBuilder(filename, text).transform(tree)
    except VisitError as exc:  # lark wraps what the builder raises
        if isinstance(exc.orig_exc, KilnError):
            raise exc.orig_exc from None
        if isinstance(exc.orig_exc, RecursionError):
            raise KilnError(
                "K0001", "the source nests too deeply", Span(filename, 1, 1, 1, 2, text)
            ) from None
        raise
    except RecursionError:
        raise KilnError(
            "K0001", "the source nests too deeply", Span(filename, 1, 1, 1, 2, text)
        ) from None


@v_args(meta=True)
class ASTBuilder(Transformer):
    """Builds frozen AST dataclasses; spans come from Lark's propagated positions."""

    def __init__(self, filename: str, text: str, line_offset: int = 0, col_offset: int = 0):
        super().__init__()
        self.filename = filename
        self.text = text
        self.line_offset = line_offset
        self.col_offset = col_offset

    # spans -------------------------------------------------------------------------------
    def _span(self, meta) -> Span:
        if getattr(meta, "empty", True):
            return Span(self.filename, 1, 1, 1, 1, self.text)
        return self._make_span(meta.line, meta.column, meta.end_line, meta.end_column)

    def _tok_span(self, tok: Token) -> Span:
        return self._make_span(tok.line, tok.column, tok.end_line, tok.end_column)

    def _make_span(self, line, col, end_line, end_col) -> Span:
        off = self.col_offset if line == 1 else 0
        end_off = self.col_offset if end_line == 1 else 0
        return Span(
            self.filename,
            line + self.line_offset,
            col + off,
            end_line + self.line_offset,
            end_col + end_off,
            self.text,
        )

    # top level ----------------------------------------------------------------------------
    def start(self, meta, items):
        return A.Module(self._span(meta), self.filename, tuple(items))

    def import_stmt(self, meta, ch):
        ref, alias, *names = ch
        kind, value = ref
        names = tuple(str(n) for n in names if n is not None) or None
        return A.Import(
            self._span(meta),
            module=value if kind == "std" else None,
            file=value if kind == "file" else None,
            alias=str(alias) if alias is not None else None,
            names=names,
        )

    def module_std(self, meta, ch):
        return ("std", ch[0])

    def module_file(self, meta, ch):
        return ("file", self._unquote(ch[0]))

    def dotted_name(self, meta, ch):
        return tuple(str(t) for t in ch)

    def block_def(self, meta, ch):
        kind, name, params, *members = ch
        return A.BlockDef(self._span(meta), str(kind), str(name), params or (), tuple(members))

    def block_alias(self, meta, ch):
        kind, name, params, target = ch
        return A.BlockDef(self._span(meta), str(kind), str(name), params or (), (), target)

    def params(self, meta, ch):
        return _unique(tuple(p for p in ch if p is not None), "parameter")

    def param_def(self, meta, ch):
        name, type_, default = ch
        self._bindable(name)
        return A.ParamDef(self._span(meta), str(name), type_, default)

    def type_name(self, meta, ch):
        name, *args = ch
        return A.TypeName(self._span(meta), str(name), tuple(a for a in args if a is not None))

    def fn_def(self, meta, ch):
        name, params, body = ch
        return A.FnDef(self._span(meta), str(name), params or (), body)

    # members ------------------------------------------------------------------------------
    def tensor_member(self, meta, ch):
        kind, options, name, type_, rhs = ch
        init, guard = rhs if rhs is not None else (None, None)
        opts = options[1] if options is not None else ()
        if options is not None and options[0]:
            raise KilnError(
                "K0001",
                f"{kind} options must be given by name, e.g. {kind}(persistent = false)",
                options[0][0].span,
            )
        return A.TensorMember(self._span(meta), str(kind), opts, name, type_, init, guard)

    def child_member(self, meta, ch):
        name, (value, guard) = ch
        return A.ChildMember(self._span(meta), name, value, guard)

    def member_rhs(self, meta, ch):
        return (ch[0], None)

    def guarded(self, meta, ch):
        return (ch[0], ch[1])

    def member_name(self, meta, ch):
        return A.MemberName(self._span(meta), tuple(self._name_part(t) for t in ch))

    def _name_part(self, tok: Token):
        if tok.type == "INTERP_NAME":
            return self._interp(tok)
        return A.Name(self._tok_span(tok), str(tok))

    def tie_member(self, meta, ch):
        return A.Tie(self._span(meta), ch[0], ch[1])

    def init_member(self, meta, ch):
        pattern, value = ch
        return A.InitOverride(self._span(meta), pattern, value)

    def pattern(self, meta, ch):
        return tuple(self._interp(t) if t.type == "INTERP_NAME" else str(t) for t in ch)

    def member_for(self, meta, ch):
        targets, iter_, body = ch
        return A.For(self._span(meta), targets, iter_, body)

    def member_if(self, meta, ch):
        cond, then, _else_tok, other = ch
        if isinstance(other, A.If):
            other = (other,)
        return A.If(self._span(meta), cond, then, other or ())

    def member_suite(self, meta, ch):
        return tuple(ch)

    def forward_def(self, meta, ch):
        *inputs, _arrow, results, where, body = ch
        inputs = _unique(tuple(i for i in inputs if i is not None), "input")
        res_types, res_names, res_tuple = results if results is not None else (None, (), False)
        return A.Forward(
            self._span(meta), inputs, res_types, res_tuple, res_names, where or (), body
        )

    def input_def(self, meta, ch):
        return A.InputDef(self._span(meta), str(ch[0]), ch[1])

    def result_types(self, meta, ch):
        named = [c if isinstance(c, tuple) else (None, c) for c in ch if c is not None]
        text = self.text_of(meta)
        return (
            tuple(t for _, t in named),
            tuple(n for n, _ in named),
            text.lstrip().startswith("("),
        )

    def result_type(self, meta, ch):
        name, ttype = ch
        return (str(name) if name is not None else None, ttype)

    def text_of(self, meta) -> str:
        if self.line_offset or self.col_offset or getattr(meta, "empty", True):
            return ""
        return self.text[meta.start_pos : meta.end_pos]

    def where_clause(self, meta, ch):
        return tuple(ch[1:])

    def constraint(self, meta, ch):
        return A.Constraint(self._span(meta), str(ch[1]), ch[0], ch[2])

    def tensor_type(self, meta, ch):
        dtype, *dims, optional = ch
        dims = tuple(d for d in dims if d is not None)
        return A.TensorTypeExpr(
            self._span(meta), str(dtype) if dtype is not None else None, dims, optional is not None
        )

    def dim(self, meta, ch):
        (d,) = ch
        if isinstance(d, Token):
            return (
                A.AnonDim(self._tok_span(d))
                if d.type == "ANON"
                else A.EllipsisLit(self._tok_span(d))
            )
        return d

    # statements ---------------------------------------------------------------------------
    def suite(self, meta, ch):
        return tuple(ch)

    def assign(self, meta, ch):
        return A.Assign(self._span(meta), ch[0], ch[1])

    def targets(self, meta, ch):
        for t in ch:
            self._bindable(t)
        return tuple(str(t) for t in ch)

    def _bindable(self, tok: Token) -> None:
        if str(tok) in RESERVED:
            raise KilnError(
                "K0001", f"{tok} is a literal and cannot be assigned", self._tok_span(tok)
            )

    def return_stmt(self, meta, ch):
        return A.Return(self._span(meta), tuple(c for c in ch if c is not None))

    def emit_stmt(self, meta, ch):
        return A.Emit(self._span(meta), tuple(ch))

    def const_stmt(self, meta, ch):
        self._bindable(ch[0])
        return A.Const(self._span(meta), str(ch[0]), ch[1])

    def require_stmt(self, meta, ch):
        return A.Require(self._span(meta), ch[0], ch[1])

    def for_stmt(self, meta, ch):
        return A.For(self._span(meta), ch[0], ch[1], ch[2])

    def if_stmt(self, meta, ch):
        cond, then, _else_tok, other = ch
        if isinstance(other, A.If):
            other = (other,)
        return A.If(self._span(meta), cond, then, other or ())

    def scan_expr(self, meta, ch):
        reverse, targets, *rest = ch
        body = rest[-1]
        carry = rest[-2] or ()
        axis = rest[-3]
        seqs = tuple(rest[:-3])
        return A.Scan(self._span(meta), reverse is not None, targets, seqs, axis, carry, body)

    def scan_targets(self, meta, ch):
        return tuple(ch)

    def scan_name(self, meta, ch):
        return A.ScanTarget(self._span(meta), str(ch[0]), None)

    def scan_indexed(self, meta, ch):
        return A.ScanTarget(self._span(meta), str(ch[1]), str(ch[0]))

    def scan_axis(self, meta, ch):
        return ch[0]

    def carry(self, meta, ch):
        return tuple(ch)

    # expressions --------------------------------------------------------------------------
    def ternary(self, meta, ch):
        then, cond, _else_tok, other = ch
        return A.Ternary(self._span(meta), cond, then, other)

    def pipe(self, meta, ch):
        value, _tok, (label, stage) = ch
        return A.Pipe(self._span(meta), value, label, stage)

    def stage(self, meta, ch):
        label, expr = ch
        return (str(label) if label is not None else None, expr)

    def or_op(self, meta, ch):
        return A.BinOp(self._span(meta), "or", ch[0], ch[1])

    def and_op(self, meta, ch):
        return A.BinOp(self._span(meta), "and", ch[0], ch[1])

    def not_op(self, meta, ch):
        return A.UnaryOp(self._span(meta), "not", ch[0])

    def compare(self, meta, ch):
        return A.BinOp(self._span(meta), str(ch[1]), ch[0], ch[2])

    def binop(self, meta, ch):
        return A.BinOp(self._span(meta), str(ch[1]), ch[0], ch[2])

    def unary(self, meta, ch):
        return A.UnaryOp(self._span(meta), str(ch[0]), ch[1])

    def power_op(self, meta, ch):
        return A.BinOp(self._span(meta), "**", ch[0], ch[2])

    def call(self, meta, ch):
        func, (args, kwargs) = ch
        return A.Call(self._span(meta), func, args, kwargs)

    def call_args(self, meta, ch):
        args, kwargs = [], []
        for c in ch:
            if c is None:
                continue
            if isinstance(c, A.Keyword):
                kwargs.append(c)
            elif kwargs:
                raise KilnError(
                    "K0001", "a positional argument cannot follow a keyword argument", c.span
                )
            else:
                args.append(c)
        return tuple(args), tuple(kwargs)

    def kwarg(self, meta, ch):
        return A.Keyword(self._span(meta), str(ch[0]), ch[1])

    def index(self, meta, ch):
        value, *items = ch
        return A.Index(self._span(meta), value, tuple(i for i in items if i is not None))

    def slice(self, meta, ch):
        start, stop, step = (list(ch) + [None, None, None])[:3]
        return A.Slice(self._span(meta), start, stop, step)

    def ellipsis(self, meta, ch):
        return A.EllipsisLit(self._span(meta))

    def attribute(self, meta, ch):
        name = ch[1]
        return A.Attribute(
            self._span(meta), ch[0], self._interp(name) if name.type == "INTERP_NAME" else str(name)
        )

    def name(self, meta, ch):
        return A.Name(self._span(meta), str(ch[0]))

    def interp_name(self, meta, ch):
        return self._interp(ch[0])

    def _interp(self, tok: Token) -> A.InterpName:
        text = str(tok)
        pieces: list = []
        pos = 0
        for m in _INTERP.finditer(text):
            if m.start() > pos:
                pieces.append(text[pos : m.start()])
            inner = m.group(1)
            sub = ASTBuilder(self.filename, self.text, tok.line - 1, tok.column + m.start(1) - 1)
            try:
                tree = parse(inner, self.filename, start="test")
            except KilnError as err:
                raise KilnError(
                    err.code, f"in interpolated name {text}: {err.message}", self._tok_span(tok)
                ) from None
            pieces.append(sub.transform(tree))
            pos = m.end()
        if pos < len(text):
            pieces.append(text[pos:])
        return A.InterpName(self._tok_span(tok), tuple(pieces))

    def int_lit(self, meta, ch):
        text = str(ch[0])
        span = self._span(meta)
        # checked on the digits: int() of a long literal is slow, and past 4300 digits an error
        digits = text[2:].lstrip("0") if text[:2] in ("0x", "0X") else text.lstrip("0")
        if len(digits) > 20:
            raise KilnError(
                "K0206", f"the int literal {text[:20]}... must fit in 64 bits (int64)", span
            )
        value = int(text, 16) if text[:2] in ("0x", "0X") else int(text)
        return A.Literal(span, check_int(value, span, "an int literal"))

    def float_lit(self, meta, ch):
        value = float(str(ch[0]))
        if math.isinf(value):
            raise KilnError(
                "K0206", f"the float literal {str(ch[0])[:40]} is too large for a float",
                self._span(meta),
            )
        return A.Literal(self._span(meta), value)

    def str_lit(self, meta, ch):
        return A.Literal(self._span(meta), self._unquote(ch[0]))

    def _unquote(self, tok: Token) -> str:
        """The text of a string literal, with Python's escapes; a bad escape is K0002."""
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # an unknown escape (`\d`) is an error, not a warning
            try:
                return pyast.literal_eval(str(tok))
            except (SyntaxError, ValueError, Warning) as exc:
                detail = getattr(exc, "msg", None) or str(exc)
                detail = detail.removeprefix("(unicode error) ")
                raise KilnError(
                    "K0002", f"bad escape in string literal: {detail}", self._tok_span(tok)
                ) from None

    def true_lit(self, meta, ch):
        return A.Literal(self._span(meta), True)

    def false_lit(self, meta, ch):
        return A.Literal(self._span(meta), False)

    def none_lit(self, meta, ch):
        return A.Literal(self._span(meta), None)

    def tuple_lit(self, meta, ch):
        return A.TupleLit(self._span(meta), tuple(c for c in ch if c is not None))

    def list_lit(self, meta, ch):
        return A.ListLit(self._span(meta), tuple(c for c in ch if c is not None))

    def list_comp(self, meta, ch):
        return A.ListComp(self._span(meta), ch[0], tuple(ch[1:]))

    def comp_for(self, meta, ch):
        return A.CompFor(self._span(meta), ch[0], ch[1], ch[2])


def _unique(items: tuple, what: str) -> tuple:
    """Parameters or inputs, each name once: a second `x` would silently shadow the first
    (a call by name could not say which one it means)."""
    seen: set[str] = set()
    for item in items:
        if item.name in seen:
            raise KilnError("K0106", f"the {what} {item.name} is defined twice", item.span)
        seen.add(item.name)
    return items
