"""ONNX's own operators for what a kiln graph spells out in primitives, recognised at export:
a `scan` that is exactly one direction of an LSTM, GRU or Elman RNN layer becomes ONNX's
LSTM, GRU or RNN node, and a 2-D matrix product plus a bias a Gemm.

onnxruntime runs its recurrent kernels several times faster than the same step as a Scan body
(kiln's export of an LSTM ran 3.1x slower than PyTorch's, which emits LSTM). Recognition is a
pattern over the graph, not a marker std.rnn leaves: a scan qualifies only when its body
computes exactly the cell, up to the order of the operands of + and *, so a hand-written scan
that differs anywhere (a projection, another activation, a peephole) stays a Scan. Any order
of the gates is recognised: PyTorch's (std.rnn), ONNX's (the ONNX importer's scans) or another.

    x = X @ W^T (+ Wb), computed before the loop, X [T, B, in] (or [B, T, in] over axis 1)
    P = h @ R^T (+ Rb)                                       R, Rb captured by the body
    LSTM (gates i, f, g, o of x + P, or of each):  c' = sig(f) * c + sig(i) * tanh(g),
                                                  h' = sig(o) * tanh(c')
    GRU (gates r, z, n of x and of P): r = sig(x_r + P_r),  z = sig(x_z + P_z),
                                       n = tanh(x_n + r * P_n),  h' = (1 - z) * n + z * h
         (ONNX's linear_before_reset = 1: the recurrent bias stays inside r * (...))
    RNN:                               h' = tanh(x + P)  or  relu(x + P)

Each recognised node says which values it reads (`reads`), so the export leaves out the nodes
only it replaced (the projection's matmul, a transpose).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..dims import Dim
from ..ir import STRUCTURAL_OPS, Graph, Value
from ..ops.registry import REGISTRY, Prop, has
from ..passes.edit import key, only_user

# A pattern: a variable name (bound to the first value it meets, equal to it after), or a tuple
# (op, *operand patterns), ("or", *alternatives), ("const", number) for a scalar constant,
# ("split", n, index, pattern) for output `index` of an equal split in n over the last axis,
# ("sum", *terms) for a tree of `add`s whose leaves are the terms in some order (however the
# source grouped x + h @ R^T + Rb).
Pattern = Any

# Each op's gate order in ONNX (LSTM: i, o, f, c; GRU: z, r, h), by kiln's letters for the
# gates: the c (cell) gate is PyTorch's g, the h (hidden) gate its n.
ONNX_GATES = {"LSTM": "iofg", "GRU": "zrn", "RNN": "a"}


def _projection(*terms: Pattern) -> Pattern:
    """terms + h @ R^T, plus Rb where there is a recurrent bias."""
    product = ("matmul", "h", "RT")
    return ("or", ("sum", *terms, product, "Rb"),
            ("sum", *terms, product) if terms else product)


def _lstm(pos: dict[str, int]) -> dict[str, Pattern]:
    def gate(k: str) -> Pattern:  # a gate of x + P, split after the sum (std.rnn) or before
        split = lambda v: ("split", 4, pos[k], v)  # noqa: E731
        return ("or", split(_projection("x")), ("add", split("x"), split(_projection())))

    c = ("add", ("mul", ("sigmoid", gate("f")), "c"),
         ("mul", ("sigmoid", gate("i")), ("tanh", gate("g"))))
    return {"h": ("mul", ("sigmoid", gate("o")), ("tanh", c)), "c": c}


def _gru(pos: dict[str, int]) -> dict[str, Pattern]:
    x = lambda k: ("split", 3, pos[k], "x")  # noqa: E731
    p = lambda k: ("split", 3, pos[k], _projection())  # noqa: E731
    r = ("sigmoid", ("add", x("r"), p("r")))
    z = ("sigmoid", ("add", x("z"), p("z")))
    n = ("tanh", ("add", x("n"), ("mul", r, p("n"))))
    return {"h": ("add", ("mul", ("sub", ("const", 1.0), z), n), ("mul", z, "h"))}


def _rnn(activation: str) -> Callable[[dict[str, int]], dict[str, Pattern]]:
    return lambda pos: {"h": (activation, _projection("x"))}


@dataclass(frozen=True)
class Cell:
    """One recurrent cell ONNX has an op for, with the gate order of the scan's split."""

    op: str  # the ONNX op
    order: str  # the gates, by letter, in the order the body splits them
    states: tuple[str, ...]  # the carried states
    patterns: Callable[[dict[str, int]], dict[str, Pattern]]  # state -> its new value
    activation: str | None = None  # RNN's, by ONNX's name

    def gate_rows(self, hidden: int) -> np.ndarray | None:
        """Row indices taking a [gates * hidden, ...] weight from this order to ONNX's (None:
        already in it)."""
        if self.order == ONNX_GATES[self.op]:
            return None
        blocks = [self.order.index(g) for g in ONNX_GATES[self.op]]
        return np.concatenate([np.arange(k * hidden, (k + 1) * hidden) for k in blocks])


