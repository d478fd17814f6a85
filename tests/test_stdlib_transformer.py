"""std.transformer and the Transformer examples against PyTorch and numpy.

PyTorch parity: each torch module gets random parameters (biases and layer-norm affines too), its
state_dict is loaded strictly into the kiln model (every key must match), and the outputs are
compared at two sizes. The torch modules are called with autograd enabled, which keeps PyTorch on
its ordinary math path (the eval-mode "fast path" and nested tensors need grad disabled).
The GPT-2 reference is hand-written below, nanoGPT-style with Hugging Face's names and Conv1D
[in, out] weights.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import numpy as np
import pytest
from _crosscheck import REFERENCE, check_opt_levels, oracle
from _stdlibtest import close, rand

import kiln
from kiln import KilnError

ROOT = Path(__file__).resolve().parents[1]
STDLIB = ROOT / "stdlib" / "transformer.kiln"
EXAMPLES = ROOT / "examples"

E, H = 8, 2  # attention width and heads of the small test blocks

# ---------------------------------------------------------------------------- kiln models
# every test model lives in one source, parsed once (parsing std.transformer dominates a compile)
MODELS: dict[str, str] = {}


def model(name: str, body: str) -> str:
    MODELS[name] = f"model {name} {{\n{body}\n}}\n"
    return name


def _mha(name, batch_first=False, bias=True, is_causal=False, mask="f32", mask3=False):
    flags = f"bias = {str(bias).lower()}, batch_first = {str(batch_first).lower()}, " \
            f"is_causal = {str(is_causal).lower()}"
    # a 3-D mask's first size must provably be num_heads * B: reshape(m, [-1, H, L, S]) of an
    # unrelated size BH is a compile-time error (K0301)
    mask_type = f"{mask}[{H} * B, L, S]?" if mask3 else f"{mask}[L, S]?"
    q, k = ("B, L", "B, S") if batch_first else ("L, B", "S, B")
    return model(name, f"""
  attn = tr.MultiheadAttention({E}, {H}, {flags})
  forward(q: f32[{q}, {E}], k: f32[{k}, {E}], v: f32[{k}, {E}], kpm: bool[B, S]?, am: {mask_type}) {{
    return attn(q, k, v, kpm, am)
  }}""")


def _enc(name, activation, batch_first, norm_first, is_causal=False, bias=True):
    return model(name, f"""
  layer = tr.TransformerEncoderLayer({E}, {H}, 16, activation = "{activation}", batch_first = {str(batch_first).lower()}, norm_first = {str(norm_first).lower()}, bias = {str(bias).lower()}, is_causal = {str(is_causal).lower()})
  forward(x: f32[{"B, S" if batch_first else "S, B"}, {E}], kpm: bool[B, S]?, am: f32[S, S]?) {{
    return layer(x, am, kpm)
  }}""")


def _dec(name, activation, batch_first, norm_first, tgt_is_causal=False):
    return model(name, f"""
  layer = tr.TransformerDecoderLayer({E}, {H}, 16, activation = "{activation}", batch_first = {str(batch_first).lower()}, norm_first = {str(norm_first).lower()}, tgt_is_causal = {str(tgt_is_causal).lower()})
  forward(x: f32[{"B, T" if batch_first else "T, B"}, {E}], mem: f32[{"B, S" if batch_first else "S, B"}, {E}], tm: f32[T, T]?, mm: bool[T, S]?, tkpm: bool[B, T]?, mkpm: bool[B, S]?) {{
    return layer(x, mem, tm, mm, tkpm, mkpm)
  }}""")


# (model, torch constructor keywords, inputs) for MultiheadAttention; L = 3 queries, S = 5 keys
MHA_CASES = [
    # name, kiln model, torch kwargs, self-attention?, key padding?, attn mask: None/"bool"/"float"/"float3"/"causal"
    ("self", _mha("MhaSelf"), {}, True, False, None),
    ("cross_batch_first_padding", _mha("MhaCross", batch_first=True),
     {"batch_first": True}, False, True, None),
    ("bool_mask_no_bias", _mha("MhaBool", bias=False, mask="bool"), {"bias": False}, False, True,
     "bool"),
    ("float_mask", _mha("MhaFloat"), {}, False, False, "float"),
    ("float_mask_3d", _mha("MhaFloat3", batch_first=True, mask3=True), {"batch_first": True},
     False, False, "float3"),
    ("causal", _mha("MhaCausal", is_causal=True), {}, True, False, "causal"),
    ("causal_padding_batch_first", _mha("MhaCausalPad", batch_first=True, is_causal=True),
     {"batch_first": True}, True, True, "causal"),
]

ENC_CASES = [  # (id, model, torch kwargs, key padding?, mask: None / "float" / "causal")
    (f"{act}_{'pre' if nf else 'post'}_{'bf' if bf else 'sf'}_{mask or 'nomask'}"
     f"{'_kpm' if kpm else ''}{'' if bias else '_nobias'}",
     _enc(f"Enc_{act}_{nf}_{bf}_{mask}_{kpm}_{bias}", act, bf, nf, mask == "causal", bias),
     {"activation": act, "batch_first": bf, "norm_first": nf, "bias": bias}, kpm, mask)
    for act, nf, bf, kpm, mask, bias in [
        ("relu", False, False, False, None, True),
        ("relu", True, True, True, None, True),
        ("gelu", False, True, True, "float", True),
        ("gelu", True, False, False, "causal", True),
        ("relu", True, False, True, "causal", True),
        ("gelu", False, False, True, None, True),
        ("relu", True, True, True, "float", False),
    ]
]

DEC_CASES = [  # (id, model, torch kwargs, with masks?)
    (f"{act}_{'pre' if nf else 'post'}_{'bf' if bf else 'sf'}_{'masks' if masks else 'nomask'}",
     _dec(f"Dec_{act}_{nf}_{bf}_{masks}", act, bf, nf, tgt_is_causal=masks),
     {"activation": act, "batch_first": bf, "norm_first": nf}, masks)
    for act, nf, bf, masks in [
        ("relu", False, False, False),
        ("gelu", True, True, True),
        ("relu", True, False, True),
        ("gelu", False, True, True),
    ]
]

model("EncStack", """
  enc = tr.TransformerEncoder(tr.TransformerEncoderLayer(8, 2, 16, batch_first = true, norm_first = true), 2, norm = nn.LayerNorm(8))
  forward(x: f32[B, S, 8], kpm: bool[B, S]?) {
    return enc(x, src_key_padding_mask = kpm)
  }""")
model("EncStackNoNorm", """
  enc = tr.TransformerEncoder(tr.TransformerEncoderLayer(8, 2, 16, activation = "gelu"), 3)
  forward(x: f32[S, B, 8], am: f32[S, S]?) {
    return enc(x, am)
  }""")
model("DecStack", """
  dec = tr.TransformerDecoder(tr.TransformerDecoderLayer(8, 2, 16, batch_first = true, tgt_is_causal = true), 2, norm = nn.LayerNorm(8))
  forward(x: f32[B, T, 8], mem: f32[B, S, 8], mkpm: bool[B, S]?) {
    return dec(x, mem, memory_key_padding_mask = mkpm)
  }""")
model("GptBlock", """
  blk = tr.GPTBlock(16, 4, 8)
  forward(x: f32[B, T, 16]) -> f32[B, T, 16] {
    return blk(x)
  }""")
model("Positions", """
  sin_bf = tr.SinusoidalPositionalEncoding(6)
  sin_sf = tr.SinusoidalPositionalEncoding(6, max_len = 12, batch_first = false)
  learned = tr.LearnedPositionalEmbedding(12, 6)
  learned_sf = tr.LearnedPositionalEmbedding(12, 6, batch_first = false)
  forward(x: f32[B, T, 6], y: f32[T, B, 6]) {
    return sin_bf(x), sin_sf(y), learned(x), learned_sf(y)
  }""")
model("Patches", """
  patch = tr.PatchEmbedding([8, 12], 4, 3, 16)
  forward(x: f32[B, 3, 8, 12]) -> f32[B, 6, 16] {
    return patch(x)
  }""")
model("Vit", """
  vit = tr.ViTEmbedding(8, [2, 4], 3, 16)
  forward(x: f32[B, 3, 8, 8]) -> f32[B, 9, 16] {
    return vit(x)
  }""")
model("VitNoCls", """
  vit = tr.ViTEmbedding(8, 4, 3, 16, class_token = false)
  forward(x: f32[B, 3, 8, 8]) -> f32[B, 4, 16] {
    return vit(x)
  }""")


@functools.cache
def program():
    return kiln.load("import std.nn\nimport std.transformer as tr\n" + "".join(MODELS.values()))


def compile_model(name: str, **kw):
    return kiln.compile(program(), model=name, **kw, target="reference")


# ---------------------------------------------------------------------------- torch helpers
def torch_or_skip():
    return pytest.importorskip("torch")


def randomize(module, torch, scale=0.5, seed=0):
    """Random values for every float tensor (biases and layer-norm affines included)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in module.state_dict().values():
            if t.is_floating_point():
                t.copy_(torch.randn(t.shape, generator=g) * scale)
    return module


