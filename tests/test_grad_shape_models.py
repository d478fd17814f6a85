"""Whole-model gradients through the shape, slicing and gather/scatter rules against PyTorch
autograd: examples/gcn.kiln, examples/graphsage.kiln (mean aggregation, and max aggregation
with its ties), and a small model of embedding, concat, slicing and padding. Same weights, same
inputs, same cotangents; `model.vjp` on the reference, native and onnx targets.

The torch twins are written from the equations in the examples' headers and std.gnn's comments
(PyG's GCNConv and SAGEConv), in float64.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest

import kiln

torch = pytest.importorskip("torch", reason="PyTorch autograd is the reference")

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
TARGETS = ["reference", "native", "onnx"]
# f32 gradients (sums over a few dozen edges and features) against float64 autograd
RTOL, ATOL = 1e-4, 1e-5


def check_vjp_against_torch(model, forward, inputs: list[np.ndarray], seed: int = 0) -> None:
    """model.vjp(*inputs) against torch autograd of `forward(params, *inputs)` (torch tensors,
    float64): outputs, every parameter's gradient and every float input's, for a random
    cotangent."""
    rng = np.random.default_rng(seed)
    params = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True)
              for k, v in model.params.items()}
    args = [torch.tensor(x, dtype=torch.float64, requires_grad=True)
            if x.dtype.kind == "f" else torch.tensor(x) for x in inputs]
    out = forward(params, *args)
    ct = rng.standard_normal(tuple(out.shape)).astype(np.float32)
    out.backward(torch.tensor(ct, dtype=torch.float64))
    outs, grads, input_grads = model.vjp(*inputs, cotangents=[ct])
    got = outs[0] if isinstance(outs, (list, tuple)) else outs
    np.testing.assert_allclose(got, out.detach().numpy(), rtol=RTOL, atol=ATOL)
    assert set(grads) == set(params)
    for path, p in params.items():
        np.testing.assert_allclose(grads[path], p.grad.numpy(), rtol=RTOL, atol=ATOL,
                                   err_msg=path)
    floats = [(port.name, a) for port, a in zip(model.inputs, args, strict=True)
              if a.is_floating_point()]
    assert set(input_grads) == {name for name, _ in floats}
    for name, a in floats:
        np.testing.assert_allclose(input_grads[name], a.grad.numpy(), rtol=RTOL, atol=ATOL,
                                   err_msg=name)


def perturbed(model, seed: int = 1, scale: float = 0.5) -> None:
    """Random weights, larger than the initial ones (zero biases would hide their gradient)."""
    rng = np.random.default_rng(seed)
    model.load_weights({k: (scale * rng.standard_normal(v.shape)).astype(np.float32)
                        for k, v in model.params.items()})


def graph(rng, n: int = 7, e: int = 14, features: int = 5):
    """(x, edge_index): isolated nodes (the last two), a duplicate edge, a self-loop."""
    src, dst = rng.integers(0, n - 2, e), rng.integers(0, n - 2, e)
    src[1], dst[1] = src[0], dst[0]
    src[2], dst[2] = 3, 3
    return rng.standard_normal((n, features)).astype(np.float32), np.stack([src, dst])


# ---------------------------------------------------------------------------- GCN
def gcn_conv(x, edge_index, p, name):
    """PyG GCNConv: D^-1/2 (A + I) D^-1/2 x W^T + b, the input's self-loops replaced by one
    loop of weight 1 per node, degrees counted at the targets."""
    n = x.shape[0]
    src, dst = edge_index
    loops = torch.arange(n)
    weight = torch.cat([(src != dst).double(), torch.ones(n, dtype=torch.float64)])
    src, dst = torch.cat([src, loops]), torch.cat([dst, loops])
    degree = torch.zeros(n, dtype=torch.float64).index_add(0, dst, weight)
    scale = torch.where(degree > 0, degree.clamp(min=1e-300).rsqrt(), 0.0)
    norm = scale[src] * weight * scale[dst]
    h = x @ p[f"{name}.lin.weight"].T
    out = torch.zeros(n, h.shape[1], dtype=torch.float64).index_add(0, dst, h[src] * norm[:, None])
    return out + p[f"{name}.bias"]


def gcn(p, x, edge_index):
    h = torch.relu(gcn_conv(x, edge_index, p, "conv1"))
    return torch.log_softmax(gcn_conv(h, edge_index, p, "conv2"), dim=-1)


@functools.cache
def compiled(name: str, target: str, **args):
    return kiln.compile(EXAMPLES / name if name.endswith(".kiln") else name, target=target,
                        args=dict(args) or None)


@pytest.mark.parametrize("target", TARGETS)
def test_gcn_gradients(target):
    model = compiled("gcn.kiln", target, num_features=5, hidden_channels=6, num_classes=3)
    perturbed(model)
    x, edge_index = graph(np.random.default_rng(2))
    check_vjp_against_torch(model, gcn, [x, edge_index])


# ---------------------------------------------------------------------------- GraphSAGE
def sage_conv(x, edge_index, p, name, aggr="mean"):
    """PyG SAGEConv: lin_l(aggr over the edges j -> i of x_j) + lin_r(x_i), an empty
    aggregation being 0 (PyG scatters onto zeros with include_self=False)."""
    src, dst = edge_index
    index = dst[:, None].expand(-1, x.shape[1])
    reduce = {"mean": "mean", "max": "amax", "sum": "sum"}[aggr]
    agg = torch.zeros_like(x).scatter_reduce(0, index, x[src], reduce, include_self=False)
    return (agg @ p[f"{name}.lin_l.weight"].T + p[f"{name}.lin_l.bias"]
            + x @ p[f"{name}.lin_r.weight"].T)


def graphsage(p, x, edge_index, aggr="mean"):
    h = torch.relu(sage_conv(x, edge_index, p, "conv1", aggr))
    return torch.log_softmax(sage_conv(h, edge_index, p, "conv2", aggr), dim=-1)


@pytest.mark.parametrize("target", TARGETS)
def test_graphsage_gradients(target):
    model = compiled("graphsage.kiln", target, in_channels=5, hidden_channels=6, num_classes=3)
    perturbed(model)
    rng = np.random.default_rng(3)
    for _ in range(2):
        x, edge_index = graph(rng)
        check_vjp_against_torch(model, graphsage, [x, edge_index])
    # no edges at all: every aggregation is empty
    x = rng.standard_normal((3, 5)).astype(np.float32)
    check_vjp_against_torch(model, graphsage, [x, np.zeros((2, 0), np.int64)])


SAGE_MAX = """
import std.gnn

