"""The op registry: one OpRecord per primitive, holding everything kiln knows about the op.

A record gives the op's front-end signature (how `conv(x, w, stride = 2)` binds to tensor
inputs and attributes), its shape/type rule, its numpy reference implementation, and (as the
backends land) its ONNX emitter and native lowering. Nothing outside the records switches on op
names: the elaborator, passes and backends look the record up here.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable
from dataclasses import dataclass
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


class Prop(enum.Enum):
    """What a pass may conclude about an op from its record, without knowing its name.

    Passes ask `has(op, Prop.X)` instead of keeping lists of op names; an op gets a property
    in its record, where whoever adds the op sees every property it could have.
    """

    # each output element is the op applied to the input elements at the same position (after
    # broadcasting), and to nothing else: a pass may compute a chain of such ops per element
    # in one loop (fusion), given the record's `scalar` lowering
    ELEMENTWISE = "elementwise"
    # the result's elements are elements of the input (or fixed fills), moved, repeated or
    # dropped; no arithmetic: its dtype is the input's
    MOVEMENT = "movement"
    # the same elements in the same row-major order, only the shape changes: a chain of these
    # is one reshape, and one to the input's own shape is the input
    RESHAPE = "reshape"
    # a permutation of the axes, given by the record's `permutation(rank, attrs)`: two in a
    # row are one, and one that undoes another leaves the input
    PERMUTE = "permute"
    # reads only its operands and reports no error at run time for any of their values: a
    # pass may compute it where the program might not have (before a loop of no steps)
    CANNOT_FAIL = "cannot_fail"
    # a GEMM-shaped op (matrix product, convolution) whose result an elementwise epilogue may
    # follow inside the same kernel
    ANCHOR = "anchor"
    # every sample (axis 0 of the first input and of the result) is computed from the same
    # sample of the input alone: a backend may split a batch across threads
    SAMPLEWISE = "samplewise"
    # a reduction with no identity element (max, argmax, ...): an empty reduced axis has no
    # result, which every target reports at run time
    NO_IDENTITY = "no_identity"
    # holds a body graph in its attributes (scan, fused): walkers recurse into it
    CONTROL = "control"
    # emitted by the compiler itself (`x[...]`, scan, sizes as values): a model file cannot
    # call it by name
    INTERNAL = "internal"
    # returns several results (a tuple in the language)
    MULTI_OUTPUT = "multi_output"
    # a binary op whose operands may swap places: f(a, b) == f(b, a) (a pattern matcher tries
    # both orders)
    COMMUTATIVE = "commutative"


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


@dataclass(frozen=True)
class VjpNode:
    """What an op's gradient rule sees of the forward node it differentiates.

    `inputs` are the node's operands by slot (None for an absent optional input) and `outputs`
    its results: Values of the graph being differentiated, which the rule may use again (the
    reverse pass decides whether they are kept for the backward pass or recomputed)."""

    op: str
    inputs: tuple[Any, ...]  # Value | None, by input slot
    outputs: tuple[Any, ...]  # Value, by result index
    attrs: dict


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
    # what passes may conclude about the op (Prop's comments say what each allows)
    props: frozenset[Prop] = frozenset()
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
    # a GEMM op whose weight (input 1) a backend may store in its own panel layout: which GEMM
    # operand the weight is there, "a" or "b" (codegen/llvm/layout.py); None: the weight stays plain
    packed_weight: str | None = None
    # permutation(rank, attrs) -> the result's axis order, for a Prop.PERMUTE op: axis i of the
    # result is axis perm[i] of the input
    permutation: Callable[[int, dict], list[int]] | None = None
    # vjp(gb, node, cotangents) -> one entry per input slot: the op's gradient rule (reverse
    # mode). `gb` is a GraphBuilder (compiler/builder.py) adding to the graph being
    # differentiated, with the forward node's span and scope; `node` a VjpNode; `cotangents`
    # one per result, a Value of the result's type or None where no gradient reaches that
    # result (a zero the rule need not build). The rule returns, for each input slot, the
    # gradient of sum(result * cotangent) with respect to that input, a Value of exactly the
    # input's type (shape included: a broadcast input gets the sum over its broadcast axes),
    # or None where the input takes no gradient (an integer or bool input, an absent optional
    # input, an index) or where the gradient is zero. It is written with primitive ops through
    # `gb`, so the backward graph is ordinary IR. A record without a rule is not
    # differentiable: a gradient that must flow through it is an error naming the op.
    vjp: Callable[[Any, VjpNode, list[Any]], list[Any]] | None = None
    # training(ctx, operands, attrs) -> the op's results: how the elaborator builds a call
    # whose `training` attribute is true, instead of adding the op's node as it stands.
    # `ctx` is the elaboration's TrainingContext (compiler/elaborate/training.py): a
    # GraphBuilder at the call, the run-time random key, a stream number per call, and the
    # buffer updates the model returns (dropout draws its mask from the key; batch_norm
    # updates its running statistics). None: `training` is an ordinary attribute.
    training: Callable[[Any, list[Any], dict], list[Any]] | None = None
    # samplewise(in_types, attrs) -> bool: for an op that is not Prop.SAMPLEWISE on every node,
    # whether this node is (each sample on axis 0 of the result moved from the same sample of
    # its input alone: a permute that keeps axis 0 first, a pad that leaves axis 0 alone); a
    # backend may then split that node's batch across threads. Elementwise ops need no rule
    # (their operands' shapes say it). None: never, unless Prop.SAMPLEWISE.
    samplewise: Callable[[list[TensorType | None], dict], bool] | None = None

    def promoted(self, arg: str) -> bool:
        """Whether tensor argument `arg` takes part in dtype promotion."""
        return self.promote is True or (isinstance(self.promote, tuple) and arg in self.promote)

    def has(self, prop: Prop) -> bool:
        """Whether the op has property `prop`."""
        return prop in self.props

    def __post_init__(self):
        if not self.doc:
            raise ValueError(f"op {self.name}: every record needs a docstring")
        if (self.permutation is not None) != (Prop.PERMUTE in self.props):
            raise ValueError(f"op {self.name}: Prop.PERMUTE goes with a permutation rule")
        if self.packed_weight not in (None, "a", "b"):
            raise ValueError(f"op {self.name}: packed_weight is 'a', 'b' or None")


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
    return with_props(record, Prop.INTERNAL)


def with_props(record: OpRecord, *props: Prop) -> OpRecord:
    """`record` with `props` added to its properties."""
    return dataclasses.replace(record, props=record.props | frozenset(props))


def lookup(name: str) -> OpRecord | None:
    """The record of op `name`, or None when no primitive has that name."""
    return REGISTRY.get(name)


def has(op: str, prop: Prop) -> bool:
    """Whether `op` is a registered op with property `prop` (structural ops such as `input`
    and `constant` have no record, hence no property)."""
    record = REGISTRY.get(op)
    return record is not None and prop in record.props