def state(module, prefix=""):
    return {prefix + k: v.detach().numpy().copy() for k, v in module.state_dict().items()}


def load_strict(m, module, prefix=""):
    sd = state(module, prefix)
    assert {k: v.shape for k, v in m.state_dict().items()} == {k: v.shape for k, v in sd.items()}
    m.load_weights(sd)  # strict: no key missing, none unexpected


def t2n(t):
    return t.detach().numpy()


def causal_bool(n, torch):
    return torch.triu(torch.ones(n, n, dtype=torch.bool), diagonal=1)  # true = not allowed


def padding(B, S, rng):
    """A key-padding mask that hides 0 to 2 trailing keys per row, never key 0."""
    kpm = np.zeros((B, S), bool)
    for b in range(B):
        kpm[b, S - rng.integers(0, 3):] = True
    kpm[:, 0] = False
    return kpm


# ---------------------------------------------------------------------------- MultiheadAttention
@pytest.mark.filterwarnings("ignore::UserWarning")  # torch: mixed bool/float masks deprecated
@pytest.mark.parametrize("case", MHA_CASES, ids=[c[0] for c in MHA_CASES])
def test_multihead_attention_matches_torch(case):
    torch = torch_or_skip()
    _, name, kwargs, self_attn, with_kpm, mask = case
    mha = randomize(torch.nn.MultiheadAttention(E, H, **kwargs), torch).eval()
    m = compile_model(name)
    load_strict(m, mha, "attn.")
    bf = kwargs.get("batch_first", False)
    for B in (2, 3):
        rng = np.random.default_rng(B)
        L = 4 if self_attn else 3
        S = L if self_attn else 5
        q = rand(rng, B, L, E) if bf else rand(rng, L, B, E)
        k = q if self_attn else (rand(rng, B, S, E) if bf else rand(rng, S, B, E))
        v = q if self_attn else (rand(rng, B, S, E) if bf else rand(rng, S, B, E))
        kpm = padding(B, S, rng) if with_kpm else None
        am = None
        torch_mask = None
        if mask == "bool":
            am = rng.random((L, S)) < 0.3
            am[:, 0] = False  # every query keeps a key
            torch_mask = torch.from_numpy(am)
        elif mask == "float":
            am = rand(rng, L, S)
            torch_mask = torch.from_numpy(am)
        elif mask == "float3":
            am = rand(rng, B * H, L, S)
            torch_mask = torch.from_numpy(am)
        elif mask == "causal":
            torch_mask = causal_bool(L, torch)  # kiln: the is_causal block argument
        out, weights = m(q, k, v, kpm, am)
        want, want_w = mha(torch.from_numpy(q), torch.from_numpy(k), torch.from_numpy(v),
                           key_padding_mask=None if kpm is None else torch.from_numpy(kpm),
                           attn_mask=torch_mask, need_weights=True, average_attn_weights=True)
        close(out, t2n(want))
        close(weights, t2n(want_w))
        assert weights.shape == (B, L, S)


