"""A new user's PyTorch exports, written by hand as users write them (issue: the ONNX import
sweep): MobileNetV2's inverted residuals (ReLU6 as Clip, depthwise), EfficientNet's MBConv
(SiLU, squeeze-excite), a ViT (patch conv, cls token by expand + cat, nn.MultiheadAttention),
a BERT encoder (token types, an int mask made additive in the graph), a LLaMA layer (RMSNorm,
rotary embedding, grouped-query attention by repeat_interleave, causal SDPA), stacked
bidirectional LSTM and GRU, a 1-D audio CNN (GroupNorm, MaxPool1d) and a grouped dilated conv
with ceil-mode pools; and the exports that kiln refused before this sweep: a KV cache's causal
mask `tril(diagonal=past)` (Trilu's k from shapes), a detection head (boxes clamped to the
image's size: Clip's max at run time; `x[:, 0] = y`: ScatterND of a dynamic batch; argsort:
TopK's K from a shape), a segmentation net of dynamic height and width (`padding="same"`:
auto_pad on symbolic sizes; bilinear interpolate with align_corners=True to the input's size).

Each is exported with the TorchScript exporter (opset 17 or 18, dynamic axes), compiled once
per target and compared with onnxruntime on the same file, at sizes other than the exported
ones where they are dynamic."""

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

TARGETS = ["reference", "native"]
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning",
                                        "ignore::FutureWarning", "ignore::torch.jit.TracerWarning")


class InvertedResidual(nn.Module):
    def __init__(self, cin, cout, stride, expand):
        super().__init__()
        hidden = cin * expand
        self.residual = stride == 1 and cin == cout
        self.block = nn.Sequential(
            nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden), nn.ReLU6(),
            nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        return x + self.block(x) if self.residual else self.block(x)


class MBConv(nn.Module):
    """Expand, depthwise 5x5, squeeze-excite (AdaptiveAvgPool2d(1), SiLU, sigmoid), project."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        hidden = cin * 4
        self.expand = nn.Sequential(nn.Conv2d(cin, hidden, 1, bias=False),
                                    nn.BatchNorm2d(hidden), nn.SiLU())
        self.dw = nn.Sequential(nn.Conv2d(hidden, hidden, 5, stride, 2, groups=hidden, bias=False),
                                nn.BatchNorm2d(hidden), nn.SiLU())
        self.squeeze = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(hidden, 2, 1), nn.SiLU(),
                                     nn.Conv2d(2, hidden, 1), nn.Sigmoid())
        self.project = nn.Sequential(nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        h = self.dw(self.expand(x))
        y = self.project(h * self.squeeze(h))
        return x + y if self.residual else y


class MobileNet(nn.Module):
    """MobileNetV2's stem and inverted residuals (ReLU6: Clip), then EfficientNet's MBConvs."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8),
                                  nn.ReLU6())
        self.blocks = nn.Sequential(InvertedResidual(8, 8, 1, 1), InvertedResidual(8, 12, 2, 4),
                                    MBConv(12, 12, 1), MBConv(12, 16, 2))
        self.head = nn.Sequential(nn.Dropout(0.2), nn.Linear(16, 5))

    def forward(self, x):
        return self.head(torch.flatten(F.adaptive_avg_pool2d(self.blocks(self.stem(x)), 1), 1))


class ViT(nn.Module):
    """Patch embedding, a cls token, learned positions, pre-norm layers of
    nn.MultiheadAttention and a GELU MLP."""

    def __init__(self, dim=16):
        super().__init__()
        self.patch = nn.Conv2d(3, dim, 4, 4)
        self.cls = nn.Parameter(torch.randn(1, 1, dim))
        self.pos = nn.Parameter(torch.randn(1, 17, dim))
        self.ln1, self.ln2, self.norm = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, 2, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.head = nn.Linear(dim, 10)

    def forward(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1) + self.pos
        h = self.ln1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        x = x + self.mlp(self.ln2(x))
        return self.head(self.norm(x)[:, 0])


