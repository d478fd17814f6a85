"""Lark parser for kiln source: LALR, contextual lexer, positions kept.

The LALR tables take seconds to build from grammar/kiln.lark, so they ship beside it,
built and checked by `python -m kiln.compiler.syntax.parser` (grammar/kiln.lark.json: JSON,
loaded without running code, used only when made from this grammar by this lark version).

The post-lexer drops newlines inside ( ) and [ ], so brackets may span lines, while braces
keep newlines as statement separators. (A line starting with `|>` or `else` continues the line
before it: the grammar's PIPE and ELSE tokens take the newlines in front of them.)
"""

from __future__ import annotations

import hashlib
import json
import re
from functools import cache
from importlib import resources

import lark
from lark import Lark, Token
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken
from lark.grammar import Rule
from lark.lexer import TerminalDef

from ..errors import KilnError, Span

_OPEN = {"LPAR": "RPAR", "LSQB": "RSQB", "LBRACE": "RBRACE"}
_CLOSE = {v: k for k, v in _OPEN.items()}


class BracketNewlines:
    """Post-lexer: newlines are insignificant inside parentheses and square brackets."""

    always_accept = ("_NL",)

    def process(self, stream):
        stack: list[str] = []
        for tok in stream:
            if tok.type in _OPEN:
                stack.append(tok.type)
            elif tok.type in _CLOSE and stack and stack[-1] == _CLOSE[tok.type]:
                stack.pop()
            elif tok.type == "_NL" and stack and stack[-1] != "LBRACE":
                continue
            yield tok


GRAMMAR = "kiln.lark"
TABLES = "kiln.lark.json"  # the parser built from GRAMMAR, as lark serializes it, in JSON
TABLES_FORMAT = 1


def _grammar() -> str:
    return resources.files("kiln.grammar").joinpath(GRAMMAR).read_text(encoding="utf-8")


def build_parser(text: str) -> Lark:
    """The parser of the grammar `text`, built from it (LALR tables: seconds)."""
    return Lark(
        text,
        parser="lalr",
        lexer="contextual",
        postlex=BracketNewlines(),
        propagate_positions=True,
        maybe_placeholders=True,
        start=["start", "test"],
    )


@cache
def _parser() -> Lark:
    """The parser: from the tables shipped beside the grammar when they were built from this
    grammar by this lark version (milliseconds), else built from the grammar."""
    text = _grammar()
    try:
        shipped = resources.files("kiln.grammar").joinpath(TABLES).read_text(encoding="utf-8")
        loaded = load_tables(shipped, text)
    except OSError:
        loaded = None
    return loaded if loaded is not None else build_parser(text)


def grammar_digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def dump_tables(parser: Lark, text: str) -> str:
    """`parser` (built from the grammar `text`) as JSON: lark's own serialization, with its
    tuples and int-keyed dicts tagged so that JSON keeps them, and no post-lexer (the loader
    gives it). JSON, not pickle: loading it runs no code."""
    data, memo = parser.memo_serialize([TerminalDef, Rule])
    data = {**data, "options": {**data["options"], "postlex": None}}
    return json.dumps({"format": TABLES_FORMAT, "lark": lark.__version__,
                       "grammar_sha256": grammar_digest(text),
                       "tables": _tagged([data, memo])}, separators=(",", ":"))


def load_tables(shipped: str, text: str) -> Lark | None:
    """The parser in `shipped` (dump_tables' JSON), or None when it was made from another
    grammar than `text`, by another lark version, or cannot be read."""
    try:
        header = json.loads(shipped)
        if (header.get("format") != TABLES_FORMAT or header.get("lark") != lark.__version__
                or header.get("grammar_sha256") != grammar_digest(text)):
            return None
        data, memo = _untagged(header["tables"])
        return Lark._load_from_dict(data, memo, postlex=BracketNewlines())
    except Exception:  # damaged tables: the grammar gives the parser, as without them
        return None


def _tagged(o):
    if isinstance(o, dict):
        if all(isinstance(k, str) for k in o):
            return {k: _tagged(v) for k, v in o.items()}
        return {"__items__": [[_tagged(k), _tagged(v)] for k, v in o.items()]}
    if isinstance(o, tuple):
        return {"__tuple__": [_tagged(v) for v in o]}
    if isinstance(o, list):
        return [_tagged(v) for v in o]
    return o


def _untagged(o):
    if isinstance(o, dict):
        if len(o) == 1 and "__items__" in o:
            return {_untagged(k): _untagged(v) for k, v in o["__items__"]}
        if len(o) == 1 and "__tuple__" in o:
            return tuple(_untagged(v) for v in o["__tuple__"])
        return {k: _untagged(v) for k, v in o.items()}
    if isinstance(o, list):
        return [_untagged(v) for v in o]
    return o


def _describe(tok: Token) -> str:
    if tok.type == "$END":
        return "end of file"
    if tok.type == "_NL":
        return "end of line"
    return f"'{tok}'"


_EXPECT_NAMES = {
    "NAME": "a name", "INTERP_NAME": "a name", "INT": "a number", "FLOAT": "a number",
    "STRING": "a string", "RPAR": "')'", "RSQB": "']'", "RBRACE": "'}'", "LBRACE": "'{'",
    "LPAR": "'('", "LSQB": "'['", "COLON": "':'", "EQUAL": "'='", "COMMA": "','", "DOT": "'.'",
    "_NL": "a new line", "PIPE": "'|>'", "ELSE": "'else'", "ARROW": "'->'", "WHERE": "'where'",
    "COMP_OP": "a comparison", "ADD_OP": "'+' or '-'", "MUL_OP": "an operator",
    "NEG_OP": "'-'", "POW_OP": "'**'", "ELLIPSIS": "'...'", "ANON": "'_'", "OPTIONAL": "'?'",
    "STAR": "'*'", "BLOCK": "'block'", "MODEL": "'model'", "PARAM": "'param'",
    "BUFFER": "'buffer'", "REVERSE": "'reverse'", "QMARK": "'?'",
}