def test_multihead_attention_names_and_init():
    m = compile_model("MhaSelf")
    p = m.state_dict()
    assert list(p) == ["attn.in_proj_weight", "attn.in_proj_bias", "attn.out_proj.weight",
                       "attn.out_proj.bias"]
    assert p["attn.in_proj_weight"].shape == (3 * E, E)
    bound = math.sqrt(6 / (E + 3 * E))  # xavier_uniform over [3E, E]
    assert np.abs(p["attn.in_proj_weight"]).max() <= bound
    assert np.abs(p["attn.in_proj_weight"]).max() > bound * 0.8
    assert not p["attn.in_proj_bias"].any() and not p["attn.out_proj.bias"].any()
    assert np.abs(p["attn.out_proj.weight"]).max() <= 1 / math.sqrt(E)  # Linear's kaiming(a=√5)
    assert list(compile_model("MhaBool").state_dict()) == ["attn.in_proj_weight",
                                                           "attn.out_proj.weight"]


def test_fully_masked_query_is_nan_like_torch():
    m = compile_model("MhaCross")
    rng = np.random.default_rng(0)
    q, kv = rand(rng, 2, 3, E), rand(rng, 2, 5, E)
    kpm = np.zeros((2, 5), bool)
    kpm[1] = True
    out, w = m(q, kv, kv, kpm)
    assert np.isnan(out[1]).all() and np.isfinite(out[0]).all()
    assert np.isnan(w[1]).all()


