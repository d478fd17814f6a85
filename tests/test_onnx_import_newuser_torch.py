"""A new user's PyTorch exports that kiln refused: a BERT-style encoder of
nn.TransformerEncoderLayer with a padding mask (the TorchScript exporter traces the sequence
length as a number: `args=` fixes it), an encoder exported with `dynamic_axes` given as lists
(each input's sizes named apart), a decoder whose upsampling is `interpolate` (bilinear, and
to `size=` of a dynamic batch), and a GPT layer whose causal mask the graph builds. Each agrees with
onnxruntime on the same file, at sizes other than the exported ones where they are dynamic."""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the models are exported with PyTorch")
pytest.importorskip("onnxruntime", reason="onnxruntime is the oracle")
from _onnximport import run_ort  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402

import kiln  # noqa: E402
from kiln import KilnError  # noqa: E402

TARGETS = ["reference", "native"]
# the exporters' warnings about tracing (sizes taken as numbers: the point of one test)
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning",
                                        "ignore::FutureWarning", "ignore::torch.jit.TracerWarning")


class Encoder(nn.Module):
    """Token embeddings, one nn.TransformerEncoderLayer with a key padding mask."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(30, 16)
        self.layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)

    def forward(self, ids, mask):
        return self.layer(self.emb(ids), src_key_padding_mask=mask == 0)


class Attention(nn.Module):
    """Hand-written attention with an additive mask (BERT's extended attention mask)."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(30, 16)
        self.qkv = nn.Linear(16, 48)

    def forward(self, ids, mask):
        b, t = ids.shape
        q, k, v = (z.view(b, t, 2, 8).transpose(1, 2) for z in self.qkv(self.emb(ids)).chunk(3, -1))
        att = q @ k.transpose(-1, -2) / math.sqrt(8)
        att = (att + (1.0 - mask[:, None, None, :].to(att.dtype)) * -10000.0).softmax(-1)
        return (att @ v).transpose(1, 2).reshape(b, t, 16)


class Decoder(nn.Module):
    """Upsampling as PyTorch writes it: bilinear by a scale, nearest to a size."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, 2, 1)

    def forward(self, x):
        h = F.relu(self.conv(x))
        up = F.interpolate(h, scale_factor=2.0, mode="bilinear", align_corners=False)
        return up + F.interpolate(h, size=x.shape[-2:], mode="nearest")


class GPT(nn.Module):
    """One causal self-attention layer, its mask built in the graph (triu, masked_fill)."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(30, 16)
        self.qkv = nn.Linear(16, 48)
        self.head = nn.Linear(16, 30)

    def forward(self, ids):
        b, t = ids.shape
        q, k, v = (z.view(b, t, 2, 8).transpose(1, 2) for z in self.qkv(self.emb(ids)).split(16, -1))
        att = q @ k.transpose(-1, -2) / math.sqrt(8)
        causal = torch.triu(torch.ones(t, t, dtype=torch.bool), diagonal=1)
        att = att.masked_fill(causal, float("-inf")).softmax(-1)
        return self.head((att @ v).transpose(1, 2).reshape(b, t, 16))


def tokens(batch: int, seq: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(batch * 100 + seq)
    mask = np.ones((batch, seq), np.int64)
    mask[0, seq // 2:] = 0
    return {"ids": rng.integers(0, 30, (batch, seq)), "mask": mask}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Each model's file, exported once for the module."""
    directory = tmp_path_factory.mktemp("torch-newuser")
    torch.manual_seed(0)
    ids, mask = (torch.from_numpy(a) for a in tokens(2, 7).values())
    image = torch.randn(2, 3, 8, 12)
    cases = {
        "encoder": (Encoder(), (ids, mask), ["ids", "mask"],
                    {"ids": {0: "batch", 1: "seq"}, "mask": {0: "batch", 1: "seq"}}),
        "attention": (Attention(), (ids, mask), ["ids", "mask"],
                      {"ids": [0, 1], "mask": [0, 1]}),
        "decoder": (Decoder(), (image,), ["x"], {"x": {0: "batch"}}),
        "gpt": (GPT(), (ids,), ["ids"], {"ids": {0: "batch", 1: "seq"}}),
    }
    made: dict = {}

    def get(name: str):
        if name not in made:
            path = directory / f"{name}.onnx"
            module, args, names, axes = cases[name]
            torch.onnx.export(module.eval(), args, path, input_names=names,
                              output_names=["y"], dynamic_axes=axes, opset_version=17,
                              dynamo=False)
            made[name] = path
        return made[name]

    return get


def agree(path, feeds, target, **kwargs) -> None:
    want = run_ort(path, feeds)
    got = kiln.compile(path, target=target, **kwargs)(**feeds)
    got = list(got) if isinstance(got, tuple) else [got]
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape and g.dtype == w.dtype
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)


def test_a_traced_sequence_length_names_its_fix(exported):
    with pytest.raises(KilnError, match="K0906") as err:
        kiln.compile(exported("encoder"), target="reference")
    assert "args={'seq': N}" in str(err.value)


@pytest.mark.parametrize("target", TARGETS)
def test_a_traced_sequence_length_fixed_by_args(exported, target):
    agree(exported("encoder"), tokens(3, 7), target, args={"seq": 7})


@pytest.mark.parametrize("target", TARGETS)
def test_dynamic_axes_given_as_lists(exported, target):
    agree(exported("attention"), tokens(3, 5), target)


@pytest.mark.parametrize("target", TARGETS)
def test_interpolate_of_a_dynamic_batch(exported, target):
    x = np.random.default_rng(1).standard_normal((3, 3, 8, 12)).astype(np.float32)
    agree(exported("decoder"), {"x": x}, target)


@pytest.mark.parametrize("target", TARGETS)
def test_a_causal_mask_built_in_the_graph(exported, target):
    agree(exported("gpt"), {"ids": tokens(2, 5)["ids"]}, target)
