"""Training mode in the elaborator: the random key dropout draws from, and the buffers a
training-mode forward updates.

`training` is a compile-time bool of the language: false unless the model is elaborated with
`training=True` (kiln.compile(..., training=True), Compilation.of, Program.elaborate). An op
whose record has a `training` rule (ops/registry.py) and whose `training` attribute is true
is built by that rule, with a TrainingContext, instead of as it stands:

- dropout becomes `dropout_keyed` (ops/random.py): its mask is drawn by Philox-4x32-10 from
  the model's random key, the call's stream (calls numbered in elaboration order: the same
  on every elaboration of the model) and the element's index. The key reaches the graph at
  run time as one more model input, `rng_key: i64[2]` = [seed, step], added after the
  model's own inputs when (and only when) a training-mode dropout needs it. It is checked
  like any input (dtype and shape) before native code runs; a trainer feeds a new step each
  call, the same [seed, step] for the same mask.
- batch_norm normalizes with the batch's statistics and, where its running statistics are
  buffers of the model, computes their new values (and the block's num_batches_tracked + 1).

The new value of each updated buffer leaves the graph as one more model output, after the
model's own, named `updated:<buffer path>`; `ElaboratedModel.updates` maps each buffer path
to the index of its output, so a train step writes the values back (`model.updates` on a
compiled model). A buffer updated twice in one forward (a block called twice) chains: the
second update starts from the first's value, as PyTorch's in-place updates do.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import numpy as np

from ..builder import GraphBuilder
from ..errors import KilnError, Span
from ..ir import Value
from ..types import TensorType
from .graphs import GraphFrames
from .values import ParamInfo, Tensor

RNG_KEY = "rng_key"  # the model input holding the random key [seed, step]
RNG_KEY_TYPE = TensorType("i64", (2,))
UPDATED = "updated:"  # an output holding a buffer's new value is named UPDATED + its path


# an odd 64-bit constant (2^64 / golden ratio, as a signed i64): the step's multiple of it moves
# the seed far from the seeds of the other steps and of nearby user seeds
STEP_MIX = 0x9E3779B97F4A7C15 - (1 << 64)


def step_key(gb: GraphBuilder, key: Value, step: Value) -> Value:
    """The key [seed + (step + 1) * STEP_MIX, step] (wrapping i64 arithmetic) a scan's step
    `step` draws from: Philox keyed by another seed, so each step's masks are independent of
    the others' and of the training step's neighbours, and the same on every call with the
    same key (the backward pass's recomputed step included)."""
    one = gb.constant(np.array(1, np.int64))
    mix = gb.constant(np.array([STEP_MIX, 0], np.int64))
    return gb.add(key, gb.mul(gb.add(step, one), mix))


class TrainingContext:
    """What an op's training rule may ask of the elaboration (see the module's docstring):
    `gb` (a builder at the call), `key()`, `stream()`, `buffer_path(value)`,
    `sibling(path, name)` and `update(path, new)`."""

    def __init__(self, frames: GraphFrames, params: dict[str, ParamInfo]) -> None:
        self.frames = frames
        self.params = params
        self.key_input: Value | None = None  # the root graph's rng_key input, once made
        self.updates: dict[str, Value] = {}  # buffer path -> its newest value (root graph)
        self._streams = 0
        self._span: Span | None = None

    @contextlib.contextmanager
    def call(self, span: Span) -> Iterator[TrainingContext]:
        """The context of one op call at `span`."""
        self._span = span
        try:
            yield self
        finally:
            self._span = None

    @property
    def gb(self) -> GraphBuilder:
        """A builder adding to the graph being built, at the call's span and block instance."""
        return GraphBuilder(self.frames.current.graph, self._span, self.frames.path_of_stack())

    def key(self) -> Value:
        """The random key [seed, step] in the graph being built (an input of the model, made
        on first use); inside a scan body, that key made distinct for each step of each
        enclosing scan (`step_key`), so that every step draws its own masks and the
        backward pass, seeing the same step index, draws them again."""
        root = self.frames.root_graph
        if self.key_input is None:
            for nid in root.inputs:
                if root.node(nid)["attrs"]["name"] == RNG_KEY:
                    raise KilnError(
                        "K0820", f"a model with training-mode dropout takes its random key as "
                        f"the input {RNG_KEY}, which this model names an input of its own",
                        root.node(nid)["span"], hint=f"rename the input {RNG_KEY}")
            self.key_input = root.add_input(RNG_KEY, RNG_KEY_TYPE, None)
        key = self.frames.use(Tensor(self.key_input, root)).value
        for level in range(1, len(self.frames.frames)):  # each enclosing scan's step
            key = step_key(self.gb, key, self.frames.step_index(level).value)
        return key

    def stream(self) -> int:
        """A new stream number: one per random op call of the model."""
        self._streams += 1
        return self._streams - 1

    def buffer_path(self, value: Value) -> str | None:
        """The path of the buffer `value` reads, when it is one of the model's buffers read in
        the model's own graph; None for any other value. A buffer read inside a scan body
        cannot be updated there (its new value could not leave the loop): K0821."""
        frames = self.frames.frames
        level = len(frames) - 1
        node = frames[level].graph.node(value.node)
        while node["op"] == "input" and level > 0:  # a value a scan body captured: its source
            outer = next(((n, i) for (n, i), v in frames[level].capture_map.items()
                          if v == value), None)
            if outer is None:
                return None
            level -= 1
            node = frames[level].graph.node(outer[0])
            value = Value(outer[0], outer[1], node["types"][outer[1]])
        if node["op"] != "param" or node["attrs"].get("kind") != "buffer":
            return None
        if len(frames) > 1:
            raise KilnError("K0821", "a training-mode op cannot update a buffer inside a scan: "
                            "its new value would not leave the loop", self._span,
                            hint="call it outside the scan, or with training = false")
        return node["attrs"]["path"]

    def sibling(self, path: str, name: str) -> str | None:
        """The buffer `name` of the block instance owning buffer `path`, if it has one."""
        prefix = path.rsplit(".", 1)[0] + "." if "." in path else ""
        info = self.params.get(prefix + name)
        return info.path if info is not None and info.kind == "buffer" else None

    def update(self, path: str, new: Callable[[Value], Value]) -> None:
        """Set buffer `path`'s new value to new(old), old being its value before this call:
        its last update in this forward, or the buffer as the model was given it."""
        old = self.updates.get(path)
        if old is None:
            old = self.frames.read_param(self.params[path], self._span).value
        self.updates[path] = new(old)


__all__ = ["RNG_KEY", "RNG_KEY_TYPE", "UPDATED", "TrainingContext"]