# ---------------------------------------------------------------------------- encoder / decoder
@pytest.mark.filterwarnings("ignore::UserWarning")  # torch: mixed bool/float masks deprecated
@pytest.mark.parametrize("case", ENC_CASES, ids=[c[0] for c in ENC_CASES])
def test_encoder_layer_matches_torch(case):
    torch = torch_or_skip()
    _, name, kwargs, with_kpm, mask = case
    layer = randomize(torch.nn.TransformerEncoderLayer(E, H, 16, dropout=0.1, **kwargs),
                      torch).eval()
    m = compile_model(name)
    load_strict(m, layer, "layer.")
    bf = kwargs["batch_first"]
    for B, S in ((2, 4), (3, 6)):
        rng = np.random.default_rng(B)
        x = rand(rng, B, S, E) if bf else rand(rng, S, B, E)
        kpm = padding(B, S, rng) if with_kpm else None
        am = rand(rng, S, S) if mask == "float" else None
        torch_mask = causal_bool(S, torch) if mask == "causal" else (
            None if am is None else torch.from_numpy(am))
        want = layer(torch.from_numpy(x), src_mask=torch_mask,
                     src_key_padding_mask=None if kpm is None else torch.from_numpy(kpm))
        close(m(x, kpm, am), t2n(want))


@pytest.mark.filterwarnings("ignore::UserWarning")  # torch: mixed bool/float masks deprecated
@pytest.mark.parametrize("case", DEC_CASES, ids=[c[0] for c in DEC_CASES])
def test_decoder_layer_matches_torch(case):
    torch = torch_or_skip()
    _, name, kwargs, masks = case
    layer = randomize(torch.nn.TransformerDecoderLayer(E, H, 16, dropout=0.1, **kwargs),
                      torch).eval()
    m = compile_model(name)
    load_strict(m, layer, "layer.")
    bf = kwargs["batch_first"]
    for B, T, S in ((2, 3, 5), (3, 4, 2)):
        rng = np.random.default_rng(B)
        x = rand(rng, B, T, E) if bf else rand(rng, T, B, E)
        mem = rand(rng, B, S, E) if bf else rand(rng, S, B, E)
        tm = mm = tkpm = mkpm = None
        tgt_mask = None
        if masks:  # kiln: tgt_is_causal; torch: the causal mask plus the float mask given
            tm = rand(rng, T, T)
            mm = rng.random((T, S)) < 0.3
            mm[:, 0] = False
            tkpm, mkpm = padding(B, T, rng), padding(B, S, rng)
            tgt_mask = torch.from_numpy(tm).masked_fill(causal_bool(T, torch), float("-inf"))

        def opt(a):
            return None if a is None else torch.from_numpy(a)

        want = layer(torch.from_numpy(x), torch.from_numpy(mem), tgt_mask=tgt_mask,
                     memory_mask=opt(mm), tgt_key_padding_mask=opt(tkpm),
                     memory_key_padding_mask=opt(mkpm))
        close(m(x, mem, tm, mm, tkpm, mkpm), t2n(want))


def test_encoder_stack_matches_torch():
    torch = torch_or_skip()
    nn = torch.nn
    enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(8, 2, 16, batch_first=True,
                                                           norm_first=True), 2,
                                norm=nn.LayerNorm(8), enable_nested_tensor=False)
    randomize(enc, torch).eval()
    m = compile_model("EncStack")
    load_strict(m, enc, "enc.")
    assert "enc.layers.1.self_attn.in_proj_weight" in m.state_dict()
    for B, S in ((2, 4), (3, 5)):
        rng = np.random.default_rng(B)
        x, kpm = rand(rng, B, S, 8), padding(B, S, rng)
        close(m(x, kpm), t2n(enc(torch.from_numpy(x), src_key_padding_mask=torch.from_numpy(kpm))))
        close(m(x), t2n(enc(torch.from_numpy(x))))


def test_encoder_stack_without_norm_matches_torch():
    torch = torch_or_skip()
    nn = torch.nn
    enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(8, 2, 16, activation="gelu"), 3,
                                enable_nested_tensor=False)
    randomize(enc, torch).eval()
    m = compile_model("EncStackNoNorm")
    load_strict(m, enc, "enc.")
    for B, S in ((1, 3), (2, 5)):
        rng = np.random.default_rng(B)
        x, am = rand(rng, S, B, 8), rand(rng, S, S)
        close(m(x, am), t2n(enc(torch.from_numpy(x), mask=torch.from_numpy(am))))


def test_decoder_stack_matches_torch():
    torch = torch_or_skip()
    nn = torch.nn
    dec = nn.TransformerDecoder(nn.TransformerDecoderLayer(8, 2, 16, batch_first=True), 2,
                                norm=nn.LayerNorm(8))
    randomize(dec, torch).eval()
    m = compile_model("DecStack")
    load_strict(m, dec, "dec.")
    for B, T, S in ((2, 3, 4), (1, 5, 2)):
        rng = np.random.default_rng(B)
        x, mem, mkpm = rand(rng, B, T, 8), rand(rng, B, S, 8), padding(B, S, rng)
        want = dec(torch.from_numpy(x), torch.from_numpy(mem), tgt_mask=causal_bool(T, torch),
                   memory_key_padding_mask=torch.from_numpy(mkpm))
        close(m(x, mem, mkpm), t2n(want))