# words that start a definition at the top of a file
_TOP_LEVEL = frozenset({"model", "block", "fn", "import", "const", "require"})


def parse(text: str, filename: str, start: str = "start"):
    """Parse `text` into a Lark tree, or raise KilnError K0001/K0002 at the offending token."""
    try:
        return _parser().parse(text, start=start)
    except UnexpectedInput as exc:
        raise _syntax_error(exc, text, filename) from None


def _syntax_error(exc: UnexpectedInput, text: str, filename: str) -> KilnError:
    line = getattr(exc, "line", None) or 1
    col = getattr(exc, "column", None) or 1
    if line < 1:  # lark reports -1 at end of file
        lines = text.splitlines() or [""]
        line, col = len(lines), len(lines[-1]) + 1
    width, hint = 1, None
    if isinstance(exc, UnexpectedCharacters):
        ch = text[exc.pos_in_stream] if exc.pos_in_stream < len(text) else ""
        message = f"unexpected character {ch!r}"
        code = "K0002"
    elif isinstance(exc, (UnexpectedToken, UnexpectedEOF)):
        tok = getattr(exc, "token", None)
        code = "K0001"
        if tok is None or tok.type == "$END":
            message = "unexpected end of file"
        else:
            message = f"unexpected {_describe(tok)}"
            width = max(1, len(str(tok))) if tok.type != "_NL" else 1
        expected = sorted(
            _EXPECT_NAMES.get(t, f"'{t.lower()}'" if t.isupper() else t)
            for t in getattr(exc, "expected", set()) or set()
            if not t.startswith("__") and t != "$END"
        )
        if expected and len(expected) <= 6:
            message += ", expected " + " or ".join(dict.fromkeys(expected))
        if tok is not None:
            lines = text.splitlines()
            hint = _statement_hint(tok, lines[line - 1] if line <= len(lines) else "", col)
    else:
        code, message = "K0001", "syntax error"
    span = Span(filename, line, col, line, col + width, text)
    lines = text.splitlines()
    starts_definition = code == "K0001" and line <= len(lines) and \
        lines[line - 1].split(" ", 1)[0] in _TOP_LEVEL
    if starts_definition or message == "unexpected end of file":
        # a definition starting at column 1 (or the file ending) inside a block means a `{`
        # above was never closed: that brace is the mistake, not the next definition
        brace = _innermost_open_brace(text, line)
        if brace is not None:
            at_end = message == "unexpected end of file"
            what = "unexpected end of file: this '{' is never closed" if at_end else \
                "this '{' is not closed before the next definition"
            where = "the end of the file" if at_end else \
                f"`{lines[line - 1].split(' ', 1)[0]}` at {Span(filename, line, 1, line, 2)}"
            return KilnError(
                "K0001", what, Span(filename, *brace, brace[0], brace[1] + 1, text),
                notes=(f"{where} is inside it",), hint="add the missing '}'",
            )
    return KilnError(code, message, span, hint=hint)


def _innermost_open_brace(text: str, before_line: int) -> tuple[int, int] | None:
    """(line, col) of the last `{` still open at the start of `before_line`, skipping strings
    and comments; None when every brace is closed there."""
    stack: list[tuple[int, int]] = []
    for lineno, line in enumerate(text.splitlines()[: before_line - 1], start=1):
        i = 0
        while i < len(line):
            ch = line[i]
            if ch == "#":
                break
            if ch == '"':  # skip the string, escapes included
                i += 1
                while i < len(line) and line[i] != '"':
                    i += 2 if line[i] == "\\" else 1
            elif ch == "{":
                stack.append((lineno, i + 1))
            elif ch == "}" and stack:
                stack.pop()
            i += 1
    return stack[-1] if stack else None


# `a, b = x, y`: names, then one `=` (not `==`, `<=`, ...) before the comma
_ASSIGNMENT = re.compile(r"^\s*(?:const\s+)?([A-Za-z_]\w*(?:\s*,\s*[A-Za-z_]\w*)*)\s*=(?!=)(.*)$")


def _statement_hint(tok: Token, line: str, col: int) -> str | None:
    """What to write instead, for the mistakes a Python habit makes: a bare tuple on the right
    of `=` (kiln needs parentheses there), and a `scan` header continued on the next line
    (inside `{ }` a newline ends the statement)."""
    before = line[:col - 1]
    if tok.type == "_NL" and re.search(r"\bscan\b", before):
        return ("a scan header (sequences, `axis`, `carry`) stays on one line up to its `{`: "
                "end the line with `\\` to continue it on the next")
    assignment = _ASSIGNMENT.match(before)
    if tok.type == "COMMA" and assignment and _balanced(assignment.group(2)):
        value = (assignment.group(2) + line[col - 1:].split("#")[0]).strip()
        return f"a tuple on the right of `=` needs parentheses: {assignment.group(1)} = ({value})"
    return None


def _balanced(text: str) -> bool:
    """Whether `text` closes every bracket it opens (a comma after it is not inside one)."""
    return all(text.count(o) == text.count(c) for o, c in ("()", "[]", "{}"))


def main() -> None:
    """Write grammar/kiln.lark.json from grammar/kiln.lark (after changing the grammar)."""
    from pathlib import Path

    text = _grammar()
    path = Path(str(resources.files("kiln.grammar").joinpath(TABLES)))
    path.write_text(dump_tables(build_parser(text), text), encoding="utf-8")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
