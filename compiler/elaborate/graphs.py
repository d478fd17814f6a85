"""The graphs an elaboration builds: the model's, and nested inside it scan bodies and the
graphs of compile-time initial values, each a `Frame`; and how a node joins the innermost."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from ..dims import Dim
from ..errors import KilnError, Span
from ..ir import Graph, Value
from ..types import TensorType
from .diagnostics import Budget, Diagnostics
from .values import ParamInfo, Tensor


@dataclass
class Frame:
    """A graph being built: the model's, or a scan body's (which captures outer values)."""

    graph: Graph
    captures: list[Value] = field(default_factory=list)  # outer values, by capture order
    capture_map: dict = field(default_factory=dict)  # outer (node, index) -> body Value
    emits: list | None = None  # scan bodies collect `emit` here
    params: dict[str, Value] = field(default_factory=dict)
    step: Value | None = None  # a scan body's step index input, once it has one
    fixed: int = 0  # a scan body's inputs before its captured ones (carries, sequences, step)


class GraphFrames:
    """The stack of graphs being built (the model's first) and what each new node is given:
    captured operands, the block-instance path it belongs to (`current_paths`), the chain of
    uses on its span, and sizes spelled as first seen under the `where` facts (`size_facts`)."""

    def __init__(self, diag: Diagnostics, budget: Budget) -> None:
        self.diag = diag
        self.budget = budget
        self.frames: list[Frame] = [Frame(Graph())]
        self.current_paths: list[str] = [""]  # the block instance whose forward is running
        self.size_facts: dict[str, int] = {}  # `where X % k == 0` facts: {X: k}
        self.sizes_seen: list[Dim] = []  # distinct sizes, as first spelled (spelled_as_seen)

    @property
    def root_graph(self) -> Graph:
        return self.frames[0].graph

    @property
    def current(self) -> Frame:
        return self.frames[-1]

    def enter(self, frame: Frame) -> Frame:
        """Build `frame`'s graph from here on (a scan body, an initial value's graph)."""
        self.frames.append(frame)
        return frame

    def leave(self) -> Frame:
        """Back to the graph being built before the last `enter`."""
        return self.frames.pop()

    def step_index(self, level: int) -> Tensor:
        """The step index of the scan body frames[level] (level >= 1), in the graph being
        built: the body's own, or, where the scan binds none, an input made now after its
        carries and sequences (the scan gets has_index; its gradient sees the same index)."""
        frame = self.frames[level]
        if frame.step is None:
            graph = frame.graph
            frame.step = graph.add_input(f"step:{level}", TensorType("i64", ()), None)
            graph.inputs.remove(frame.step.node)
            graph.inputs.insert(frame.fixed, frame.step.node)
            frame.fixed += 1
        return self.use(Tensor(frame.step, frame.graph))

    def use(self, t: Tensor) -> Tensor:
        """`t` as a value of the graph being built, capturing it into scan bodies as needed."""
        frames = self.frames
        if t.graph is frames[-1].graph:
            return t
        level = next((i for i, f in enumerate(frames) if f.graph is t.graph), None)
        if level is None:
            raise KilnError("K0201", "a tensor from another model or scan is used here", None)
        value = t.value
        for frame in frames[level + 1 :]:
            key = (value.node, value.index)
            if key not in frame.capture_map:
                frame.captures.append(value)
                name = f"captured{len(frame.captures) - 1}"
                frame.capture_map[key] = frame.graph.add_input(name, value.type, None)
            value = frame.capture_map[key]
        return Tensor(value, frames[-1].graph)

    def add_node(self, op: str, inputs: list, attrs: dict, types, span: Span) -> list[Tensor]:
        """Add an `op` node reading `inputs` (Tensors or None) to the innermost graph."""
        self.budget.count_node(span)
        frame = self.frames[-1]
        values = [self.use(t).value if t is not None else None for t in inputs]
        scope = self.path_of_stack()
        types = [self.spelled_as_seen(t) for t in types]
        outs = frame.graph.add(op, values, attrs, types, self.located(span), scope)
        return [Tensor(v, frame.graph) for v in outs]

    def located(self, span: Span | None) -> Span | None:
        """`span` with the chain of uses that led to it: a run-time failure of a node made
        here names the user's line."""
        uses = self.diag.chain_notes()
        return dataclasses.replace(span, uses=uses) if uses and span is not None else span

    def spelled_as_seen(self, t: TensorType) -> TensorType:
        """t with each size that equals, given the `where` facts, a size met earlier (an input's
        first) spelled as that one: a U-Net's up-sampled path is [B, C, H//2, W//2], not
        [B, C, 2*(H//4), 2*(W//4)]. Every later comparison is made under the same facts."""
        if not self.size_facts:
            return t
        shape = []
        for d in t.shape:
            same = next((s for s in self.sizes_seen if s == d), None)
            if same is None:
                self.sizes_seen.append(d)
            shape.append(d if same is None else same)
        return t.with_shape(tuple(shape))

    def path_of_stack(self) -> str:
        return self.current_paths[-1] if self.current_paths else ""

    def read_param(self, info: ParamInfo, span: Span) -> Tensor:
        """The parameter or buffer `info` in the innermost graph: one `param` node per graph
        outside scan bodies, which capture it from the graph around them (as any outer value):
        a body then reads only its inputs, and the gradient of a parameter used in a loop
        leaves the loop with the captured value's (ops/control.py: the scan's rule)."""
        path = info.path
        level = len(self.frames) - 1
        while level > 0 and self.frames[level].emits is not None:  # a scan body
            level -= 1
        frame = self.frames[level]
        if path not in frame.params:
            self.budget.count_node(span)
            (value,) = frame.graph.add(
                "param",
                [],
                {"path": path, "kind": info.kind},
                [TensorType(info.dtype, info.shape)],
                span,
                path.rsplit(".", 1)[0] if "." in path else "",
            )
            frame.params[path] = value
        return self.use(Tensor(frame.params[path], frame.graph))