# ---------------------------------------------------------------------------- GPT-2
def torch_gpt2(torch):
    """A nanoGPT-style GPT-2 with Hugging Face's names and Conv1D [in, out] weights."""
    nn, F = torch.nn, torch.nn.functional

    class Conv1D(nn.Module):
        def __init__(self, nf, nx):
            super().__init__()
            self.weight = nn.Parameter(torch.randn(nx, nf) * 0.02)
            self.bias = nn.Parameter(torch.zeros(nf))

        def forward(self, x):
            return x @ self.weight + self.bias

    class Attention(nn.Module):
        def __init__(self, n_embd, n_head, block_size):
            super().__init__()
            self.n_head = n_head
            self.c_attn = Conv1D(3 * n_embd, n_embd)
            self.c_proj = Conv1D(n_embd, n_embd)
            mask = torch.tril(torch.ones(block_size, block_size, dtype=torch.bool))
            self.register_buffer("bias", mask.view(1, 1, block_size, block_size),
                                 persistent=False)

        def forward(self, x):
            B, T, C = x.shape
            q, k, v = self.c_attn(x).split(C, dim=2)
            q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
                       for t in (q, k, v))
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
            att = att.masked_fill(~self.bias[:, :, :T, :T], float("-inf")).softmax(dim=-1)
            return self.c_proj((att @ v).transpose(1, 2).reshape(B, T, C))

    class MLP(nn.Module):
        def __init__(self, n_embd):
            super().__init__()
            self.c_fc = Conv1D(4 * n_embd, n_embd)
            self.c_proj = Conv1D(n_embd, 4 * n_embd)

        def forward(self, x):
            return self.c_proj(F.gelu(self.c_fc(x), approximate="tanh"))

    class Block(nn.Module):
        def __init__(self, n_embd, n_head, block_size):
            super().__init__()
            self.ln_1 = nn.LayerNorm(n_embd)
            self.attn = Attention(n_embd, n_head, block_size)
            self.ln_2 = nn.LayerNorm(n_embd)
            self.mlp = MLP(n_embd)

        def forward(self, x):
            x = x + self.attn(self.ln_1(x))
            return x + self.mlp(self.ln_2(x))

    class GPT(nn.Module):
        def __init__(self, vocab_size, block_size, n_layer, n_head, n_embd):
            super().__init__()
            self.transformer = nn.ModuleDict(dict(
                wte=nn.Embedding(vocab_size, n_embd),
                wpe=nn.Embedding(block_size, n_embd),
                h=nn.ModuleList(Block(n_embd, n_head, block_size) for _ in range(n_layer)),
                ln_f=nn.LayerNorm(n_embd)))
            self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)
            self.lm_head.weight = self.transformer.wte.weight  # tied

        def forward(self, idx):
            t = self.transformer
            x = t.wte(idx) + t.wpe(torch.arange(idx.shape[1]))
            for block in t.h:
                x = block(x)
            return self.lm_head(t.ln_f(x))

    return Block, GPT


GPT_ARGS = {"vocab_size": 50, "block_size": 8, "n_layer": 2, "n_head": 2, "n_embd": 16}


@functools.cache
def stdlib_gpt_program():
    return kiln.load(STDLIB)


def compile_gpt(**kw):
    return kiln.compile(stdlib_gpt_program(), model="GPT", args=GPT_ARGS, **kw, target="reference")


def test_gpt_block_matches_torch():
    torch = torch_or_skip()
    Block, _ = torch_gpt2(torch)
    torch.manual_seed(0)
    blk = randomize(Block(16, 4, 8), torch, scale=0.3)
    m = compile_model("GptBlock")
    load_strict(m, blk, "blk.")
    assert "blk.attn.c_attn.weight" in m.state_dict()
    assert m.state_dict()["blk.attn.c_attn.weight"].shape == (16, 48)  # Conv1D: [in, out]
    assert "blk.attn.bias" not in m.state_dict()  # the causal mask is not persistent
    for B, T in ((1, 8), (3, 5)):
        x = rand(np.random.default_rng(T), B, T, 16)
        close(m(x), t2n(blk(torch.from_numpy(x))))


