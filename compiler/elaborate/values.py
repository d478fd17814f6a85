"""Compile-time values the elaborator passes around.

Plain Python values stand for themselves: int, float, bool, str, None, list, tuple, and `Dim`
for sizes. The classes here are the rest: tensors (graph values), references to blocks,
functions and ops (possibly with some arguments already given), block instances, and the
markers for an absent optional input and for a value whose computation already failed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..dims import Dim
from ..errors import Span
from ..interface import ParamInfo  # noqa: F401  (re-exported)
from ..ir import Graph, Value
from ..ops.registry import OpRecord
from ..syntax import ast as A


@dataclass(frozen=True)
class Tensor:
    """A tensor computed by the graph `graph` (scan bodies are graphs of their own)."""

    value: Value
    graph: Graph

    @property
    def type(self):
        return self.value.type


class Absent:
    """An optional input that was not given, or a conditional member that is not defined."""

    def __repr__(self) -> str:
        return "absent"


ABSENT = Absent()


class Poison:
    """The value of an expression whose elaboration already reported an error.

    Any use of it quietly yields Poison again, so one mistake is reported once.
    """

    def __repr__(self) -> str:
        return "poison"


POISON = Poison()


class Poisoned(Exception):
    """Raised when an operand is Poison: the statement is skipped without a new error."""


@dataclass(frozen=True)
class BlockRef:
    """A block definition with some of its arguments given: `Conv2d(3, 64, 7)`, `BasicBlock`."""

    defn: A.BlockDef
    module: Any  # ModuleScope
    args: tuple = ()
    kwargs: tuple[tuple[str, Any], ...] = ()

    def extend(self, args: tuple, kwargs: dict) -> BlockRef:
        merged = dict(self.kwargs)
        merged.update(kwargs)
        return BlockRef(self.defn, self.module, self.args + tuple(args), tuple(merged.items()))

    @property
    def name(self) -> str:
        return self.defn.name


@dataclass(frozen=True)
class FnRef:
    """A `fn` helper, possibly with leading arguments given (used as a pipeline stage)."""

    defn: A.FnDef
    module: Any
    args: tuple = ()
    kwargs: tuple[tuple[str, Any], ...] = ()


@dataclass(frozen=True)
class OpRef:
    """A primitive op, possibly with arguments given: `softmax(axis = -1)` as a stage."""

    record: OpRecord
    args: tuple = ()
    kwargs: tuple[tuple[str, Any], ...] = ()


@dataclass(frozen=True)
class Builtin:
    """A compile-time function (range, len, min, ...) or special form (defined, dim)."""

    name: str


@dataclass(frozen=True)
class Namespace:
    """`init`, `ops`, or an imported module: attribute access looks names up in it."""

    kind: str  # "init" | "ops" | "module"
    target: Any = None  # the ModuleScope for kind "module"


@dataclass(frozen=True)
class InitializerValue:
    """`init.kaiming_uniform(a = sqrt(5))`: an initializer with its arguments bound."""

    initializer: Any  # compiler.initializers.Initializer


@dataclass
class Instance:
    """One instantiated block: its path, arguments, members, and forward."""

    ref: BlockRef
    path: str  # dotted path from the model root ("" for the root)
    env: dict[str, Any]  # arguments and consts
    members: dict[str, Any] = field(default_factory=dict)  # dotted name -> value
    undefined: set[str] = field(default_factory=set)  # conditional members not taken
    forward: A.Forward | None = None
    stage_counter: int = 0  # nn.Sequential-style numbering of unnamed inline stages
    inline: dict[str, Instance] = field(default_factory=dict)  # inline stages by name
    inits: list = field(default_factory=list)  # (pattern, InitializerValue, span, scope)
    span: Span | None = None

    @property
    def name(self) -> str:
        return self.ref.defn.name

    def child_path(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name


@dataclass
class Sequential:
    """A member list of stages (`nn.Sequential`): applied in order by `x |> main`."""

    path: str
    stages: list


@dataclass(frozen=True)
class MemberPrefix:
    """`transformer` when members named `transformer.wte` etc. exist: a namespace of members."""

    instance: Instance
    prefix: str


def norm_dim(d: Dim) -> Dim | int:
    """A constant Dim becomes a plain int, so compile-time code sees ordinary numbers."""
    return d.value if d.is_const else d


def is_scalar(v: Any) -> bool:
    return isinstance(v, (bool, int, float)) and not isinstance(v, Absent)


def describe(v: Any) -> str:
    """A value's kind in words, for error messages."""
    if isinstance(v, Tensor):
        return f"a tensor {v.type}"
    if isinstance(v, bool):
        return f"the bool {str(v).lower()}"
    if isinstance(v, int):
        return f"the int {v}"
    if isinstance(v, float):
        return f"the float {v}"
    if isinstance(v, str):
        return f'the string "{v}"'
    if isinstance(v, Dim):
        return f"the size {v}"
    if isinstance(v, (list, tuple)):
        return f"a {'list' if isinstance(v, list) else 'tuple'} of {len(v)}"
    if isinstance(v, BlockRef):
        return f"the block {v.name}"
    if isinstance(v, Instance):
        return f"the block instance {v.path or v.name}"
    if isinstance(v, (OpRef,)):
        return f"the op {v.record.name}"
    if isinstance(v, FnRef):
        return f"the fn {v.defn.name}"
    if isinstance(v, Absent):
        return "an absent optional value"
    if v is None:
        return "none"
    return type(v).__name__


def count_of(n: int, noun: str) -> str:
    """`1 argument`, `2 arguments`."""
    return f"{n} {noun}{'' if n == 1 else 's'}"