class Bert(nn.Module):
    """Word, token-type and position embeddings; an additive mask (1 - mask) * -10000 made
    of the int mask in the graph; one post-norm layer and the pooler."""

    def __init__(self, dim=16, heads=2):
        super().__init__()
        self.heads = heads
        self.word, self.kind, self.position = (nn.Embedding(n, dim) for n in (50, 2, 32))
        self.ln, self.ln1, self.ln2 = (nn.LayerNorm(dim, eps=1e-12) for _ in range(3))
        self.q, self.k, self.v, self.o, self.pool = (nn.Linear(dim, dim) for _ in range(5))
        self.ff = nn.Sequential(nn.Linear(dim, 32), nn.GELU(), nn.Linear(32, dim))

    def forward(self, input_ids, token_type_ids, attention_mask):
        b, t = input_ids.shape
        positions = torch.arange(t, dtype=torch.long).unsqueeze(0)
        x = self.ln(self.word(input_ids) + self.kind(token_type_ids) + self.position(positions))
        additive = (1.0 - attention_mask.unsqueeze(1).unsqueeze(2).to(torch.float32)) * -10000.0
        d = x.shape[-1] // self.heads

        def heads(z):
            return z.view(b, t, self.heads, d).permute(0, 2, 1, 3)

        scores = heads(self.q(x)) @ heads(self.k(x)).transpose(-1, -2) / math.sqrt(d) + additive
        a = (scores.softmax(-1) @ heads(self.v(x))).permute(0, 2, 1, 3).contiguous().view(b, t, -1)
        x = self.ln1(x + self.o(a))
        x = self.ln2(x + self.ff(x))
        return x, torch.tanh(self.pool(x[:, 0]))