def test_gpt_matches_torch_and_loads_strictly():
    torch = torch_or_skip()
    _, GPT = torch_gpt2(torch)
    torch.manual_seed(0)
    ref = randomize(GPT(**GPT_ARGS), torch, scale=0.3)
    sd = state(ref)
    assert np.array_equal(sd["lm_head.weight"], sd["transformer.wte.weight"])
    m = compile_gpt()
    load_strict(m, ref)
    for B, T in ((1, 8), (2, 5)):
        idx = np.random.default_rng(T).integers(0, 50, (B, T))
        close(m(idx), t2n(ref(torch.from_numpy(idx))))


def test_gpt_tied_weights_load_from_either_key():
    torch = torch_or_skip()
    _, GPT = torch_gpt2(torch)
    torch.manual_seed(1)
    ref = randomize(GPT(**GPT_ARGS), torch, scale=0.3)
    idx = np.random.default_rng(0).integers(0, 50, (2, 6))
    want = t2n(ref(torch.from_numpy(idx)))
    for drop in ("lm_head.weight", "transformer.wte.weight"):
        m = compile_gpt()
        sd = state(ref)
        del sd[drop]
        m.load_weights(sd)  # strict: the tied tensor may come under either name
        close(m(idx), want)
        assert np.array_equal(m.state_dict()["lm_head.weight"],
                              m.state_dict()["transformer.wte.weight"])
    sd = state(ref)
    sd["lm_head.weight"] = sd["lm_head.weight"] + 1
    with pytest.raises(KilnError):  # both names given with different values
        compile_gpt().load_weights(sd)


def test_gpt_initialisation_is_gpt2s():
    args = dict(GPT_ARGS, n_embd=64, n_layer=3, vocab_size=200)
    p = kiln.compile(stdlib_gpt_program(), model="GPT", args=args, seed=3, target="reference").state_dict()
    resid = 0.02 / math.sqrt(2 * 3)
    for key, std in [("transformer.wte.weight", 0.02), ("transformer.wpe.weight", 0.02),
                     ("transformer.h.0.attn.c_attn.weight", 0.02),
                     ("transformer.h.2.mlp.c_fc.weight", 0.02),
                     ("transformer.h.0.attn.c_proj.weight", resid),
                     ("transformer.h.1.mlp.c_proj.weight", resid)]:
        assert abs(p[key].std() / std - 1) < 0.1, (key, p[key].std())
        assert abs(p[key].mean()) < std * 0.1
    assert not p["transformer.h.0.attn.c_attn.bias"].any()
    assert (p["transformer.h.1.ln_2.weight"] == 1).all() and not p["transformer.ln_f.bias"].any()
    assert np.array_equal(p["lm_head.weight"], p["transformer.wte.weight"])
    assert "transformer.h.0.attn.bias" not in p


def test_gpt_rejects_a_sequence_longer_than_block_size():
    m = compile_gpt()
    m(np.zeros((1, 8), np.int64))
    with pytest.raises(KilnError) as err:
        m(np.zeros((1, 9), np.int64))
    assert err.value.code == "K0504"


# ---------------------------------------------------------------------------- positions, patches
def sinusoid(T, d):
    """pe[t, 2i] = sin(t / 10000^(2i/d)), pe[t, 2i + 1] = cos(t / 10000^(2i/d)), in float64."""
    pe = np.zeros((T, d))
    t = np.arange(T)[:, None]
    i = np.arange(0, d, 2)[None, :]
    pe[:, 0::2] = np.sin(t / 10000 ** (i / d))
    pe[:, 1::2] = np.cos(t / 10000 ** (i / d))
    return pe


def test_positional_encodings_match_the_formula():
    m = compile_model("Positions")
    sd = m.state_dict()
    assert set(sd) == {"learned.weight", "learned_sf.weight"}  # pe is not persistent
    rng = np.random.default_rng(0)
    sd = {k: rand(rng, *v.shape) for k, v in sd.items()}
    m.load_weights(sd)
    for B, T in ((1, 3), (2, 12)):
        x, y = rand(rng, B, T, 6), rand(rng, T, B, 6)
        sin_bf, sin_sf, learned, learned_sf = m(x, y)
        close(sin_bf, x + sinusoid(T, 6)[None])
        close(sin_sf, y + sinusoid(T, 6)[:, None])
        close(learned, x + sd["learned.weight"][None, :T])
        close(learned_sf, y + sd["learned_sf.weight"][:T, None])
    with pytest.raises(KilnError) as err:  # sin_sf and the learned tables hold 12 positions
        m(rand(rng, 1, 13, 6), rand(rng, 13, 1, 6))
    assert err.value.code == "K0504"


