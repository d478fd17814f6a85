"""Converters of ONNX's recurrent ops: RNN, GRU and LSTM, each direction one kiln `scan`.

As std.rnn does it (stdlib/rnn.kiln): the input projection X W^T + Wb of every step is one
matrix product before the loop; the loop carries the state and adds the recurrent part. The
gate orders are ONNX's: LSTM i, o, f, c; GRU z, r, h (PyTorch's are i, f, g, o and r, z, n).

    RNN:  H = f(x W^T + Wb + H R^T + Rb)
    GRU:  z = σ(x Wz^T + Wbz + H Rz^T + Rbz);  r = σ(... r ...)
          h = tanh(x Wh^T + Wbh + r ⊙ (H Rh^T + Rbh))       linear_before_reset = 1
          h = tanh(x Wh^T + Wbh + (r ⊙ H) Rh^T + Rbh)       linear_before_reset = 0
          H = (1 - z) ⊙ h + z ⊙ H
    LSTM: i, o, f = σ(...), c~ = tanh(...);  C = f ⊙ C + i ⊙ c~;  H = o ⊙ tanh(C)
          with peepholes P = (Pi, Po, Pf): i and f add P ⊙ C (the old C), o P ⊙ C (the new)
    clip: every gate's input (before its activation) clamped to [-clip, clip]

sequence_lens (known only at run time, or shorter than the sequence): a step at or past a
sequence's length keeps its states and emits zeros, so a reverse direction starts at each
sequence's own last step, as ONNX's does; an empty sequence's final states are zeros (as
onnxruntime gives them).

Refused (Unsupported): activations other than the defaults (RNN: Tanh or Relu), and
input_forget.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..builder import GraphBuilder
from ..ir import Graph, Value
from .convert_base import (
    FLOAT_TYPES,
    OnnxNode,
    Unsupported,
    arg,
    attr,
    choose,
    concrete_shape,
    converter_table,
    known,
    need,
    require_dtype,
)
from .convert_control import add_scan

CONVERTERS, converter = converter_table()

# the activations ONNX gives each op's gates by default
DEFAULT_ACTIVATIONS = {"RNN": ["Tanh"], "GRU": ["Sigmoid", "Tanh"],
                       "LSTM": ["Sigmoid", "Tanh", "Tanh"]}
# a cell: (builder, projected input of this step [B, G*H], states, recurrent weights R^T
# [H, G*H], recurrent bias [G*H] or None, the direction's extra inputs (LSTM's peepholes),
# the gates' activation input: clamped by `clip`, or as it is) -> new states
Cell = Callable[[GraphBuilder, Value, list[Value], Value, Value | None, list[Value],
                 Callable[[GraphBuilder, Value], Value]], list[Value]]


def check_attrs(node: OnnxNode) -> list[str]:
    """The node's activations (refusing what kiln does not compute); clip and input_forget."""
    defaults = DEFAULT_ACTIVATIONS[node.op_type]
    directions = 2 if attr(node, "direction", "forward") == "bidirectional" else 1
    given = attr(node, "activations")
    acts = [a.decode() if isinstance(a, bytes) else a for a in given] if given else defaults
    allowed = [defaults, ["Relu"]] if node.op_type == "RNN" else [defaults]
    if not any(acts == a * directions or acts == a for a in allowed):
        raise Unsupported(f"activations {acts} are not supported (only {defaults})")
    # activation_alpha and _beta parameterise activations such as Affine or LeakyRelu;
    # the ones accepted here (Sigmoid, Tanh, Relu) take none
    attr(node, "activation_alpha")
    attr(node, "activation_beta")
    if attr(node, "input_forget", 0):
        raise Unsupported("attribute input_forget=1 is not supported")
    return acts


def clipping(node: OnnxNode) -> Callable[[GraphBuilder, Value], Value]:
    """The gates' input as attribute clip has it: clamped to [-clip, clip], or as it is."""
    bound = attr(node, "clip")
    if bound is None:
        return lambda bb, v: v
    return lambda bb, v: bb.op("clip", v, min=-float(bound), max=float(bound))


def step_mask(gb: GraphBuilder, node: OnnxNode, steps, batch) -> Value | None:
    """[T, B, 1]: whether step t is within sequence b's length (sequence_lens, input 4);
    None where every sequence is full (no sequence_lens, or one known to be all T)."""
    if arg(node, 4) is None and (len(node.consts) <= 4 or node.consts[4] is None):
        return None
    lens = known(gb, node, 4)
    if lens is not None and steps.is_const and (np.asarray(lens) == steps.value).all():
        return None
    if not steps.is_const:
        raise Unsupported("sequence_lens over a sequence of symbolic length")
    lens = gb.constant(np.asarray(lens)) if arg(node, 4) is None else arg(node, 4)
    lens = gb.reshape(gb.cast(lens, "i64"), [1, batch, 1])
    times = gb.constant(np.arange(steps.value, dtype=np.int64).reshape(-1, 1, 1))
    return gb.op("less", times, lens)