# every order of the gates in the body's split: PyTorch's (std.rnn: i f g o, r z n), ONNX's
# (the importer's scans: i o f g, z r n), or a hand-written one's
CELLS = [
    *(Cell("LSTM", "".join(order), ("h", "c"), _lstm) for order in itertools.permutations("ifgo")),
    *(Cell("GRU", "".join(order), ("h",), _gru) for order in itertools.permutations("rzn")),
    Cell("RNN", "a", ("h",), _rnn("tanh"), "Tanh"),
    Cell("RNN", "a", ("h",), _rnn("relu"), "Relu"),
]


class Matcher:
    """Matches patterns against the values of one graph, binding variables in `env`."""

    def __init__(self, graph: Graph):
        self.graph = graph

    def match(self, pattern: Pattern, value: Value, env: dict[str, Value]) -> bool:
        """Whether `value` computes `pattern`; binds its variables in `env` only if so."""
        trial = dict(env)
        if not self._match(pattern, value, trial):
            return False
        env.update(trial)
        return True

    def _all(self, patterns: tuple, values: list[Value], env: dict[str, Value]) -> bool:
        trial = dict(env)
        if not all(self._match(p, v, trial) for p, v in zip(patterns, values, strict=True)):
            return False
        env.update(trial)
        return True

    def _match(self, pattern: Pattern, value: Value, env: dict[str, Value]) -> bool:
        if isinstance(pattern, str):
            bound = env.setdefault(pattern, value)
            return key(bound) == key(value)
        head, *args = pattern
        if head == "or":
            return any(self.match(alternative, value, env) for alternative in args)
        node = self.graph.node(value.node)
        if head == "const":
            constant = np.asarray(node["attrs"].get("value")) if node["op"] == "constant" else None
            return constant is not None and constant.size == 1 and float(constant) == args[0]
        operands = [] if node["op"] in STRUCTURAL_OPS else self.graph.operands(value.node)
        if head == "sum":
            return self._sum(args, value, env)
        if head == "split":
            n, index, inner = args
            a = node["attrs"]
            rank = value.type.rank
            return (node["op"] == "split" and a["n"] == n and a["sizes"] is None
                    and a["axis"] in (-1, rank - 1) and value.index == index
                    and self._match(inner, operands[0], env))
        if node["op"] != head or value.index != 0 or len(operands) != len(args) \
                or None in operands:
            return False
        orders = [operands, operands[::-1]] if has(head, Prop.COMMUTATIVE) else [operands]
        return any(self._all(tuple(args), order, env) for order in orders)

    def _sum(self, terms: list, value: Value, env: dict[str, Value]) -> bool:
        """The leaves of the tree of adds computing `value` match `terms` in some order."""
        leaves, stack = [], [value]
        while stack:
            v = stack.pop()
            if self.graph.node(v.node)["op"] == "add" and v.index == 0:
                stack.extend(self.graph.operands(v.node))
            else:
                leaves.append(v)
        if len(leaves) != len(terms):
            return False
        return any(self._all(tuple(terms), list(order), env)
                   for order in itertools.permutations(leaves))