def test_sinusoidal_table_matches_pytorch_tutorial():
    torch = torch_or_skip()
    d, max_len = 16, 64
    position = torch.arange(max_len).unsqueeze(1)
    div_term = torch.exp(torch.arange(0, d, 2) * (-math.log(10000.0) / d))
    pe = torch.zeros(max_len, d)
    pe[:, 0::2] = torch.sin(position * div_term)
    pe[:, 1::2] = torch.cos(position * div_term)
    src = ("import std.transformer as tr\nmodel P {\n  pos = tr.SinusoidalPositionalEncoding(16, 64)\n"
           "  forward(x: f32[B, T, 16]) -> f32[B, T, 16] { return pos(x) }\n}\n")
    m = kiln.compile(src, target="reference")
    close(m(np.zeros((1, max_len, d), np.float32)), t2n(pe)[None])


def test_patch_embedding_matches_torch():
    torch = torch_or_skip()
    conv = randomize(torch.nn.Conv2d(3, 16, 4, stride=4), torch)
    m = compile_model("Patches")
    load_strict(m, conv, "patch.proj.")
    for B in (1, 3):
        x = rand(np.random.default_rng(B), B, 3, 8, 12)
        want = conv(torch.from_numpy(x)).flatten(2).transpose(1, 2)
        close(m(x), t2n(want))