def direction_slice(gb: GraphBuilder, value: Value, d: int, directions: int) -> Value:
    """value[d] along axis 0 (the direction axis of W, R, B, initial_h and initial_c)."""
    part = gb.results("split", value, n=directions, axis=0)[d] if directions > 1 else value
    return gb.op("squeeze", part, axis=0)


def recurrent(gb: GraphBuilder, node: OnnxNode, n_states: int, cell: Cell,
              split_bias: bool = False, extra: tuple[int, ...] = ()) -> list[Value | None]:
    """The outputs (Y, Y_h[, Y_c]) of an RNN-family node whose step is `cell`.
    `split_bias`: the recurrent bias Rb goes into the cell (GRU), not into the projection;
    `extra`: input slots (with a direction axis) the cell reads too where given."""
    x, w, r = need(node, 0, "X"), need(node, 1, "W"), need(node, 2, "R")
    for value, what in ((x, "X"), (w, "W"), (r, "R")):
        require_dtype(value, FLOAT_TYPES, what)
    hidden = attr(node, "hidden_size")
    direction = choose(node, "direction", "forward", ("forward", "reverse", "bidirectional"))
    directions = 2 if direction == "bidirectional" else 1
    layout = attr(node, "layout", 0)
    if layout not in (0, 1):
        raise Unsupported(f"layout={layout} is not supported")
    if hidden is None:
        hidden = concrete_shape(r, "R")[-1]
    if x.type.rank != 3:
        raise Unsupported(f"X must have rank 3, got {x.type}")
    if layout == 1:  # [batch, seq, input] -> [seq, batch, input]
        x = gb.permute(x, [1, 0, 2])
    steps, batch = x.type.shape[0], x.type.shape[1]
    mask = step_mask(gb, node, steps, batch)
    bias = arg(node, 3)
    initial = [arg(node, 5)] + ([arg(node, 6)] if n_states == 2 else [])
    if layout == 1:
        initial = [None if h is None else gb.permute(h, [1, 0, 2]) for h in initial]
    ys, finals = [], [[] for _ in range(n_states)]
    for d in range(directions):
        w_d = direction_slice(gb, w, d, directions)  # [G*H, I]
        r_d = direction_slice(gb, r, d, directions)  # [G*H, H]
        gx = gb.matmul(x, gb.permute(w_d, [1, 0]))  # [T, B, G*H]
        rb = None
        if bias is not None:
            wb, rb = gb.results("split", direction_slice(gb, bias, d, directions), n=2, axis=0)
            if not split_bias:
                wb, rb = gb.add(wb, rb), None
            gx = gb.add(gx, wb)
        states = []
        for h0 in initial:
            states.append(direction_slice(gb, h0, d, directions) if h0 is not None else
                          gb.op("zeros", shape=[batch, hidden], dtype=x.type.dtype))
        reverse = direction == "reverse" or d == 1
        more = [direction_slice(gb, arg(node, i), d, directions) for i in extra
                if arg(node, i) is not None]
        outs = scan(gb, cell, gx, states, gb.permute(r_d, [1, 0]), rb, more, clipping(node),
                    reverse, mask)
        ys.append(outs[0])
        for k in range(n_states):
            final = outs[1 + k]
            if mask is not None:  # the first step's mask: whether the sequence is not empty
                first = gb.op("gather", mask, gb.constant(np.array(0, np.int64)), axis=0)
                final = gb.op("where", first, final,
                              gb.constant(np.zeros((), final.type.np_dtype)))
            finals[k].append(final)
    y = gb.op("stack", ys, axis=1)  # [T, D, B, H]
    states = [gb.op("stack", f, axis=0) for f in finals]  # [D, B, H]
    if layout == 1:
        y = gb.permute(y, [2, 0, 1, 3])
        states = [gb.permute(s, [1, 0, 2]) for s in states]
    return [y, *states]


