"""Two examples against references written by hand, on every target (issue 13's models).

- examples/seq2seq_attention.kiln against a PyTorch module written here from the same equations
  (nn.GRU cells, Luong "general" attention with input feeding, a Python loop over the target):
  the torch module's state_dict loads strictly into the kiln model, which checks that kiln's
  parameter names are PyTorch's, and both give the same logits and attention weights.
- examples/graphsage.kiln against numpy's PyG SAGEConv with mean aggregation,
  lin_l(mean_{j -> i} x_j) + lin_r(x_i), on graphs with isolated nodes, duplicate edges,
  self-loops and no edges at all.

The weights are random and larger than the default initialisation, so that attention is not
close to uniform and every term (the bias, the root weight) moves the result.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
from _stdlibtest import close

import kiln

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
TARGETS = ["reference", "native", "onnx"]
# f32 through a recurrence against float64: looser than one layer, far below what a wrong
# gate, a missing input feed or a softmax over the wrong axis changes (0.01 and more)
RTOL, ATOL = 1e-4, 2e-5


@functools.cache
def compiled(name: str, target: str):
    return kiln.compile(EXAMPLES / name, target=target)


# ---------------------------------------------------------------------------- seq2seq
SRC_VOCAB, TGT_VOCAB, EMBED, HIDDEN = 50, 60, 16, 32   # the example's defaults


def torch_seq2seq():
    """The example's network as a torch module, written from the equations in its header."""
    torch = pytest.importorskip("torch", reason="PyTorch is the seq2seq reference")
    nn = torch.nn

    class Seq2SeqAttention(nn.Module):
        def __init__(self):
            super().__init__()
            self.src_embedding = nn.Embedding(SRC_VOCAB, EMBED)
            self.tgt_embedding = nn.Embedding(TGT_VOCAB, EMBED)
            self.encoder = nn.GRU(EMBED, HIDDEN, batch_first=True)
            self.decoder = nn.GRU(EMBED + HIDDEN, HIDDEN, batch_first=True)
            self.attn = nn.Linear(HIDDEN, HIDDEN, bias=False)
            self.attn_combine = nn.Linear(2 * HIDDEN, HIDDEN)
            self.out = nn.Linear(HIDDEN, TGT_VOCAB)

        def forward(self, src, tgt):
            memory, h = self.encoder(self.src_embedding(src))
            keys = self.attn(memory)
            embedded = self.tgt_embedding(tgt)
            feed = memory.new_zeros(src.shape[0], HIDDEN)
            logits, attention = [], []
            for t in range(tgt.shape[1]):
                step, h = self.decoder(torch.cat([embedded[:, t], feed], -1)[:, None], h)
                d = step[:, 0]
                a = torch.softmax(torch.bmm(keys, d[:, :, None])[:, :, 0], dim=-1)
                context = torch.bmm(a[:, None], memory)[:, 0]
                feed = torch.tanh(self.attn_combine(torch.cat([context, d], -1)))
                logits.append(self.out(feed))
                attention.append(a)
            return torch.stack(logits, 1), torch.stack(attention, 1)

    torch.manual_seed(0)
    module = Seq2SeqAttention().double()
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0.0, 0.5)
    return module


@pytest.mark.parametrize("target", TARGETS)
def test_seq2seq_matches_a_torch_module(target):
    torch = pytest.importorskip("torch", reason="PyTorch is the seq2seq reference")

    module = torch_seq2seq()
    m = compiled("seq2seq_attention.kiln", target)
    m.load_weights({k: v.float() for k, v in module.state_dict().items()})  # strict: same names
    rng = np.random.default_rng(0)
    for b, s, t in [(3, 5, 4), (1, 1, 1), (2, 7, 3)]:
        src = rng.integers(0, SRC_VOCAB, (b, s))
        tgt = rng.integers(0, TGT_VOCAB, (b, t))
        with torch.no_grad():
            want = [w.numpy() for w in module(torch.from_numpy(src), torch.from_numpy(tgt))]
        got = m(src, tgt)
        assert got._fields == ("logits", "attention")
        close(got.logits, want[0], RTOL, ATOL)
        close(got.attention, want[1], RTOL, ATOL)
        if s > 1:  # the weights make attention peaked, so a wrong score would show
            assert want[1].max() > 2 / s


# ---------------------------------------------------------------------------- GraphSAGE
def sage_conv(x, edge_index, p, name):
    """PyG SAGEConv, aggr = "mean": lin_l(mean over the edges j -> i of x_j) + lin_r(x_i),
    the mean of no edges being 0."""
    src, dst = edge_index
    total = np.zeros_like(x)
    np.add.at(total, dst, x[src])
    count = np.bincount(dst, minlength=len(x))
    mean = total / np.maximum(count, 1)[:, None]
    return (mean @ p[f"{name}.lin_l.weight"].T + p[f"{name}.lin_l.bias"]
            + x @ p[f"{name}.lin_r.weight"].T)


def log_softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def graphsage(x, edge_index, p):
    h = np.maximum(sage_conv(x, edge_index, p, "conv1"), 0)
    return log_softmax(sage_conv(h, edge_index, p, "conv2"))


def graphs(rng):
    """(x, edge_index) with isolated nodes, a duplicate edge, self-loops; then no edges."""
    src, dst = rng.integers(0, 6, 12), rng.integers(0, 6, 12)   # nodes 6, 7 isolated
    src[1], dst[1] = src[0], dst[0]
    src[2], dst[2] = 3, 3
    yield rng.standard_normal((8, 16)).astype(np.float32), np.stack([src, dst])
    yield rng.standard_normal((3, 16)).astype(np.float32), np.zeros((2, 0), np.int64)


@pytest.mark.parametrize("target", TARGETS)
def test_graphsage_matches_numpy_mean_aggregation(target):
    m = compiled("graphsage.kiln", target)
    assert list(m.params) == [  # PyG 2.5's state_dict keys
        "conv1.lin_l.weight", "conv1.lin_l.bias", "conv1.lin_r.weight",
        "conv2.lin_l.weight", "conv2.lin_l.bias", "conv2.lin_r.weight"]
    rng = np.random.default_rng(1)
    weights = {k: rng.standard_normal(v.shape).astype(np.float32) * 0.5
               for k, v in m.params.items()}
    m.load_weights(weights)
    p = {k: v.astype(np.float64) for k, v in weights.items()}
    for x, edge_index in graphs(rng):
        close(m(x, edge_index), graphsage(x.astype(np.float64), edge_index, p))
