"""The op registry: one OpRecord per primitive, holding everything kiln knows about the op.

A record gives the op's front-end signature (how `conv(x, w, stride = 2)` binds to tensor
inputs and attributes), its shape/type rule, its numpy reference implementation, and (as the
backends land) its ONNX emitter and native lowering. Nothing outside the records switches on op
names: the elaborator, passes and backends look the record up here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from ..dims import Dim
from ..types import TensorType


class OpError(Exception):
    """A shape, dtype or attribute error found by an op's rule.

    `arg` names the offending argument when there is one, so the elaborator can point at it;
    the elaborator turns this into a located KilnError.
    """

    def __init__(self, message: str, arg: str | None = None, code: str = "K0301"):
        super().__init__(message)
        self.message = message
        self.arg = arg
        self.code = code


REQUIRED = object()  # marks an Arg with no default


@dataclass(frozen=True)
class Arg:
    """One parameter of an op's front-end signature.

    kind: "tensor" (a tensor input; a Python scalar is turned into a constant),
    "tensor?" (an optional tensor input; absent is None), "tensors" (a list of tensors, e.g.
    concat's first argument; it must be the only tensor-list argument), or "attr" (a
    compile-time value: int, float, bool, str, Dim, None, or a list/tuple of those).
    """

    name: str
    kind: str = "tensor"
    default: Any = REQUIRED


class RefEnv(Protocol):
    """What a reference implementation may ask of the interpreter running it."""

    def eval_dim(self, d: Dim | int) -> int: ...

    def run_graph(self, graph: Any, inputs: list[np.ndarray]) -> list[np.ndarray]: ...


InferFn = Callable[[list["TensorType | None"], dict], list[TensorType]]
RefFn = Callable[[RefEnv, list["np.ndarray | None"], dict], list[np.ndarray]]
MacsFn = Callable[[list["TensorType | None"], list[TensorType], dict], Dim]


@dataclass(frozen=True)
class OpRecord:
    """Everything about one primitive op, side by side."""

    name: str
    args: tuple[Arg, ...]
    infer: InferFn
    reference: RefFn
    doc: str
    # tensor operands meet at one dtype first (Python scalars adopt it): True for every tensor
    # argument, or the names of the arguments that take part (where's cond stays bool)
    promote: bool | tuple[str, ...] = False
    elementwise: bool = False
    macs: MacsFn | None = None
    # onnx(builder, node): append the ONNX nodes computing node.outputs from node.inputs
    # (compiler/codegen/onnx.py: OnnxBuilder and OnnxNode)
    onnx: Callable[[Any, Any], None] | None = None
    # llvm(kernel_builder, node): build the body of the op's native kernel
    # (compiler/codegen/llvm/kernel.py: KernelBuilder; node has in_types, out_types, attrs)
    llvm: Callable[[Any, Any], None] | None = None
    # scalar(kernel_builder, attrs, *values) -> value: an elementwise op on one element (compute
    # types in, compute type out), which a fused kernel strings together with its neighbours
    scalar: Callable[..., Any] | None = None
    tags: frozenset[str] = field(default_factory=frozenset)

    def promoted(self, arg: str) -> bool:
        """Whether tensor argument `arg` takes part in dtype promotion."""
        return self.promote is True or (isinstance(self.promote, tuple) and arg in self.promote)

    def __post_init__(self):
        if not self.doc:
            raise ValueError(f"op {self.name}: every record needs a docstring")


REGISTRY: dict[str, OpRecord] = {}


def register(record: OpRecord) -> OpRecord:
    """Add `record` to the registry (explicitly, from the family modules)."""
    if record.name in REGISTRY:
        raise ValueError(f"op {record.name} registered twice")
    REGISTRY[record.name] = record
    return record


def internal(record: OpRecord) -> OpRecord:
    """Mark an op the elaborator emits itself (`x[...]`, `scan`, sizes as values): a model
    file cannot call it by name."""
    return dataclasses.replace(record, tags=record.tags | {"internal"})


def lookup(name: str) -> OpRecord | None:
    return REGISTRY.get(name)