def scan(gb: GraphBuilder, cell: Cell, gx: Value, states: list[Value], r_t: Value,
         rb: Value | None, extra: list[Value], clip: Callable, reverse: bool,
         mask: Value | None) -> list[Value]:
    """One direction: a `scan` over axis 0 of gx (and the step mask) carrying `states`
    (emitting H), with R^T (and Rb, and the extra inputs) captured. Returns (stacked H,
    final states...)."""
    body = Graph()
    bb = GraphBuilder(body, gb.span, gb.scope)
    carried = [body.add_input(f"state{k}", s.type, None) for k, s in enumerate(states)]
    seqs = [gx] + ([mask] if mask is not None else [])
    steps = [body.add_input(f"seq{k}", v.type.with_shape(v.type.shape[1:]), None)
             for k, v in enumerate(seqs)]
    captured = [r_t] + ([rb] if rb is not None else []) + extra
    inner = [body.add_input(f"captured{k}", c.type, None) for k, c in enumerate(captured)]
    new = cell(bb, steps[0], carried, inner[0], inner[1] if rb is not None else None,
               inner[len(captured) - len(extra):], clip)
    emit = new[0]
    if mask is not None:  # past its length a sequence keeps its states and emits zeros
        new = [bb.op("where", steps[1], v, old) for v, old in zip(new, carried, strict=True)]
        emit = bb.op("where", steps[1], emit, bb.constant(np.zeros((), emit.type.np_dtype)))
    body.outputs = [*new, emit]
    attrs = {"body": body, "axis": 0, "axes": (0,) * len(seqs), "reverse": reverse,
             "n_carry": len(states), "n_seq": len(seqs), "has_index": False,
             "n_fixed_inputs": len(states) + len(seqs)}
    # the emitted H stacked, then each state's final value (ops/control.py)
    return add_scan(gb, [*states, *seqs, *captured], attrs)


def gates_of(bb: GraphBuilder, x: Value, h: Value, r_t: Value, rb: Value | None, n: int
             ) -> tuple[list[Value], list[Value]]:
    """The step's projected input and H R^T (+ Rb), each split into its n gates."""
    hr = bb.matmul(h, r_t)
    if rb is not None:
        hr = bb.add(hr, rb)
    if n == 1:
        return [x], [hr]
    return bb.results("split", x, n=n, axis=-1), bb.results("split", hr, n=n, axis=-1)


def rnn_cell(act: str) -> Cell:
    """H = act(x W^T + Wb + H R^T + Rb)."""
    def cell(bb, x, states, r_t, rb, extra, clip):
        (gx,), (gh,) = gates_of(bb, x, states[0], r_t, rb, 1)
        return [bb.op(act.lower(), clip(bb, bb.add(gx, gh)))]
    return cell


def gru_cell(linear_before_reset: bool) -> Cell:
    """ONNX GRU, gates z, r, h (see the module's docstring)."""
    def cell(bb, x, states, r_t, rb, extra, clip):
        h = states[0]
        (xz, xr, xh) = bb.results("split", x, n=3, axis=-1)
        rz_t, rr_t, rh_t = bb.results("split", r_t, n=3, axis=-1)
        rbz, rbr, rbh = bb.results("split", rb, n=3, axis=0) if rb is not None else (None,) * 3

        def recur(state, weight, b):
            y = bb.matmul(state, weight)
            return bb.add(y, b) if b is not None else y

        z = bb.op("sigmoid", clip(bb, bb.add(xz, recur(h, rz_t, rbz))))
        r = bb.op("sigmoid", clip(bb, bb.add(xr, recur(h, rr_t, rbr))))
        if linear_before_reset:
            candidate = bb.mul(r, recur(h, rh_t, rbh))
        else:
            candidate = recur(bb.mul(r, h), rh_t, rbh)
        n = bb.op("tanh", clip(bb, bb.add(xh, candidate)))
        one = bb.constant(np.ones((), dtype=h.type.np_dtype))
        return [bb.add(bb.mul(bb.sub(one, z), n), bb.mul(z, h))]
    return cell


def lstm_cell(bb, x, states, r_t, rb, extra, clip):
    """ONNX LSTM, gates i, o, f, c (see the module's docstring); `extra`: the peepholes
    [3 * H] (Pi, Po, Pf), if given."""
    h, c = states
    (xi, xo, xf, xc), (hi, ho, hf, hc) = gates_of(bb, x, h, r_t, rb, 4)
    pi, po, pf = bb.results("split", extra[0], n=3, axis=0) if extra else (None,) * 3

    def gate(xg, hg, peep, cell_state):
        pre = bb.add(xg, hg)
        return bb.op("sigmoid", clip(bb, pre if peep is None else
                                     bb.add(pre, bb.mul(peep, cell_state))))

    i, f = gate(xi, hi, pi, c), gate(xf, hf, pf, c)
    g = bb.op("tanh", clip(bb, bb.add(xc, hc)))
    c2 = bb.add(bb.mul(f, c), bb.mul(i, g))
    o = gate(xo, ho, po, c2)
    return [bb.mul(o, bb.op("tanh", c2)), c2]


@converter("RNN")
def _rnn(gb, node):
    acts = check_attrs(node)
    return recurrent(gb, node, 1, rnn_cell(acts[0]))


@converter("GRU")
def _gru(gb, node):
    check_attrs(node)
    return recurrent(gb, node, 1, gru_cell(bool(attr(node, "linear_before_reset", 0))),
                     split_bias=True)


@converter("LSTM")
def _lstm(gb, node):
    check_attrs(node)
    return recurrent(gb, node, 2, lstm_cell, extra=(7,))
