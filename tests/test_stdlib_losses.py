"""std.losses and std.metrics against numpy formulas (always) and torch.nn.functional (when
torch is installed).

Every loss is checked with each reduction, with and without weights, ignore_index and label
smoothing, at two batch sizes. The numpy references are written from the formulas in PyTorch's
documentation, in float64 and in a different form from the kiln code (per-sample loops,
np.logaddexp for the logistic losses); the metrics are checked against hand-computed confusion
matrices and a numpy one.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
from _crosscheck import REFERENCE, check_opt_levels

import kiln
from kiln import KilnError

RTOL = ATOL = 1e-5  # f32 against float64
SIZES = [4, 7]
C, D = 5, 3

# ---------------------------------------------------------------------------- inputs
SIGNATURES = {
    "reg": "x: f32[N, D], y: f32[N, D]",
    "cls": "x: f32[N, C], t: i64[N], w: f32[C]",
    "clsk": "x: f32[N, C, D], t: i64[N, D], w: f32[C]",
    "prob": "x: f32[N, C], p: f32[N, C], w: f32[C]",
    "bin": "p: f32[N, D], y: f32[N, D], w: f32[D]",
    "logit": "x: f32[N, D], y: f32[N, D], w: f32[D], pw: f32[D]",
    "pen": "a: f32[3, 4], b: f32[N]",
}


def f32(a):
    return np.asarray(a, np.float32)


def softmax(x, axis=1):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def inputs(kind: str, n: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(n)
    if kind == "reg":
        return {"x": f32(rng.standard_normal((n, D)) * 2), "y": f32(rng.standard_normal((n, D)))}
    if kind in ("cls", "clsk"):
        shape = (n, C) if kind == "cls" else (n, C, D)
        t = rng.integers(0, C, shape[:1] + shape[2:])
        t.flat[1] = -100  # PyTorch's default ignore_index
        t.flat[2] = 2
        return {"x": f32(rng.standard_normal(shape) * 2), "t": t,
                "w": f32(rng.uniform(0.2, 2.0, C))}
    if kind == "prob":
        return {"x": f32(rng.standard_normal((n, C)) * 2),
                "p": f32(softmax(rng.standard_normal((n, C)))), "w": f32(rng.uniform(0.2, 2, C))}
    if kind == "bin":
        p = rng.uniform(0.01, 0.99, (n, D))
        p[0, 0], p[1, 1] = 0.0, 1.0  # log(0): PyTorch clamps the log at -100
        return {"p": f32(p), "y": f32(rng.uniform(0, 1, (n, D))), "w": f32(rng.uniform(0.5, 2, D))}
    if kind == "logit":
        x = rng.standard_normal((n, D)) * 3
        x[0, 0], x[1, 1] = 100.0, -100.0  # the stable form must not overflow
        return {"x": f32(x), "y": f32(rng.uniform(0, 1, (n, D))), "w": f32(rng.uniform(0.5, 2, D)),
                "pw": f32(rng.uniform(0.5, 3, D))}
    return {"a": f32(rng.standard_normal((3, 4))), "b": f32(rng.standard_normal(n))}


# ---------------------------------------------------------------------------- numpy references
def reduce(loss, reduction):
    return {"mean": np.mean, "sum": np.sum, "none": lambda v: v}[reduction](loss)


def np_cross_entropy(x, t, w=None, ignore_index=-100, reduction="mean", label_smoothing=0.0):
    """PyTorch's documented formula, one sample (and position) at a time."""
    x = np.moveaxis(x.astype(np.float64), 1, -1)  # [..., C]
    C = x.shape[-1]
    w = np.ones(C) if w is None else w.astype(np.float64)
    logp = x - np.log(np.exp(x - x.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
        - x.max(-1, keepdims=True)
    if t.dtype.kind == "f":  # class probabilities
        t = np.moveaxis(t.astype(np.float64), 1, -1) * (1 - label_smoothing) + label_smoothing / C
        return reduce(-(logp * t * w).sum(-1), reduction)
    loss = np.zeros(t.shape)
    total = 0.0
    for i in np.ndindex(t.shape):
        if t[i] == ignore_index:
            continue
        nll = -w[t[i]] * logp[i][t[i]]
        smooth = -(w * logp[i]).sum()
        loss[i] = (1 - label_smoothing) * nll + label_smoothing / C * smooth
        total += w[t[i]]
    if reduction == "mean":
        return loss.sum() / total
    return reduce(loss, reduction)


def np_nll(logp, t, w=None, ignore_index=-100, reduction="mean"):
    logp = np.moveaxis(logp.astype(np.float64), 1, -1)
    w = np.ones(logp.shape[-1]) if w is None else w.astype(np.float64)
    loss, total = np.zeros(t.shape), 0.0
    for i in np.ndindex(t.shape):
        if t[i] != ignore_index:
            loss[i] = -w[t[i]] * logp[i][t[i]]
            total += w[t[i]]
    return loss.sum() / total if reduction == "mean" else reduce(loss, reduction)


def np_log_softmax(x):
    x = x.astype(np.float64)
    return x - np.log(np.exp(x).sum(axis=1, keepdims=True))


def np_bce(p, y, w=None, reduction="mean"):
    p, y = p.astype(np.float64), y.astype(np.float64)
    with np.errstate(divide="ignore"):
        loss = -(y * np.maximum(np.log(p), -100) + (1 - y) * np.maximum(np.log(1 - p), -100))
    return reduce(loss if w is None else loss * w, reduction)


def np_bce_logits(x, y, w=None, pw=None, reduction="mean"):
    """-(pw y log(sigmoid(x)) + (1 - y) log(1 - sigmoid(x))), the logs via np.logaddexp."""
    x, y = x.astype(np.float64), y.astype(np.float64)
    log_sig, log_one_minus = -np.logaddexp(0, -x), -np.logaddexp(0, x)
    loss = -((1 if pw is None else pw) * y * log_sig + (1 - y) * log_one_minus)
    return reduce(loss if w is None else loss * w, reduction)


def np_smooth_l1(x, y, reduction="mean", beta=1.0):
    d = np.abs(x.astype(np.float64) - y)
    loss = d if beta == 0 else np.where(d < beta, 0.5 * d ** 2 / beta, d - 0.5 * beta)
    return reduce(loss, reduction)


def np_huber(x, y, reduction="mean", delta=1.0):
    d = np.abs(x.astype(np.float64) - y)
    return reduce(np.where(d < delta, 0.5 * d ** 2, delta * (d - 0.5 * delta)), reduction)


def d64(v):
    return v.astype(np.float64)


# ---------------------------------------------------------------------------- cases
# (id, input kind, kiln expression, numpy reference, torch reference as source over F and the
# torch inputs; None where torch has no such function)
CASES = [
    ("mse", "reg", "L.mse_loss(x, y)", lambda i: np.mean((d64(i["x"]) - i["y"]) ** 2),
     "F.mse_loss(x, y)"),
    ("mse_sum", "reg", 'L.mse_loss(x, y, "sum")', lambda i: np.sum((d64(i["x"]) - i["y"]) ** 2),
     "F.mse_loss(x, y, reduction='sum')"),
    ("mse_none", "reg", 'L.mse_loss(x, y, reduction = "none")',
     lambda i: (d64(i["x"]) - i["y"]) ** 2, "F.mse_loss(x, y, reduction='none')"),
    ("l1", "reg", "L.l1_loss(x, y)", lambda i: np.mean(np.abs(d64(i["x"]) - i["y"])),
     "F.l1_loss(x, y)"),
    ("l1_sum", "reg", 'L.l1_loss(x, y, "sum")', lambda i: np.sum(np.abs(d64(i["x"]) - i["y"])),
     "F.l1_loss(x, y, reduction='sum')"),
    ("l1_none", "reg", 'L.l1_loss(x, y, "none")', lambda i: np.abs(d64(i["x"]) - i["y"]),
     "F.l1_loss(x, y, reduction='none')"),
    ("smooth_l1", "reg", "L.smooth_l1_loss(x, y)", lambda i: np_smooth_l1(i["x"], i["y"]),
     "F.smooth_l1_loss(x, y)"),
    ("smooth_l1_beta", "reg", 'L.smooth_l1_loss(x, y, "sum", beta = 0.5)',
     lambda i: np_smooth_l1(i["x"], i["y"], "sum", 0.5),
     "F.smooth_l1_loss(x, y, reduction='sum', beta=0.5)"),
    ("smooth_l1_beta0", "reg", 'L.smooth_l1_loss(x, y, "none", 0.0)',
     lambda i: np_smooth_l1(i["x"], i["y"], "none", 0.0),
     "F.smooth_l1_loss(x, y, reduction='none', beta=0.0)"),
    ("huber", "reg", "L.huber_loss(x, y)", lambda i: np_huber(i["x"], i["y"]),
     "F.huber_loss(x, y)"),
    ("huber_delta", "reg", 'L.huber_loss(x, y, "none", delta = 2.0)',
     lambda i: np_huber(i["x"], i["y"], "none", 2.0),
     "F.huber_loss(x, y, reduction='none', delta=2.0)"),
    # cross entropy over class indices (t holds -100 = ignored, and class 2)
    ("ce", "cls", "L.cross_entropy(x, t)", lambda i: np_cross_entropy(i["x"], i["t"]),
     "F.cross_entropy(x, t)"),
    ("ce_sum", "cls", 'L.cross_entropy(x, t, reduction = "sum")',
     lambda i: np_cross_entropy(i["x"], i["t"], reduction="sum"),
     "F.cross_entropy(x, t, reduction='sum')"),
    ("ce_none", "cls", 'L.cross_entropy(x, t, reduction = "none")',
     lambda i: np_cross_entropy(i["x"], i["t"], reduction="none"),
     "F.cross_entropy(x, t, reduction='none')"),
    ("ce_weight", "cls", "L.cross_entropy(x, t, w)",
     lambda i: np_cross_entropy(i["x"], i["t"], i["w"]), "F.cross_entropy(x, t, w)"),
    ("ce_ignore_index", "cls", "L.cross_entropy(x, maximum(t, 0), w, ignore_index = 2)",
     lambda i: np_cross_entropy(i["x"], np.where(i["t"] < 0, 0, i["t"]), i["w"], 2),
     "F.cross_entropy(x, t.clamp(min=0), w, ignore_index=2)"),
    ("ce_smooth", "cls", "L.cross_entropy(x, t, label_smoothing = 0.1)",
     lambda i: np_cross_entropy(i["x"], i["t"], label_smoothing=0.1),
     "F.cross_entropy(x, t, label_smoothing=0.1)"),
    ("ce_smooth_weight", "cls", "L.cross_entropy(x, t, w, label_smoothing = 0.3)",
     lambda i: np_cross_entropy(i["x"], i["t"], i["w"], label_smoothing=0.3),
     "F.cross_entropy(x, t, w, label_smoothing=0.3)"),
    ("ce_smooth_weight_sum", "cls",
     'L.cross_entropy(x, t, w, reduction = "sum", label_smoothing = 0.2)',
     lambda i: np_cross_entropy(i["x"], i["t"], i["w"], reduction="sum", label_smoothing=0.2),
     "F.cross_entropy(x, t, w, reduction='sum', label_smoothing=0.2)"),
    ("ce_smooth_none", "cls", 'L.cross_entropy(x, t, reduction = "none", label_smoothing = 0.2)',
     lambda i: np_cross_entropy(i["x"], i["t"], reduction="none", label_smoothing=0.2),
     "F.cross_entropy(x, t, reduction='none', label_smoothing=0.2)"),
    ("ce_smooth_ignore", "cls",
     "L.cross_entropy(x, maximum(t, 0), w, ignore_index = 2, label_smoothing = 0.1)",
     lambda i: np_cross_entropy(np.asarray(i["x"]), np.where(i["t"] < 0, 0, i["t"]), i["w"], 2,
                                label_smoothing=0.1),
     "F.cross_entropy(x, t.clamp(min=0), w, ignore_index=2, label_smoothing=0.1)"),
    ("ce_kdim", "clsk", "L.cross_entropy(x, t)", lambda i: np_cross_entropy(i["x"], i["t"]),
     "F.cross_entropy(x, t)"),
    ("ce_kdim_smooth_weight", "clsk", "L.cross_entropy(x, t, w, label_smoothing = 0.1)",
     lambda i: np_cross_entropy(i["x"], i["t"], i["w"], label_smoothing=0.1),
     "F.cross_entropy(x, t, w, label_smoothing=0.1)"),
    ("ce_kdim_none", "clsk", 'L.cross_entropy(x, t, w, reduction = "none")',
     lambda i: np_cross_entropy(i["x"], i["t"], i["w"], reduction="none"),
     "F.cross_entropy(x, t, w, reduction='none')"),
    # cross entropy over class probabilities
    ("ce_prob", "prob", "L.cross_entropy(x, p)", lambda i: np_cross_entropy(i["x"], i["p"]),
     "F.cross_entropy(x, p)"),
    ("ce_prob_weight_smooth", "prob", "L.cross_entropy(x, p, w, label_smoothing = 0.2)",
     lambda i: np_cross_entropy(i["x"], i["p"], i["w"], label_smoothing=0.2),
     "F.cross_entropy(x, p, w, label_smoothing=0.2)"),
    ("ce_prob_none", "prob", 'L.cross_entropy(x, p, w, reduction = "none")',
     lambda i: np_cross_entropy(i["x"], i["p"], i["w"], reduction="none"),
     "F.cross_entropy(x, p, w, reduction='none')"),
    # nll of log-probabilities
    ("nll", "cls", "L.nll_loss(log_softmax(x, axis = 1), t)",
     lambda i: np_nll(np_log_softmax(i["x"]), i["t"]), "F.nll_loss(F.log_softmax(x, 1), t)"),
    ("nll_weight", "cls", "L.nll_loss(log_softmax(x, axis = 1), t, w)",
     lambda i: np_nll(np_log_softmax(i["x"]), i["t"], i["w"]),
     "F.nll_loss(F.log_softmax(x, 1), t, w)"),
    ("nll_sum_ignore", "cls",
     'L.nll_loss(log_softmax(x, axis = 1), maximum(t, 0), w, ignore_index = 2, reduction = "sum")',
     lambda i: np_nll(np_log_softmax(i["x"]), np.where(i["t"] < 0, 0, i["t"]), i["w"], 2, "sum"),
     "F.nll_loss(F.log_softmax(x, 1), t.clamp(min=0), w, ignore_index=2, reduction='sum')"),
    ("nll_none", "cls", 'L.nll_loss(log_softmax(x, axis = 1), t, reduction = "none")',
     lambda i: np_nll(np_log_softmax(i["x"]), i["t"], reduction="none"),
     "F.nll_loss(F.log_softmax(x, 1), t, reduction='none')"),
    ("nll_kdim", "clsk", "L.nll_loss(log_softmax(x, axis = 1), t, w)",
     lambda i: np_nll(np_log_softmax(i["x"]), i["t"], i["w"]),
     "F.nll_loss(F.log_softmax(x, 1), t, w)"),
    # binary cross entropy
    ("bce", "bin", "L.binary_cross_entropy(p, y)", lambda i: np_bce(i["p"], i["y"]),
     "F.binary_cross_entropy(p, y)"),
    ("bce_weight_sum", "bin", 'L.binary_cross_entropy(p, y, w, "sum")',
     lambda i: np_bce(i["p"], i["y"], i["w"], "sum"),
     "F.binary_cross_entropy(p, y, w.expand_as(p), reduction='sum')"),
    ("bce_none", "bin", 'L.binary_cross_entropy(p, y, reduction = "none")',
     lambda i: np_bce(i["p"], i["y"], reduction="none"),
     "F.binary_cross_entropy(p, y, reduction='none')"),
    ("bce_logits", "logit", "L.binary_cross_entropy_with_logits(x, y)",
     lambda i: np_bce_logits(i["x"], i["y"]), "F.binary_cross_entropy_with_logits(x, y)"),
    ("bce_logits_pos_weight", "logit", "L.binary_cross_entropy_with_logits(x, y, pos_weight = pw)",
     lambda i: np_bce_logits(i["x"], i["y"], pw=i["pw"]),
     "F.binary_cross_entropy_with_logits(x, y, pos_weight=pw)"),
    ("bce_logits_weight_none", "logit",
     'L.binary_cross_entropy_with_logits(x, y, w, "none", pw)',
     lambda i: np_bce_logits(i["x"], i["y"], i["w"], i["pw"], "none"),
     "F.binary_cross_entropy_with_logits(x, y, w, reduction='none', pos_weight=pw)"),
    ("bce_logits_sum", "logit", 'L.binary_cross_entropy_with_logits(x, y, w, reduction = "sum")',
     lambda i: np_bce_logits(i["x"], i["y"], i["w"], reduction="sum"),
     "F.binary_cross_entropy_with_logits(x, y, w, reduction='sum')"),
    # penalties
    ("l1_penalty", "pen", "L.l1_penalty([a, b])",
     lambda i: np.abs(d64(i["a"])).sum() + np.abs(d64(i["b"])).sum(),
     "a.abs().sum() + b.abs().sum()"),
    ("l1_penalty_one", "pen", "L.l1_penalty(a)", lambda i: np.abs(d64(i["a"])).sum(),
     "a.abs().sum()"),
    ("l2_penalty", "pen", "L.l2_penalty([a, b, a])",
     lambda i: 2 * (d64(i["a"]) ** 2).sum() + (d64(i["b"]) ** 2).sum(),
     "2 * a.pow(2).sum() + b.pow(2).sum()"),
]
IDS = [c[0] for c in CASES]


@functools.cache
def program():
    models = "".join(
        f"model M_{name} {{\n  forward({SIGNATURES[kind]}) {{\n    return {expr}\n  }}\n}}\n"
        for name, kind, expr, _, _ in CASES
    )
    return kiln.load(f"import std.losses as L\nconst C = {C}\nconst D = {D}\n" + models)


def compiled(name):
    return kiln.compile(program(), model=f"M_{name}", target="reference")


def check(got, want):
    want = np.asarray(want)
    assert got.dtype == np.float32 and got.shape == want.shape, (got.dtype, got.shape, want.shape)
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_loss_matches_numpy_formula(case):
    name, kind, _, ref, _ = case
    m = compiled(name)
    for n in SIZES:
        feeds = inputs(kind, n)
        check(m(**feeds), ref(feeds))


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_loss_matches_torch(case):
    torch = pytest.importorskip("torch")
    name, kind, _, _, torch_src = case
    m = compiled(name)
    for n in SIZES:
        feeds = inputs(kind, n)
        env = {k: torch.from_numpy(v) for k, v in feeds.items()}
        want = eval(torch_src, {"F": torch.nn.functional, **env})
        check(m(**feeds), want.numpy())


def test_reduced_losses_are_f32_scalars():
    for name in ("ce", "bce_logits", "l2_penalty", "mse"):
        kind = next(c[1] for c in CASES if c[0] == name)
        m = compiled(name)
        assert m.outputs[0].type.shape == () or len(m.outputs[0].type.shape) == 0
        assert m(**inputs(kind, 4)).shape == ()


def test_all_targets_ignored_gives_nan_like_torch():
    m = compiled("ce")
    feeds = inputs("cls", 4)
    feeds["t"][:] = -100
    assert np.isnan(m(**feeds))


def test_bce_clamps_the_log_at_minus_100():
    m = compiled("bce_none")
    p = f32([[0.0, 1.0, 0.5]] * 2)
    y = f32([[1.0, 0.0, 1.0]] * 2)
    np.testing.assert_allclose(m(p, y, f32([1, 1, 1])), [[100, 100, np.log(2)]] * 2, rtol=1e-6)


BAD_LOSSES = [
    ('L.mse_loss(x, y, "avg")', "reg", "reduction must be"),
    ("L.cross_entropy(x, t, label_smoothing = 1.5)", "cls", "label_smoothing must be in [0, 1]"),
    ("L.nll_loss(x, t[0])", "cls", "nll_loss: input must be [N, C, ...] and target [N, ...]"),
    ("L.nll_loss(x, w)", "cls", "nll_loss: target must hold class indices"),
    ("L.smooth_l1_loss(x, y, beta = -1.0)", "reg", "beta must be non-negative"),
]


@pytest.mark.parametrize("expr, kind, message", BAD_LOSSES, ids=[b[0] for b in BAD_LOSSES])
def test_bad_loss_arguments_fail_at_compile_time(expr, kind, message):
    src = (f"import std.losses as L\nconst C = {C}\nconst D = {D}\nmodel M {{\n"
           f"  forward({SIGNATURES[kind]}) {{\n    return {expr}\n  }}\n}}\n")
    with pytest.raises(KilnError) as err:
        kiln.compile(src, target="reference")
    assert message in str(err.value)


# ---------------------------------------------------------------------------- metrics
METRIC_MODELS = {
    # labels [N] against targets [N], num_classes 4 and 5
    "labels4": ("p: i64[N], t: i64[N]", 4),
    "labels5": ("p: i64[N], t: i64[N]", 5),
    # scores [N, C] (argmax on axis 1) against targets [N]
    "scores": ("p: f32[N, 4], t: i64[N]", 4),
    # scores [N, C, K] against targets [N, K]
    "scores_k": ("p: f32[N, 4, K], t: i64[N, K]", 4),
}


def metric_source() -> str:
    out = ["import std.metrics as Mt\n"]
    for name, (sig, nc) in METRIC_MODELS.items():
        out.append(
            f"model {name} {{\n  forward({sig}) {{\n"
            f"    return Mt.accuracy(p, t), Mt.precision(p, t, {nc}), Mt.recall(p, t, {nc}), "
            f"Mt.f1(p, t, {nc}), Mt.precision(p, t, {nc}, \"none\"), Mt.recall(p, t, {nc}, \"none\"), "
            f"Mt.f1(p, t, {nc}, \"none\"), Mt.precision(p, t, {nc}, \"micro\"), "
            f"Mt.recall(p, t, {nc}, \"micro\"), Mt.f1(p, t, {nc}, \"micro\"), "
            f"Mt.confusion_matrix(p, t, {nc})\n  }}\n}}\n")
    out.append(
        "model binary {\n  forward(p: f32[N], t: bool[N], l: bool[N]) {\n"
        "    return Mt.accuracy(p, t), Mt.precision(p, t), Mt.recall(p, t), Mt.f1(p, t), "
        "Mt.precision(p, t, threshold = 0.0), Mt.accuracy(l, t), Mt.f1(l, t), Mt.recall(l, t)\n"
        "  }\n}\n")
    return "".join(out)


@functools.cache
def metric_program():
    return kiln.load(metric_source())


def metrics_of(name):
    return kiln.compile(metric_program(), model=name, target="reference")


def np_metrics(pred, target, nc):
    """sklearn's definitions (labels=range(nc), zero_division=0) from a confusion matrix."""
    cm = np.zeros((nc, nc), np.int64)
    for t, p in zip(target.ravel(), pred.ravel()):
        cm[t, p] += 1
    tp = np.diag(cm).astype(np.float64)
    pp, ap = cm.sum(axis=0), cm.sum(axis=1)
    prec = np.where(pp > 0, tp / np.maximum(pp, 1), 0.0)
    rec = np.where(ap > 0, tp / np.maximum(ap, 1), 0.0)
    f1 = np.where(pp + ap > 0, 2 * tp / np.maximum(pp + ap, 1), 0.0)
    micro = tp.sum() / cm.sum()
    return (micro, prec.mean(), rec.mean(), f1.mean(), prec, rec, f1, micro, micro, micro, cm)


def check_metrics(got, want):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        w = np.asarray(w)
        assert g.shape == w.shape, (g.shape, w.shape)
        if w.dtype.kind == "i":
            assert g.dtype == np.int64
            np.testing.assert_array_equal(g, w)
        else:
            assert g.dtype == np.float32
            np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-7)


def test_metrics_by_hand():
    pred = np.array([0, 1, 1, 1, 2, 0, 3])
    target = np.array([0, 1, 2, 1, 2, 2, 0])
    # per class (tp, predicted, actual): 0: (1, 2, 2), 1: (2, 3, 2), 2: (1, 1, 3), 3: (0, 1, 0)
    prec = [1 / 2, 2 / 3, 1, 0]           # class 3 is predicted once, wrongly
    rec = [1 / 2, 1, 1 / 3, 0]            # class 3 never occurs: 0 / 0 counts as 0
    f1 = [1 / 2, 4 / 5, 1 / 2, 0]
    cm = [[1, 0, 0, 1], [0, 2, 0, 0], [1, 1, 1, 0], [0, 0, 0, 0]]
    check_metrics(metrics_of("labels4")(pred, target),
                  (4 / 7, 13 / 24, 11 / 24, 0.45, prec, rec, f1, 4 / 7, 4 / 7, 4 / 7, cm))
    # a fifth class that is neither predicted nor present scores 0 and still counts in the mean
    got = metrics_of("labels5")(pred, target)
    np.testing.assert_allclose(got[1:4], [13 / 30, 11 / 30, 0.36], rtol=1e-6)
    np.testing.assert_allclose(got[6], f1 + [0], rtol=1e-6)


def test_binary_metrics_by_hand():
    p = f32([0.9, 0.2, 0.7, 0.4, -0.1, 0.6])   # > 0.5: T F T F F T; > 0: T T T T F T
    t = np.array([True, False, False, True, False, True])
    # threshold 0.5: tp 2, fp 1, fn 1, tn 2; threshold 0: tp 3, fp 2
    labels = np.zeros(6, bool)                 # never predicts the positive class
    got = metrics_of("binary")(p, t, labels)
    np.testing.assert_allclose(got, [4 / 6, 2 / 3, 2 / 3, 2 / 3, 3 / 5, 3 / 6, 0.0, 0.0],
                               rtol=1e-6)
    assert all(g.dtype == np.float32 and g.shape == () for g in got)


@pytest.mark.parametrize("n", SIZES)
def test_metrics_match_numpy(n):
    rng = np.random.default_rng(n)
    pred, target = rng.integers(0, 4, n), rng.integers(0, 4, n)
    check_metrics(metrics_of("labels4")(pred, target), np_metrics(pred, target, 4))
    scores = f32(rng.standard_normal((n, 4)))
    check_metrics(metrics_of("scores")(scores, target), np_metrics(scores.argmax(1), target, 4))
    scores_k, target_k = f32(rng.standard_normal((n, 4, 3))), rng.integers(0, 4, (n, 3))
    check_metrics(metrics_of("scores_k")(scores_k, target_k),
                  np_metrics(scores_k.argmax(1), target_k, 4))


def test_metrics_reject_mismatched_ranks():
    src = ("import std.metrics as Mt\nmodel M {\n  forward(p: f32[N, 4, 2, 2], t: i64[N]) {\n"
           "    return Mt.accuracy(p, t)\n  }\n}\n")
    with pytest.raises(KilnError) as err:
        kiln.compile(src, target="reference")
    assert "predictions must be labels" in str(err.value)


# ---------------------------------------------------------------------------- -O0 vs -O1
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_optimized_reference_matches_the_unoptimized_one(case):
    check_opt_levels(program(), f"M_{case[0]}", targets=REFERENCE, sizes={"N": 4})


@pytest.mark.parametrize("name", [*METRIC_MODELS, "binary"])
def test_optimized_metrics_match_the_unoptimized_ones(name):
    check_opt_levels(metric_program(), name, targets=REFERENCE, sizes={"N": 6, "K": 2})
