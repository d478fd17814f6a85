"""What a compiled model shows of itself, in types that need nothing of the compiler's
machinery (no parser, no graph library, no LLVM): its ports, its parameters' descriptions and
its call-time constraints. The elaborator makes them; a model loaded from a library or from
the compile cache's model entries (runtime/modelcache.py) reads them back from metadata, and
the runtime works with them alone.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any

from .errors import Span
from .types import TensorType


@dataclass(frozen=True)
class Port:
    """A model input or output: its name, type, and whether it may be left out."""

    name: str
    type: TensorType
    optional: bool = False
    span: Span | None = None

    def __str__(self) -> str:
        return f"{self.name}: {self.type}{'?' if self.optional else ''}"

    __repr__ = __str__  # a list of ports prints as a signature: [x: f32[B, 784]]


def default_output_names(count: int) -> list[str]:
    """What unnamed model outputs are called: `output`, or `output_0`, `output_1`, ..."""
    return ["output"] if count == 1 else [f"output_{i}" for i in range(count)]


@dataclass
class ParamInfo:
    """One parameter or buffer of a model, by its dotted path."""

    path: str
    kind: str  # "param" | "buffer"
    dtype: str
    shape: tuple[int, ...]
    init: Any  # InitializerValue, or a numpy array computed at compile time
    persistent: bool
    owner: str  # the block type that declared it (for `init Conv2d.weight = ...`)
    member: str  # its name inside that block
    span: Span | None


COMPARISONS = {  # a `where` constraint's operator
    "==": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}


@dataclass(frozen=True)
class Constraint:
    """A `where` clause that could not be proven at compile time: checked at call time."""

    op: str  # one of == != < <= > >=
    lhs: Any  # Dim
    rhs: Any  # Dim
    text: str
    span: Span | None
