"""Source spans and the one error type users ever see: KilnError."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Span:
    """A region of a source file: 1-based line and column, end exclusive."""

    file: str
    line: int
    col: int
    end_line: int
    end_col: int
    # the whole text of `file`, for printing the caret line
    source: str | None = field(default=None, repr=False, compare=False)
    # where the code at this span was reached from ("in Embedding, used at model.kiln:8:9"),
    # innermost first: set on graph nodes, so a failure found after elaboration (a pass, a
    # run-time K0505) names the user's line as compile-time errors do
    uses: tuple[str, ...] = field(default=(), repr=False, compare=False)

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"

    def source_line(self) -> str | None:
        if self.source is None:
            return None
        lines = self.source.splitlines()
        if 1 <= self.line <= len(lines):
            return lines[self.line - 1]
        return None


class KilnWarning(UserWarning):
    """Something kiln runs as asked but that is most likely a mistake (a loss that applies
    softmax to a model's softmax); `warnings.simplefilter("error", kiln.KilnWarning)` turns
    them into errors."""


class KilnError(Exception):
    """A user mistake: a stable code, a message, and the source span where it happened.

    A KilnError may carry further independent errors (`others`) found in the same run, so a
    user sees every problem at once; `str()` formats them all.
    """

    def __init__(
        self,
        code: str,
        message: str,
        span: Span | None = None,
        hint: str | None = None,
        notes: tuple[str, ...] = (),
    ):
        super().__init__(message)
        self.code = code
        self.message = message
        self.span = span
        self.hint = hint
        self.notes = tuple(notes) or (span.uses if span is not None else ())
        self.others: list[KilnError] = []

    def __reduce__(self):
        # Exception pickles only .args (the message): a KilnError sent from a worker process
        # (multiprocessing, Ray) must arrive with its code, span, hint and notes too
        return (type(self), (self.code, self.message, self.span, self.hint, self.notes),
                {"others": self.others})

    @property
    def all(self) -> list[KilnError]:
        """This error followed by the independent errors reported with it."""
        return [self, *self.others]

    def format_one(self) -> str:
        where = f"{self.span}: " if self.span else ""
        out = [f"{where}error[{self.code}]: {self.message}"]
        line = self.span.source_line() if self.span else None
        if line is not None:
            width = (
                self.span.end_col - self.span.col
                if self.span.end_line == self.span.line
                else len(line) - self.span.col + 1
            )
            lineno = str(self.span.line)
            pad = " " * len(lineno)
            out.append(f"{pad} |")
            out.append(f"{lineno} | {line.expandtabs(1)}")
            out.append(f"{pad} | {' ' * (self.span.col - 1)}{'^' * max(1, width)}")
        for note in self.notes:
            out.append(f"  note: {note}")
        if self.hint:
            out.append(f"  hint: {self.hint}")
        return "\n".join(out)

    def __str__(self) -> str:
        return "\n\n".join(e.format_one() for e in self.all)


def combine(errors: list[KilnError]) -> KilnError:
    """One KilnError carrying every error in `errors` (which must not be empty)."""
    first = errors[0]
    first.others = [e for err in errors[1:] for e in err.all]
    return first


def did_you_mean(name: str, candidates) -> str | None:
    """A hint naming up to three of `candidates` spelled like `name`, or None."""
    import difflib

    close = difflib.get_close_matches(name, list(candidates), n=3)
    return f"did you mean {' or '.join(close)}?" if close else None