model SageMax(channels: int = 5, hidden: int = 6, classes: int = 3) {
  conv1 = gnn.SAGEConv(channels, hidden, aggr = "max")
  conv2 = gnn.SAGEConv(hidden, classes, aggr = "max")

  forward(x: f32[N, channels], edge_index: i64[2, E]) -> f32[N, classes] {
    return log_softmax(conv2(relu(conv1(x, edge_index)), edge_index), axis = -1)
  }
}
"""


def test_graphsage_max_gradients():
    """Max aggregation, with segments whose maximum is exactly 0 (feature 0 is 0 or negative),
    where PyTorch shares the gradient with the zeros it scatters onto; and ties of nonzero
    maxima (a duplicated edge). (On the reference: test_grad_shape's test_rules_native runs
    scatter max's backward graph in native code.)"""
    model = compiled(SAGE_MAX, "reference")
    perturbed(model)
    rng = np.random.default_rng(4)
    x, edge_index = graph(rng)
    x[:, 0] = np.where(rng.random(len(x)) < 0.5, 0.0, -np.abs(x[:, 0]))
    check_vjp_against_torch(model, functools.partial(graphsage, aggr="max"), [x, edge_index])


# ---------------------------------------------------------------------------- embedding + moves
MIXER = """
import std.nn

model Mixer(vocab: int = 11, dim: int = 4) {
  emb = nn.Embedding(vocab, dim)
  proj = nn.Linear(2 * dim, 3)

  forward(tokens: i64[B, T], x: f32[B, T, dim]) -> f32[B, T + 1, 3] {
    h = concat([emb(tokens), x[:, ::-1]], axis = -1)            # [B, T, 2 dim]
    h = pad(h, [0, 0, 2, 1], mode = "reflect")                    # [B, T + 3, 2 dim]
    h = h[:, 1:, :] * h[:, :-1, :]                                # [B, T + 2, 2 dim]
    h = pad(h, [1, -1], value = 0.5)[:, :T + 1]                   # [B, T + 1, 2 dim]
    return proj(h)
  }
}
"""


def mixer(p, tokens, x):
    """MIXER in torch (F.pad's reflect needs a batch and channel axis first: padded as [B, C, T])."""
    nnf = torch.nn.functional
    h = torch.cat([p["emb.weight"][tokens], x.flip(1)], dim=-1)
    h = nnf.pad(h.transpose(1, 2), (2, 1), mode="reflect").transpose(1, 2)
    h = h[:, 1:, :] * h[:, :-1, :]
    h = nnf.pad(h, (1, -1), value=0.5)[:, :tokens.shape[1] + 1]
    return h @ p["proj.weight"].T + p["proj.bias"]


@pytest.mark.parametrize("target", TARGETS)
def test_embedding_concat_slice_pad_gradients(target):
    model = compiled(MIXER, target)
    perturbed(model)
    rng = np.random.default_rng(5)
    for batch, steps in ((2, 5), (3, 4)):  # the symbolic B and T at two sizes
        tokens = rng.integers(0, 11, (batch, steps))
        tokens[0, :2] = 7  # a repeated token: its embedding row's gradient accumulates
        x = rng.standard_normal((batch, steps, 4)).astype(np.float32)
        check_vjp_against_torch(model, mixer, [tokens, x])


@pytest.mark.parametrize("target", TARGETS)
def test_token_out_of_range_reports_the_lookup(target):
    """A token id out of range is K0505 from the embedding's gather, on every target: the
    backward pass's scatter-add, which meets the same id later in the same native call, does
    not replace the first failure with its own."""
    model = compiled(MIXER, target)
    tokens, x = np.array([[1, 99, 2]]), np.zeros((1, 3, 4), np.float32)
    with pytest.raises(kiln.KilnError) as err:
        model.vjp(tokens, x, cotangents=[np.ones((1, 4, 3), np.float32)])
    assert err.value.code == "K0505"
    assert "gather" in str(err.value) and "scatter" not in str(err.value)
