"""Whole-model gradients of attention and graph models against PyTorch autograd (float64), with
the same state_dict, inputs and cotangents (test_grad_models.check_against_torch: relative error
at most 1e-4 on every parameter and float input), on the reference and native targets:

- std.transformer's TransformerEncoderLayer, post-norm and pre-norm, against
  nn.TransformerEncoderLayer with a float attention mask (its gradient too), in eval mode and in
  training mode with dropout 0 (the keyed dropout's rule in the graph, every element kept);
- std.transformer's GPTBlock (examples/gpt.kiln's block: pre-norm causal self-attention, an MLP
  with tanh GELU) against test_stdlib_transformer's nanoGPT-style twin;
- examples/gcn.kiln and std.gnn's GATConv against torch twins that propagate with the dense
  matrices test_stdlib_gnn builds from PyG's definitions, on a graph with isolated nodes,
  duplicate edges and self-loops (kiln gathers and scatters over the edge list).

std.rnn's two-layer bidirectional LSTM and GRU are in test_grad_scan.py.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="PyTorch autograd is the gradient reference")
from test_grad_models import EXAMPLES, check_against_torch  # noqa: E402
from test_stdlib_gnn import gat_multiplicity, gcn_matrix, random_graph  # noqa: E402
from test_stdlib_transformer import randomize, torch_gpt2  # noqa: E402

import kiln  # noqa: E402

nn = torch.nn
TARGETS = ["reference", "native"]
KEY = np.array([3, 1], np.int64)


class Wrapped(nn.Module):
    """`inner` as the member `name` of a module, so that its parameter paths are the kiln
    model's (`layer.linear1.weight`), called with `call(inner, *inputs)`."""

    def __init__(self, name: str, inner: nn.Module, call=None):
        super().__init__()
        self.name = name
        self.add_module(name, inner)
        self.call = call or (lambda m, *xs: m(*xs))

    def forward(self, *xs):
        return self.call(getattr(self, self.name), *xs)


def draws(rng, *shapes) -> list[np.ndarray]:
    return [rng.standard_normal(s).astype(np.float32) for s in shapes]


# ---------------------------------------------------------------------------- Transformer
ENCODER = """
import std.transformer as tr
model Encoder {
  layer = tr.TransformerEncoderLayer(8, 2, 16, dropout = DROPOUT, activation = "ACTIVATION",
                                     norm_first = NORM_FIRST)
  forward(x: f32[S, B, 8], mask: f32[S, S]) { return layer(x, mask) }
}
"""

ENCODER_CASES = [  # (target, norm_first, activation, training): each norm and mode on each target
    (t, nf, act, training) for t in TARGETS for nf, act, training in [
        (False, "relu", False), (True, "gelu", True), (False, "relu", True), (True, "gelu", False)]
    if t == "reference" or nf == training]


@pytest.mark.parametrize("target, norm_first, activation, training", ENCODER_CASES)
def test_transformer_encoder_layer(target, norm_first, activation, training):
    """Training mode with dropout 0: the same function through dropout_keyed's rule."""
    dropout = 0.0 if training else 0.1
    src = (ENCODER.replace("DROPOUT", str(dropout)).replace("ACTIVATION", activation)
           .replace("NORM_FIRST", str(norm_first).lower()))
    model = kiln.compile(src, target=target, training=training)
    layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=dropout, activation=activation,
                                       norm_first=norm_first)
    twin = Wrapped("layer", randomize(layer, torch, seed=int(norm_first)),
                   lambda m, x, mask: m(x, src_mask=mask)).train(training)
    rng = np.random.default_rng(1)
    x, mask, dy = draws(rng, (4, 3, 8), (4, 4), (4, 3, 8))
    check_against_torch(model, twin, [x, mask], [dy], {"rng_key": KEY} if training else None)


# ---------------------------------------------------------------------------- GPT-2
GPT_BLOCK = """
import std.transformer as tr
model Block {
  blk = tr.GPTBlock(16, 4, 8)
  forward(x: f32[B, T, 16]) -> f32[B, T, 16] { return blk(x) }
}
"""


@pytest.mark.parametrize("target", TARGETS)
def test_gpt2_block(target):
    block, _gpt = torch_gpt2(torch)
    torch.manual_seed(0)
    twin = Wrapped("blk", randomize(block(16, 4, 8), torch, scale=0.3))
    x, dy = draws(np.random.default_rng(2), (2, 5, 16), (2, 5, 16))
    check_against_torch(kiln.compile(GPT_BLOCK, target=target), twin, [x], [dy])