class Llama(nn.Module):
    """RMSNorm, rotary embedding from arange(t), grouped-query attention (repeat_interleave)
    by causal scaled_dot_product_attention, SwiGLU."""

    def __init__(self, dim=16, heads=4, kv_heads=2):
        super().__init__()
        self.heads, self.kv, self.hd = heads, kv_heads, dim // heads
        self.emb = nn.Embedding(40, dim)
        self.n1, self.n2 = (nn.Parameter(torch.rand(dim) + 0.5) for _ in range(2))
        self.wq, self.wo = nn.Linear(dim, dim, bias=False), nn.Linear(dim, dim, bias=False)
        self.wk, self.wv = (nn.Linear(dim, kv_heads * self.hd, bias=False) for _ in range(2))
        self.w1, self.w3 = (nn.Linear(dim, 24, bias=False) for _ in range(2))
        self.w2 = nn.Linear(24, dim, bias=False)
        self.out = nn.Linear(dim, 40, bias=False)

    @staticmethod
    def rms(x, w):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * w

    @staticmethod
    def rotate(x, cos, sin):
        half = x.shape[-1] // 2
        return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin

    def forward(self, ids):
        b, t = ids.shape
        inverse = 1.0 / (10000 ** (torch.arange(0, self.hd, 2).float() / self.hd))
        freqs = torch.outer(torch.arange(t).float(), inverse)
        angles = torch.cat((freqs, freqs), -1)
        cos, sin = angles.cos()[None, None], angles.sin()[None, None]
        x = self.emb(ids)
        h = self.rms(x, self.n1)
        q = self.rotate(self.wq(h).view(b, t, self.heads, self.hd).transpose(1, 2), cos, sin)
        k = self.rotate(self.wk(h).view(b, t, self.kv, self.hd).transpose(1, 2), cos, sin)
        v = self.wv(h).view(b, t, self.kv, self.hd).transpose(1, 2)
        k, v = (z.repeat_interleave(self.heads // self.kv, dim=1) for z in (k, v))
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.wo(a.transpose(1, 2).reshape(b, t, -1))
        h = self.rms(x, self.n2)
        return self.out(x + self.w2(F.silu(self.w1(h)) * self.w3(h)))


class BiRNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(6, 8, num_layers=2, batch_first=True, bidirectional=True)
        self.gru = nn.GRU(16, 5, num_layers=2, batch_first=True, bidirectional=True)
        self.fc = nn.Linear(10, 3)

    def forward(self, x):
        y, (h, _) = self.lstm(x)
        z, hg = self.gru(y)
        return self.fc(z), h, hg


class Audio(nn.Module):
    """Conv1d, BatchNorm1d, MaxPool1d, GroupNorm, a dilated Conv1d, global max, log_softmax."""

    def __init__(self):
        super().__init__()
        self.c1, self.bn = nn.Conv1d(1, 8, 9, stride=2, padding=4), nn.BatchNorm1d(8)
        self.c2, self.gn = nn.Conv1d(8, 16, 5, padding=2), nn.GroupNorm(4, 16)
        self.c3 = nn.Conv1d(16, 16, 3, dilation=2, padding=2)
        self.fc = nn.Linear(16, 4)

    def forward(self, x):
        x = F.max_pool1d(F.relu(self.bn(self.c1(x))), 3, 2)
        x = F.elu(self.c3(F.leaky_relu(self.gn(self.c2(x)), 0.1)))
        return F.log_softmax(self.fc(F.adaptive_max_pool1d(x, 1).squeeze(-1)), -1)


class GroupedPools(nn.Module):
    """Conv2d(groups=4, dilation=2), AvgPool2d(ceil_mode, count_include_pad=False), hardswish."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(8, 16, 3, padding=2, dilation=2, groups=4)
        self.pool = nn.AvgPool2d(3, 2, padding=1, ceil_mode=True, count_include_pad=False)
        self.c2 = nn.Conv2d(16, 8, (3, 1), stride=(2, 1), padding=(1, 0), groups=4, bias=False)

    def forward(self, x):
        y = self.pool(F.hardswish(self.c1(x)))
        return F.max_pool2d(F.hardsigmoid(self.c2(y)), 3, 2, ceil_mode=True), \
            F.avg_pool2d(y, 2, ceil_mode=True)


class KVCacheStep(nn.Module):
    """Decoding with a cache of dynamic length: the causal mask is `tril(diagonal=past)`."""

    def __init__(self, dim=16, heads=2):
        super().__init__()
        self.heads, self.hd = heads, dim // heads
        self.qkv, self.o = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x, past_k, past_v):
        b, t, c = x.shape
        q, k, v = (z.view(b, t, self.heads, self.hd).transpose(1, 2)
                   for z in self.qkv(x).split(c, -1))
        k, v = torch.cat([past_k, k], 2), torch.cat([past_v, v], 2)
        total = k.shape[2]
        mask = torch.ones(t, total, dtype=torch.bool).tril(diagonal=total - t)
        att = (q @ k.transpose(-1, -2) / math.sqrt(self.hd)).masked_fill(
            ~mask, torch.finfo(torch.float32).min).softmax(-1)
        return self.o((att @ v).transpose(1, 2).reshape(b, t, c)), k, v


class DetectionHead(nn.Module):
    """Boxes decoded on a grid of the feature's dynamic size and clamped to the image's size,
    the scores ranked (argsort, sort), the first anchor's box overwritten (`x[:, 0] = y`)."""

    def __init__(self):
        super().__init__()
        self.c, self.reg, self.cls = nn.Conv2d(3, 8, 3, 4, 1), nn.Conv2d(8, 4, 1), nn.Conv2d(8, 2, 1)

    def forward(self, img):
        f = F.relu(self.c(img))
        h, w = f.shape[-2:]
        ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        centres = torch.stack([xs, ys], 0).float().mul(4).add(2).flatten(1)
        d = self.reg(f).exp().flatten(2)
        width, height = img.shape[-1], img.shape[-2]
        boxes = torch.stack([(centres[0] - d[:, 0]).clamp(min=0, max=width),
                             (centres[1] - d[:, 1]).clamp(min=0, max=height),
                             (centres[0] + d[:, 2]).clamp(min=0, max=width),
                             (centres[1] + d[:, 3]).clamp(min=0, max=height)], -1)
        boxes[:, 0] = boxes[:, 1]
        scores = self.cls(f).sigmoid().flatten(2).transpose(1, 2)
        best = scores.amax(-1)
        ranked, _ = torch.sort(scores, dim=-1, descending=True)
        return boxes, best, ranked, torch.argsort(scores, dim=-1)


class Segmenter(nn.Module):
    """ASPP-like: a `padding="same"` conv, dilated branches, image pooling upsampled to the
    feature's size, the logits upsampled to the input's with align_corners=True."""

    def __init__(self):
        super().__init__()
        self.back = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.ReLU())
        self.same = nn.Conv2d(8, 4, 3, padding="same")
        self.dilated = nn.Conv2d(8, 4, 3, padding=2, dilation=2)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(8, 4, 1), nn.ReLU())
        self.proj = nn.Conv2d(12, 3, 1)

    def forward(self, x):
        f = self.back(x)
        p = F.interpolate(self.pool(f), size=f.shape[-2:], mode="bilinear", align_corners=False)
        y = self.proj(torch.cat([self.same(f), self.dilated(f), p], 1))
        return F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=True)


