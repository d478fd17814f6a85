"""The kiln AST: frozen dataclasses named after the grammar rules; every node carries its Span."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import Span


@dataclass(frozen=True)
class Node:
    span: Span


# ------------------------------------------------------------------------------ expressions
@dataclass(frozen=True)
class Name(Node):
    id: str


@dataclass(frozen=True)
class InterpName(Node):
    """`layer{i + 1}`: literal text pieces and compile-time expressions, in order."""

    pieces: tuple[str | Expr, ...]


@dataclass(frozen=True)
class Literal(Node):
    value: int | float | str | bool | None


@dataclass(frozen=True)
class Ternary(Node):
    cond: Expr
    then: Expr
    other: Expr


@dataclass(frozen=True)
class Pipe(Node):
    """`value |> stage`, or `value |> label: stage` naming the stage's instance."""

    value: Expr
    label: str | None
    stage: Expr


@dataclass(frozen=True)
class BinOp(Node):
    op: str  # + - * / // % @ ** and or == != < <= > >=
    left: Expr
    right: Expr


@dataclass(frozen=True)
class UnaryOp(Node):
    op: str  # - + not
    operand: Expr


@dataclass(frozen=True)
class Keyword(Node):
    name: str
    value: Expr


@dataclass(frozen=True)
class Call(Node):
    func: Expr
    args: tuple[Expr, ...]
    kwargs: tuple[Keyword, ...]


@dataclass(frozen=True)
class Slice(Node):
    start: Expr | None
    stop: Expr | None
    step: Expr | None


@dataclass(frozen=True)
class EllipsisLit(Node):
    pass


@dataclass(frozen=True)
class Index(Node):
    value: Expr
    items: tuple[Expr, ...]  # Expr, Slice or EllipsisLit


@dataclass(frozen=True)
class Attribute(Node):
    value: Expr
    name: str | InterpName


@dataclass(frozen=True)
class TupleLit(Node):
    items: tuple[Expr, ...]


@dataclass(frozen=True)
class ListLit(Node):
    items: tuple[Expr, ...]


@dataclass(frozen=True)
class CompFor(Node):
    targets: tuple[str, ...]
    iter: Expr
    cond: Expr | None


@dataclass(frozen=True)
class ListComp(Node):
    element: Expr
    fors: tuple[CompFor, ...]


@dataclass(frozen=True)
class ScanTarget(Node):
    name: str
    index: str | None  # `(t, x) in xs` binds the step index to t


@dataclass(frozen=True)
class Scan(Node):
    reverse: bool
    targets: tuple[ScanTarget, ...]
    sequences: tuple[Expr, ...]
    axis: Expr | None
    carry: tuple[Keyword, ...]
    body: tuple[Stmt, ...]


Expr = (
    Name
    | InterpName
    | Literal
    | Ternary
    | Pipe
    | BinOp
    | UnaryOp
    | Call
    | Index
    | Attribute
    | TupleLit
    | ListLit
    | ListComp
    | Slice
    | EllipsisLit
    | Scan
)


# ------------------------------------------------------------------------------ types
@dataclass(frozen=True)
class AnonDim(Node):
    pass


@dataclass(frozen=True)
class TensorTypeExpr(Node):
    dtype: str | None
    dims: tuple[Expr | AnonDim | EllipsisLit, ...]
    optional: bool


@dataclass(frozen=True)
class TypeName(Node):
    name: str
    args: tuple[TypeName, ...]


@dataclass(frozen=True)
class Constraint(Node):
    op: str
    left: Expr
    right: Expr


# ------------------------------------------------------------------------------ statements
@dataclass(frozen=True)
class Assign(Node):
    targets: tuple[str, ...]
    value: Expr


@dataclass(frozen=True)
class Return(Node):
    values: tuple[Expr, ...]


@dataclass(frozen=True)
class Emit(Node):
    values: tuple[Expr, ...]


@dataclass(frozen=True)
class Const(Node):
    name: str
    value: Expr


@dataclass(frozen=True)
class Require(Node):
    cond: Expr
    message: Expr


@dataclass(frozen=True)
class For(Node):
    """A compile-time loop, unrolled; `body` holds statements or members."""

    targets: tuple[str, ...]
    iter: Expr
    body: tuple


@dataclass(frozen=True)
class If(Node):
    """A compile-time conditional; only the taken branch is elaborated."""

    cond: Expr
    then: tuple
    other: tuple


Stmt = Assign | Return | Emit | Const | Require | For | If


# ------------------------------------------------------------------------------ members
@dataclass(frozen=True)
class MemberName(Node):
    parts: tuple[Name | InterpName, ...]


@dataclass(frozen=True)
class TensorMember(Node):
    """`param name: type = init` or `buffer(persistent = false) name: type = init`."""

    kind: str  # "param" | "buffer"
    options: tuple[Keyword, ...]
    name: MemberName
    type: TensorTypeExpr
    init: Expr | None
    guard: Expr | None


@dataclass(frozen=True)
class ChildMember(Node):
    name: MemberName
    value: Expr
    guard: Expr | None


@dataclass(frozen=True)
class Tie(Node):
    target: MemberName
    source: MemberName


@dataclass(frozen=True)
class InitOverride(Node):
    pattern: tuple[str | InterpName, ...]  # "*" matches one path segment
    value: Expr


@dataclass(frozen=True)
class InputDef(Node):
    name: str
    type: TensorTypeExpr | None


@dataclass(frozen=True)
class Forward(Node):
    inputs: tuple[InputDef, ...]
    results: tuple[TensorTypeExpr, ...] | None
    results_tuple: bool  # `-> (a, b)` rather than `-> a`
    result_names: tuple[str | None, ...]  # `-> (mu: f32[..], ..)`: one per result, None if unnamed
    where: tuple[Constraint, ...]
    body: tuple[Stmt, ...]


Member = (
    TensorMember | ChildMember | Tie | InitOverride | Forward | Const | Require | For | If
)


# ------------------------------------------------------------------------------ top level
@dataclass(frozen=True)
class ParamDef(Node):
    name: str
    type: TypeName | None
    default: Expr | None


@dataclass(frozen=True)
class BlockDef(Node):
    kind: str  # "block" | "model"
    name: str
    params: tuple[ParamDef, ...]
    members: tuple[Member, ...]
    # `model ResNet18(num_classes: int = 1000) = ResNet(BasicBlock, [2, 2, 2, 2], num_classes)`:
    # the block is another block with arguments given; its names are that block's
    alias: Expr | None = None


@dataclass(frozen=True)
class FnDef(Node):
    name: str
    params: tuple[ParamDef, ...]
    body: tuple[Stmt, ...]


@dataclass(frozen=True)
class Import(Node):
    module: tuple[str, ...] | None  # std.nn -> ("std", "nn")
    file: str | None  # import "blocks.kiln"
    alias: str | None
    names: tuple[str, ...] | None  # selective import


@dataclass(frozen=True)
class Module(Node):
    path: str
    items: tuple[Import | Const | Require | BlockDef | FnDef, ...]