# ---------------------------------------------------------------------------- GCN and GAT
N, E, F_IN = 7, 16, 5


def graph():
    """Node features and edges among 5 of 7 nodes, duplicates and self-loops among them."""
    return random_graph(np.random.default_rng(4), N, E)


class DenseGCNConv(nn.Module):
    """PyG's GCNConv with its propagation as a fixed matrix: a (lin(x)) + bias."""

    def __init__(self, a: torch.Tensor, cin: int, cout: int):
        super().__init__()
        self.a = a
        self.bias = nn.Parameter(torch.randn(cout) * 0.5)  # PyG's zeros would hide its term
        self.lin = nn.Linear(cin, cout, bias=False)

    def forward(self, x):
        return self.a.to(x.dtype) @ self.lin(x) + self.bias


class DenseGCN(nn.Module):
    """examples/gcn.kiln in eval mode: conv1, relu, conv2, log_softmax."""

    def __init__(self, a: torch.Tensor, hidden: int, classes: int):
        super().__init__()
        self.conv1 = DenseGCNConv(a, F_IN, hidden)
        self.conv2 = DenseGCNConv(a, hidden, classes)

    def forward(self, x):
        return torch.log_softmax(self.conv2(torch.relu(self.conv1(x))), -1)


@pytest.mark.parametrize("target", TARGETS)
def test_gcn(target):
    x, edge_index = graph()
    torch.manual_seed(0)
    twin = DenseGCN(torch.from_numpy(gcn_matrix(edge_index, N)), 6, 3)
    model = kiln.compile(EXAMPLES / "gcn.kiln", target=target,
                         args={"num_features": F_IN, "hidden_channels": 6, "num_classes": 3})
    (dy,) = draws(np.random.default_rng(5), (N, 3))
    check_against_torch(model, twin, [x], [dy], {"edge_index": edge_index})


class DenseGATConv(nn.Module):
    """PyG's GATConv over a matrix of edge multiplicities m[i, j] (edges j -> i): alpha_ij =
    m_ij exp(e_ij) / sum_j m_ij exp(e_ij), e_ij = leaky_relu(att_dst . h_i + att_src . h_j)."""

    def __init__(self, m: torch.Tensor, heads: int, cout: int, concat: bool):
        super().__init__()
        self.m, self.heads, self.concat = m, heads, concat
        self.att_src = nn.Parameter(torch.randn(1, heads, cout))
        self.att_dst = nn.Parameter(torch.randn(1, heads, cout))
        self.bias = nn.Parameter(torch.randn(heads * cout if concat else cout) * 0.5)
        self.lin = nn.Linear(F_IN, heads * cout, bias=False)

    def forward(self, x):
        n = x.shape[0]
        h = self.lin(x).view(n, self.heads, -1)                       # [n, heads, out]
        a_src, a_dst = (h * self.att_src).sum(-1), (h * self.att_dst).sum(-1)
        e = nn.functional.leaky_relu(a_dst[:, None] + a_src[None, :], 0.2)   # [i, j, heads]
        m = self.m.to(x.dtype)[:, :, None]
        w = torch.softmax(torch.where(m > 0, e, -torch.inf), 1) * m
        out = torch.einsum("ijk,jkf->ikf", w / w.sum(1, keepdim=True), h)
        return (out.reshape(n, -1) if self.concat else out.mean(1)) + self.bias


GAT = """
import std.gnn
model Gat {
  conv = gnn.GATConv(5, 4, heads = HEADS, concat = CONCAT)
  forward(x: f32[N, 5], edge_index: i64[2, E]) { return conv(x, edge_index) }
}
"""


@pytest.mark.parametrize("target, heads, concat", [
    ("reference", 2, True), ("reference", 3, False), ("native", 2, True)])
def test_gat(target, heads, concat):
    x, edge_index = graph()
    torch.manual_seed(1)
    conv = DenseGATConv(torch.from_numpy(gat_multiplicity(edge_index, N)), heads, 4, concat)
    model = kiln.compile(GAT.replace("HEADS", str(heads)).replace("CONCAT", str(concat).lower()),
                         target=target)
    (dy,) = draws(np.random.default_rng(6), (N, heads * 4 if concat else 4))
    check_against_torch(model, Wrapped("conv", conv), [x], [dy], {"edge_index": edge_index})