def transposed_2d(graph: Graph, value: Value) -> Value | None:
    """M where `value` is M^T of a 2-D M, else None."""
    node = graph.node(value.node)
    if not has(node["op"], Prop.PERMUTE) or value.type.rank != 2:
        return None
    if list(REGISTRY[node["op"]].permutation(2, node["attrs"])) != [1, 0]:
        return None
    return graph.operands(value.node)[0]


@dataclass(frozen=True)
class Weight:
    """An ONNX weight [rows, cols] that is `value`, or value^T when `transpose`."""

    value: Value
    transpose: bool


def _weight_of(graph: Graph, m: Value) -> Weight:
    """The weight W of an operand m = W^T (of x @ W^T)."""
    inner = transposed_2d(graph, m)
    return Weight(inner, False) if inner is not None else Weight(m, True)


@dataclass(frozen=True)
class Recurrent:
    """A scan recognised as one direction of an ONNX recurrent op."""

    cell: Cell
    x: Value  # the sequence before its projection: [T, B, in], or [B, T, in] (batch_first)
    w: Weight  # W [gates * hidden, in]
    r: Weight  # R [gates * hidden, hidden]
    wb: Value | None
    rb: Value | None
    hidden: int
    batch_first: bool
    reverse: bool
    carries: tuple[int, ...]  # the scan's carry of each state, in cell.states' order
    initial: tuple[Value, ...]  # each state's initial value [B, hidden], in that order
    emits: tuple[int, ...]  # the scan's emits (each h of every step), by index

    @property
    def reads(self) -> list[Value]:
        """The values the ONNX node computes from."""
        found = [self.x, self.w.value, self.r.value, self.wb, self.rb, *self.initial]
        return [v for v in found if v is not None]


def _input_projection(graph: Graph, seq: Value) -> tuple[Value, Weight, Value | None] | None:
    """(X, W, Wb) where seq = X @ W^T (+ Wb) of a 3-D X."""
    env: dict[str, Value] = {}
    product = ("matmul", "X", "WT")
    if not Matcher(graph).match(("or", ("add", product, "Wb"), product), seq, env):
        return None
    if env["X"].type.rank != 3 or env["WT"].type.rank != 2:
        return None
    return env["X"], _weight_of(graph, env["WT"]), env.get("Wb")


def recognise_scan(graph: Graph, nid: int) -> Recurrent | None:
    """The recurrent op that scan `nid` computes, or None (it stays a Scan)."""
    a = graph.node(nid)["attrs"]
    body: Graph = a["body"]
    n_carry, axis = a["n_carry"], a["axis"]
    if a["n_seq"] != 1 or a["has_index"] or a["axes"][0] != axis or axis not in (0, 1):
        return None
    operands = graph.operands(nid)
    seq = operands[n_carry]
    projection = _input_projection(graph, seq)
    if projection is None or seq.type.rank != 3 or seq.type.dtype != "f32":
        return None
    x, w, wb = projection
    batch = seq.type.shape[1 - axis]
    captured = dict(zip(body.inputs[a["n_fixed_inputs"]:], operands[n_carry + 1:], strict=True))
    n_emit = len(body.outputs) - n_carry
    for cell in CELLS:
        if len(cell.states) != n_carry:
            continue
        patterns = cell.patterns({g: k for k, g in enumerate(cell.order)})
        for carries in itertools.permutations(range(n_carry)):  # which carry is h, c
            env = {state: Value(body.inputs[k], 0, body.node(body.inputs[k])["types"][0])
                   for state, k in zip(cell.states, carries, strict=True)}
            step = body.inputs[n_carry]
            env["x"] = Value(step, 0, body.node(step)["types"][0])
            m = Matcher(body)
            if not all(m.match(patterns[state], body.outputs[k], env)
                       for state, k in zip(cell.states, carries, strict=True)):
                continue
            if not all(m.match(patterns["h"], e, env) for e in body.outputs[n_carry:]):
                continue
            found = _resolve(graph, body, captured, env, cell, batch, x, w, wb)
            if found is None:
                continue
            r, rb, hidden = found
            return Recurrent(cell, x, w, r, wb, rb, hidden, axis == 1, a["reverse"], carries,
                             tuple(operands[k] for k in carries), tuple(range(n_emit)))
    return None