def _floats(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


def _bert_feeds(rng, b, t):
    mask = np.ones((b, t), np.int64)
    mask[0, t // 2:] = 0
    return {"input_ids": rng.integers(0, 50, (b, t)), "token_type_ids": rng.integers(0, 2, (b, t)),
            "attention_mask": mask}


BATCH = {0: "batch"}
# name: (module, input names, dynamic axes, opset, feeds(rng, n): n = 0 the exported sizes)
CASES = {
    "mobilenet": (MobileNet, ["x"], {"x": BATCH}, 18,
                  lambda r, n: {"x": _floats(r, 2 + n, 3, 16, 16)}),
    "vit": (ViT, ["x"], {"x": BATCH}, 17, lambda r, n: {"x": _floats(r, 2 + n, 3, 16, 16)}),
    "bert": (Bert, ["input_ids", "token_type_ids", "attention_mask"],
             {k: {0: "batch", 1: "seq"} for k in ("input_ids", "token_type_ids",
                                                  "attention_mask")}, 17,
             lambda r, n: _bert_feeds(r, 2 + n, 7 - 2 * n)),
    "llama": (Llama, ["ids"], {"ids": {0: "batch", 1: "seq"}}, 17,
              lambda r, n: {"ids": r.integers(0, 40, (2 + n, 5 + n))}),
    "birnn": (BiRNN, ["x"], {"x": {0: "batch", 1: "seq"}}, 17,
              lambda r, n: {"x": _floats(r, 2 + n, 4 + n, 6)}),
    "audio": (Audio, ["x"], {"x": {0: "batch", 2: "time"}}, 17,
              lambda r, n: {"x": _floats(r, 2 + n, 1, 60 + 5 * n)}),
    "grouped_pools": (GroupedPools, ["x"], {"x": BATCH}, 17,
                      lambda r, n: {"x": _floats(r, 2 + n, 8, 11, 13)}),
    "kv_cache": (KVCacheStep, ["x", "past_k", "past_v"],
                 {"x": {0: "batch", 1: "new"}, "past_k": {0: "batch", 2: "past"},
                  "past_v": {0: "batch", 2: "past"}}, 17,
                 lambda r, n: {"x": _floats(r, 2, 1 + n, 16), "past_k": _floats(r, 2, 2, 3 + 2 * n, 8),
                               "past_v": _floats(r, 2, 2, 3 + 2 * n, 8)}),
    "detection": (DetectionHead, ["img"], {"img": {0: "batch", 2: "h", 3: "w"}}, 17,
                  lambda r, n: {"img": _floats(r, 2 + n, 3, 16 + 4 * n, 20 - 4 * n)}),
    "segmenter": (Segmenter, ["x"], {"x": {0: "batch", 2: "h", 3: "w"}}, 17,
                  lambda r, n: {"x": _floats(r, 2, 3, 12 + 3 * n, 14 - n)}),
}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Each model's file, exported once for the module (random weights, random batch-norm
    statistics, eval mode)."""
    directory = tmp_path_factory.mktemp("torch-sweep")
    made: dict = {}

    def get(name: str):
        if name not in made:
            make, names, axes, opset, feeds = CASES[name]
            torch.manual_seed(0)
            module = make().eval()
            for m in module.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.running_mean.uniform_(-0.5, 0.5)
                    m.running_var.uniform_(0.5, 1.5)
            example = feeds(np.random.default_rng(0), 0)
            path = directory / f"{name}.onnx"
            torch.onnx.export(module, tuple(torch.from_numpy(example[n]) for n in names), path,
                              input_names=names, dynamic_axes=axes, opset_version=opset,
                              dynamo=False)
            made[name] = path
        return made[name]

    return get


@pytest.fixture(scope="module")
def compiled(exported):
    """Each model compiled once per target for the module."""
    made: dict = {}

    def get(name: str, target: str):
        if (name, target) not in made:
            made[name, target] = kiln.compile(exported(name), target=target)
        return made[name, target]

    return get


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("name", list(CASES))
def test_agrees_with_onnxruntime(exported, compiled, name, target):
    """At the exported sizes and (where they are dynamic) at others, of one compiled model."""
    model = compiled(name, target)
    for n in (0, 1):
        feeds = CASES[name][4](np.random.default_rng(n + 1), n)
        want = run_ort(exported(name), feeds)
        got = model(**feeds)
        got = list(got) if isinstance(got, tuple) else [got]
        for g, w in zip(got, want, strict=True):
            assert g.shape == w.shape and g.dtype == w.dtype
            np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)