@pytest.mark.parametrize("name, cls", [("Vit", True), ("VitNoCls", False)])
def test_vit_embedding_matches_torch(name, cls):
    torch = torch_or_skip()
    patch = [2, 4] if cls else [4, 4]
    n = (8 // patch[0]) * (8 // patch[1])

    class Embed(torch.nn.Module):  # timm's VisionTransformer: patch_embed, cls_token, pos_embed
        def __init__(self):
            super().__init__()
            self.patch_embed = torch.nn.Module()
            self.patch_embed.proj = torch.nn.Conv2d(3, 16, patch, stride=patch)
            if cls:
                self.cls_token = torch.nn.Parameter(torch.zeros(1, 1, 16))
            self.pos_embed = torch.nn.Parameter(torch.zeros(1, n + cls, 16))

        def forward(self, x):
            x = self.patch_embed.proj(x).flatten(2).transpose(1, 2)
            if cls:
                x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
            return x + self.pos_embed

    ref = randomize(Embed(), torch)
    m = compile_model(name)
    load_strict(m, ref, "vit.")
    for B in (1, 2):
        x = rand(np.random.default_rng(B), B, 3, 8, 8)
        close(m(x), t2n(ref(torch.from_numpy(x))))


def test_vit_embedding_initialisation():
    p = compile_model("Vit", seed=1).state_dict()
    assert p["vit.pos_embed"].shape == (1, 9, 16)
    assert abs(p["vit.pos_embed"].std() / 0.02 - 1) < 0.25
    assert np.abs(p["vit.cls_token"]).max() < 1e-5


# ---------------------------------------------------------------------------- errors
BAD = [
    ("tr.MultiheadAttention(10, 3)", "f32[L, B, 10]", "embed_dim must be divisible by num_heads"),
    ('tr.TransformerEncoderLayer(8, 2, activation = "tanh")', "f32[L, B, 8]",
     "activation must be relu or gelu"),
    ("tr.SinusoidalPositionalEncoding(7)", "f32[B, T, 7]", "needs an even d_model"),
    ("tr.PatchEmbedding(10, 4)", "f32[B, 3, 10, 10]", "divisible by patch_size"),
    ("tr.GPTBlock(10, 4, 8)", "f32[B, T, 10]", "n_embd must be divisible by n_head"),
    ("tr.GPTBlock(8, 2, 4)", "f32[B, 6, 8]", "K0205"),  # T = 6 > block_size, known when compiling
]


@pytest.mark.parametrize("expr, in_type, message", BAD, ids=[b[0] for b in BAD])
def test_invalid_arguments_fail_at_compile_time(expr, in_type, message):
    src = (f"import std.transformer as tr\nmodel M {{\n  forward(x: {in_type}) {{\n"
           f"    return x |> {expr}\n  }}\n}}\n")
    if "MultiheadAttention" in expr:
        src = src.replace("return x |> " + expr, f"a, w = {expr}(x, x, x)\n    return a")
    with pytest.raises(KilnError) as err:
        kiln.compile(src, target="reference")
    assert message in str(err.value)


# ---------------------------------------------------------------------------- examples
def test_classifier_example_matches_torch():
    torch = torch_or_skip()
    nn = torch.nn

    class PositionalEncoding(nn.Module):
        def __init__(self, d, max_len):
            super().__init__()
            self.register_buffer("pe", torch.from_numpy(sinusoid(max_len, d)).float(),
                                 persistent=False)

        def forward(self, x):
            return x + self.pe[: x.shape[1]]

    class Classifier(nn.Module):
        def __init__(self):
            super().__init__()
            self.embedding = nn.Embedding(1000, 64)
            self.pos_encoder = PositionalEncoding(64, 512)
            self.encoder = nn.TransformerEncoder(
                nn.TransformerEncoderLayer(64, 4, 128, batch_first=True), 2,
                enable_nested_tensor=False)
            self.classifier = nn.Linear(64, 4)

        def forward(self, tokens, pad=None):
            x = self.pos_encoder(self.embedding(tokens) * math.sqrt(64))
            x = self.encoder(x, src_key_padding_mask=pad)
            if pad is None:
                return self.classifier(x.mean(dim=1))
            keep = (~pad).float().unsqueeze(-1)
            return self.classifier((x * keep).sum(dim=1) / keep.sum(dim=1))

    ref = randomize(Classifier(), torch, scale=0.2).eval()
    m = kiln.compile(EXAMPLES / "transformer_classifier.kiln", target="reference")
    load_strict(m, ref)
    for B, T in ((1, 5), (3, 9)):
        rng = np.random.default_rng(T)
        tokens = rng.integers(0, 1000, (B, T))
        pad = padding(B, T, rng)
        close(m(tokens), t2n(ref(torch.from_numpy(tokens))))
        close(m(tokens, pad), t2n(ref(torch.from_numpy(tokens), torch.from_numpy(pad))))


def test_classifier_example_drops_the_mask_of_an_all_padding_sequence():
    m = kiln.compile(EXAMPLES / "transformer_classifier.kiln", target="reference")
    tokens = np.random.default_rng(0).integers(0, 1000, (2, 4))
    pad = np.array([[True] * 4, [False, False, True, True]])
    y = m(tokens, pad)
    assert np.isfinite(y).all()
    close(y[:1], m(tokens[:1]))


def test_gpt_example_matches_torch():
    torch = torch_or_skip()
    _, GPT = torch_gpt2(torch)
    torch.manual_seed(0)
    ref = randomize(GPT(1000, 64, 2, 2, 64), torch, scale=0.2)
    m = kiln.compile(EXAMPLES / "gpt.kiln", target="reference")
    load_strict(m, ref)
    for B, T in ((1, 7), (2, 64)):
        idx = np.random.default_rng(T).integers(0, 1000, (B, T))
        close(m(idx), t2n(ref(torch.from_numpy(idx))))


def test_gpt_example_is_the_stdlib_gpt():
    """examples/gpt.kiln spells out std.transformer's GPT: same names, shapes and initial values."""
    args = {"vocab_size": 1000, "block_size": 64, "n_layer": 2, "n_head": 2, "n_embd": 64}
    lib = kiln.compile(stdlib_gpt_program(), model="GPT", args=args, target="reference").state_dict()
    ex = kiln.compile(EXAMPLES / "gpt.kiln", target="reference").state_dict()
    assert list(lib) == list(ex)
    for k in lib:
        np.testing.assert_array_equal(lib[k], ex[k])


# ONNX: onnxruntime's kernels sum in another order than numpy's, so f32 results differ in the
# last bits; after two attention layers 1e-4 relative (1e-5 absolute) still catches any wrong
# axis, mask or epsilon (those are off by far more)
ONNX_RTOL, ONNX_ATOL = 1e-4, 1e-5


@pytest.mark.parametrize("example", ["transformer_classifier", "gpt"])
def test_onnx_target_agrees_with_the_reference(example):
    pytest.importorskip("onnxruntime")
    path = EXAMPLES / f"{example}.kiln"
    ref = oracle(path)
    ort = kiln.compile(path, target="onnx")
    for B, T in ((1, 3), (3, 10)):
        rng = np.random.default_rng(B * T)
        tokens = rng.integers(0, 1000, (B, T))
        feeds = [(tokens,)]
        if example == "transformer_classifier":
            feeds.append((tokens, padding(B, T, rng)))
        for args in feeds:
            np.testing.assert_allclose(ort(*args), ref(*args), rtol=ONNX_RTOL, atol=ONNX_ATOL)


# ---------------------------------------------------------------------------- -O0 vs -O1
# every test model, on the reference (the examples' sweep runs an encoder and GPT natively)
@pytest.mark.parametrize("name", sorted(MODELS))
def test_optimized_targets_match_the_unoptimized_reference(name):
    check_opt_levels(program(), name, targets=REFERENCE)


def test_gpt_optimized_targets_match_the_unoptimized_reference():
    check_opt_levels(stdlib_gpt_program(), "GPT", args=GPT_ARGS, sizes={"T": 5},
                     targets=REFERENCE)
