"""Kernels shared between nodes: one function for every node of the same kernel.

A model repeats its layers (ResNet-18's residual blocks, a Transformer's encoder layers), and
each node's kernel depends only on its lowering, its operand and result types, its attributes
and which weights are stored packed, never on which node it is: those nodes get one function,
called from each, instead of one copy each. LLVM optimises and compiles each function once
(ResNet-18: 36 % less IR, and as much less LLVM time), and the code run is the same.

What a kernel does know of its node is the source of its failures: `KernelBuilder.check`
registers a status code per failure, with the node's span (ModuleLayout.failures). A call
from another node registers the same messages again at its own span, and after the call
moves a code the kernel set to the caller's own (only when the status was 0 before the
call: the first failure stays, whichever node set it).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from llvmlite import ir

from ...ir import Graph
from .abi import I64
from .graphcache import Uncacheable, frozen, walk


@dataclass(frozen=True)
class Shared:
    """A kernel function and the status codes its build registered: `first` to `first +
    count - 1` (ModuleLayout.failures' indices plus one)."""

    function: ir.Function
    first: int
    count: int


class SharedKernels:
    """The kernels of one module by their key (`kernel_key`), and the failures list they
    register in."""

    def __init__(self, failures: list):
        self.failures = failures
        self.kernels: dict[str, Shared] = {}

    def kernel(self, key: str | None, span, build: Callable[[], ir.Function]
               ) -> tuple[ir.Function, Remap | None]:
        """The function for `key` (built by `build` on first use) and, for a call from
        another node (at `span`) of a kernel that can fail, how to move its status codes."""
        if key is None:
            return build(), None
        known = self.kernels.get(key)
        if known is None:
            first = len(self.failures) + 1
            function = build()
            self.kernels[key] = Shared(function, first, len(self.failures) + 1 - first)
            return function, None
        if not known.count:
            return known.function, None
        own = len(self.failures) + 1
        self.failures.extend((message, span) for message, _ in
                             self.failures[known.first - 1:known.first - 1 + known.count])
        return known.function, Remap(known.first, known.count, own - known.first)


@dataclass(frozen=True)
class Remap:
    """Status codes `first` to `first + count - 1`, set by a shared kernel, are this caller's
    after adding `shift`."""

    first: int
    count: int
    shift: int


def call(b: ir.IRBuilder, function: ir.Function, args: list, status_p: ir.Value,
         remap: Remap | None) -> None:
    """b.call(function, args) and, with a `remap`, move a status code the call set from the
    first node's failures to this caller's."""
    if remap is None:
        b.call(function, args)
        return
    before = b.load(status_p)
    b.call(function, args)
    after = b.load(status_p)
    first = ir.Constant(I64, remap.first)
    last = ir.Constant(I64, remap.first + remap.count - 1)
    fresh = b.and_(b.icmp_signed("==", before, ir.Constant(I64, 0)),
                   b.and_(b.icmp_signed(">=", after, first), b.icmp_signed("<=", after, last)))
    with b.if_then(fresh, likely=False):
        b.store(b.add(after, ir.Constant(I64, remap.shift)), status_p)


def kernel_key(name: str, build: Callable, props, operand_types: list, result_types: list,
               attrs: dict, prepacked: frozenset[int], vector_width: int | None,
               serial: bool = False, precision: str = "f32") -> str | None:
    """A key that is equal for two nodes exactly when their kernels are the same code (None:
    an attribute the key cannot spell; such a node gets a kernel of its own)."""
    try:
        spelled = frozen(attrs)
    except Uncacheable:
        return None
    text = json.dumps([name, build.__module__, build.__qualname__, sorted(p.name for p in props),
                       [None if t is None else str(t) for t in operand_types],
                       [str(t) for t in result_types], spelled, sorted(prepacked),
                       vector_width, serial, precision, _body_constants(attrs)],
                      separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _body_constants(attrs: dict) -> list[str]:
    """The digests of the values of constants inside the bodies an op holds: `frozen` spells
    a constant by its type only (a model's constants are data to its code), which a body's
    might not be."""
    digests = []
    for value in attrs.values():
        if isinstance(value, Graph):
            for graph, nid in walk(value):
                node = graph.node(nid)
                if node["op"] == "constant":
                    array = np.ascontiguousarray(node["attrs"]["value"])
                    digests.append(array.dtype.str + str(array.shape)
                                   + hashlib.sha256(array.tobytes()).hexdigest())
    return digests


__all__ = ["Remap", "SharedKernels", "Shared", "call", "kernel_key"]