def _resolve(graph: Graph, body: Graph, captured: dict[int, Value], env: dict[str, Value],
             cell: Cell, batch: Dim, x: Value, w: Weight, wb: Value | None
             ) -> tuple[Weight, Value | None, int] | None:
    """(R, Rb, hidden) from a matched body's bindings, where every shape is the op's: states
    f32 [B, H] with a constant H, R [G*H, H], biases [G*H], W [G*H, in]; else None."""
    hidden = env["h"].type.shape[-1]
    if not hidden.is_const:
        return None
    width = len(cell.order) * hidden.value
    state = ("f32", (batch, hidden))
    if any((env[s].type.dtype, env[s].type.shape) != state for s in cell.states):
        return None
    r_t = env["RT"]
    if r_t.node in captured:  # R^T computed outside the loop (hoisted)
        r = _weight_of(graph, captured[r_t.node])
    else:
        inner = transposed_2d(body, r_t)
        if inner is None or inner.node not in captured:
            return None
        r = Weight(captured[inner.node], False)
    rb = env.get("Rb")
    if rb is not None:
        if rb.node not in captured:
            return None
        rb = captured[rb.node]
    if _shape(r) != (width, hidden.value) or _shape(w) != (width, x.type.shape[-1]):
        return None
    if any(b is not None and b.type.shape != (Dim.of(width),) for b in (wb, rb)):
        return None
    if any(v.type.dtype != "f32" for v in (x, w.value, r.value) + tuple(
            b for b in (wb, rb) if b is not None)):
        return None
    return r, rb, hidden.value


def _shape(weight: Weight) -> tuple:
    shape = weight.value.type.shape
    return tuple(shape[::-1] if weight.transpose else shape)


@dataclass(frozen=True)
class Linear:
    """`a @ W^T + bias` (or `a @ M + bias`) of 2-D a: one Gemm."""

    a: Value
    w: Weight  # B of Gemm: transB = 1 where W is not transposed here
    bias: Value

    @property
    def reads(self) -> list[Value]:
        return [self.a, self.w.value, self.bias]


GEMM_DTYPES = ("f32", "f64")  # what onnxruntime's CPU Gemm runs


def recognise_linear(graph: Graph, nid: int) -> Linear | None:
    """The Gemm that add node `nid` with its matmul computes, or None: a 2-D product whose only
    use is this add, plus a bias [N] (or [1, N])."""
    env: dict[str, Value] = {}
    node = graph.node(nid)
    value = Value(nid, 0, node["types"][0])
    if not Matcher(graph).match(("add", ("matmul", "A", "M"), "bias"), value, env):
        return None
    a, m, bias = env["A"], env["M"], env["bias"]
    product = graph.operands(nid)
    product = product[0] if graph.node(product[0].node)["op"] == "matmul" else product[1]
    if a.type.rank != 2 or m.type.rank != 2 or only_user(graph, product) != nid:
        return None
    n = value.type.shape[-1]
    if bias.type.shape not in ((n,), (Dim.of(1), n), value.type.shape) \
            or value.type.shape[0] != a.type.shape[0]:
        return None
    if any(v.type.dtype not in GEMM_DTYPES for v in (a, m, bias)):
        return None
    inner = transposed_2d(graph, m)
    return Linear(a, Weight(inner, True) if inner is not None else Weight(m, False), bias)


def recognise(graph: Graph) -> dict[int, Recurrent | Linear]:
    """Every node of `graph` (not of its bodies) that one ONNX operator computes."""
    found: dict[int, Recurrent | Linear | None] = {}
    for nid in graph.order():
        op = graph.node(nid)["op"]
        if op == "scan":
            found[nid] = recognise_scan(graph, nid)
        elif op == "add":
            found[nid] = recognise_linear(graph, nid)
    return {nid: f for nid, f in found.items() if f is not None}
