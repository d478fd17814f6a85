"""kiln.Trainer: trajectories against torch, frozen parameters, penalties, evaluation
metrics, checkpoints, and the errors bad labels and diverging losses give."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

import kiln
from kiln.compiler.errors import KilnError
from kiln.train.checkpoint import read_checkpoint, write_checkpoint

torch = pytest.importorskip("torch", reason="the trainer's trajectories are compared with torch")

MLP = """
import std.nn
model MLP(hidden: int = 16) {
  forward(x: f32[B, 8]) -> f32[B, 3] {
    return x |> nn.Linear(8, hidden) |> relu |> nn.Linear(hidden, 3)
  }
}
"""
STEPS = 30


@pytest.fixture(scope="module")
def mlp_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("trainer") / "mlp.kiln"
    path.write_text(MLP)
    return str(path)


def batches(seed=0, n=STEPS, batch=16):
    """Fixed batches: inputs, and one-hot class targets (cross_entropy's class probabilities)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        x = rng.standard_normal((batch, 8)).astype(np.float32)
        y = np.eye(3, dtype=np.float32)[rng.integers(0, 3, batch)]
        out.append((x, y))
    return out


def torch_twin(params):
    net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    net.load_state_dict({k: torch.tensor(np.array(v)) for k, v in params.items()})
    return net


def torch_run(params, make_opt, data, schedule=None, clip=None, base_lr=None):
    net = torch_twin(params)
    opt = make_opt(net.parameters())
    losses = []
    for t, (x, y) in enumerate(data, 1):
        if schedule is not None:
            for group in opt.param_groups:
                group["lr"] = base_lr * schedule(t)
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(net(torch.tensor(x)), torch.tensor(y))
        loss.backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(net.parameters(), clip)
        opt.step()
        losses.append(loss.item())
    return losses, {k: v.detach().numpy() for k, v in net.state_dict().items()}


TRAJECTORIES = [
    ("sgd-nesterov", lambda: kiln.optim.SGD(lr=0.1, momentum=0.9, nesterov=True),
     lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, nesterov=True), None, None),
    ("adam", lambda: kiln.optim.Adam(lr=0.01),
     lambda ps: torch.optim.Adam(ps, lr=0.01), None, None),
    ("adamw-cosine-clip", lambda: kiln.optim.AdamW(lr=0.02, weight_decay=0.05),
     lambda ps: torch.optim.AdamW(ps, lr=0.02, weight_decay=0.05),
     kiln.optim.cosine(total=STEPS, warmup=5), 0.5),
]


@pytest.mark.parametrize(("name", "ours", "theirs", "schedule", "clip"), TRAJECTORIES,
                         ids=[t[0] for t in TRAJECTORIES])
def test_trajectory_matches_torch(mlp_file, name, ours, theirs, schedule, clip):
    trainer = kiln.Trainer(mlp_file, loss="cross_entropy", optimizer=ours(), schedule=schedule,
                           clip_grad_norm=clip, seed=0)
    data = batches()
    expected_losses, expected_params = torch_run(trainer.params, theirs, data, schedule, clip,
                                                 trainer.optimizer.lr)
    losses = [trainer.step(x, y) for x, y in data]
    np.testing.assert_allclose(losses, expected_losses, rtol=1e-4)
    for path, value in expected_params.items():
        np.testing.assert_allclose(trainer.params[path], value, rtol=1e-3, atol=1e-5,
                                   err_msg=path)
    # the inference model runs with the trained weights
    x = data[0][0]
    np.testing.assert_allclose(trainer.model(x), torch_twin(trainer.params)(
        torch.tensor(x)).detach().numpy(), rtol=1e-4, atol=1e-5)


def test_reference_target_takes_the_same_steps(mlp_file):
    data = batches(n=3)
    native = kiln.Trainer(mlp_file, optimizer=kiln.optim.Adam(lr=0.01))
    reference = kiln.Trainer(mlp_file, optimizer=kiln.optim.Adam(lr=0.01), target="reference")
    for x, y in data:
        assert native.step(x, y) == pytest.approx(reference.step(x, y), rel=1e-5)
    for path in native.params:
        np.testing.assert_allclose(native.params[path], reference.params[path], rtol=1e-5)


def test_trainable_patterns_freeze_the_rest(mlp_file):
    trainer = kiln.Trainer(mlp_file, optimizer=kiln.optim.SGD(lr=0.1), trainable=["2.*"])
    before = {p: a.copy() for p, a in trainer.params.items()}
    for x, y in batches(n=2):
        trainer.step(x, y)
    assert trainer.trainable == ["2.weight", "2.bias"]
    for path in ("0.weight", "0.bias"):
        np.testing.assert_array_equal(trainer.params[path], before[path])
    assert not np.array_equal(trainer.params["2.weight"], before["2.weight"])
    with pytest.raises(KilnError) as err:
        kiln.Trainer(mlp_file, trainable=["fc.*"])
    assert err.value.code == "K0833" and "fc.*" in err.value.message


@pytest.mark.parametrize(("l1", "l2"), [(1e-3, 1e-2), (0.0, 1e-2)])
def test_l1_l2_penalties_add_to_the_loss(mlp_file, l1, l2):
    trainer = kiln.Trainer(mlp_file, optimizer=kiln.optim.SGD(lr=0.05), l1=l1, l2=l2,
                           penalized=["*.weight"])
    net = torch_twin(trainer.params)
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    for x, y in batches(n=5):
        opt.zero_grad()
        weights = [net[0].weight, net[2].weight]
        loss = (torch.nn.functional.cross_entropy(net(torch.tensor(x)), torch.tensor(y))
                + l1 * sum(w.abs().sum() for w in weights)
                + l2 * sum((w * w).sum() for w in weights))
        loss.backward()
        opt.step()
        assert trainer.step(x, y) == pytest.approx(loss.item(), rel=1e-4)
    for path, value in net.state_dict().items():
        np.testing.assert_allclose(trainer.params[path], value.numpy(), rtol=1e-3, atol=1e-6)


def test_evaluate_gives_sklearn_macro_metrics(mlp_file):
    metrics = pytest.importorskip("sklearn.metrics", reason="the metrics are checked against "
                                  "scikit-learn")
    trainer = kiln.Trainer(mlp_file, optimizer=kiln.optim.Adam(lr=0.01))
    data = batches(n=4, batch=40)
    for x, y in data[:3]:
        trainer.step(x, y)
    x, y = data[3]
    got = trainer.evaluate(x, y, batch=16)  # batches of 16, 16 and 8
    logits = torch_twin(trainer.params)(torch.tensor(x))
    labels = y.argmax(axis=1)
    pred = logits.argmax(axis=1).numpy()
    p, r, f, _ = metrics.precision_recall_fscore_support(labels, pred, average="macro",
                                                         zero_division=0)
    assert got["accuracy"] == pytest.approx(metrics.accuracy_score(labels, pred))
    assert (got["precision"], got["recall"], got["f1"]) == pytest.approx((p, r, f))
    loss = torch.nn.functional.cross_entropy(logits, torch.tensor(y)).item()
    assert got["loss"] == pytest.approx(loss, rel=1e-5)


def test_checkpoint_resumes_the_same_trajectory(mlp_file, tmp_path):
    data = batches(n=6)
    straight = kiln.Trainer(mlp_file, optimizer=kiln.optim.Adam(lr=0.01))
    losses = [straight.step(x, y) for x, y in data]
    first = kiln.Trainer(mlp_file, optimizer=kiln.optim.Adam(lr=0.01))
    for x, y in data[:3]:
        first.step(x, y)
    ckpt = tmp_path / "ckpt.safetensors"
    first.save_checkpoint(ckpt)
    tensors, meta = read_checkpoint(ckpt)
    assert "optimizer.0.weight.exp_avg" in tensors and "0.weight" in tensors
    header = json.loads(meta["kiln_trainer"])
    assert header["step"] == 3 and header["config"]["optimizer"]["name"] == "adam"
    resumed = kiln.Trainer(mlp_file, optimizer=kiln.optim.Adam(lr=0.01))
    resumed.load_checkpoint(ckpt)
    assert resumed.step_count == 3
    assert [resumed.step(x, y) for x, y in data[3:]] == pytest.approx(losses[3:], rel=1e-6)


def test_checkpoint_that_does_not_fit_is_refused(mlp_file, tmp_path):
    trainer = kiln.Trainer(mlp_file, optimizer=kiln.optim.Adam(lr=0.01))
    ckpt = tmp_path / "ckpt.safetensors"
    trainer.save_checkpoint(ckpt)
    other = kiln.Trainer(mlp_file, optimizer=kiln.optim.SGD(lr=0.01))
    before = {p: a.copy() for p, a in other.params.items()}
    with pytest.raises(KilnError) as err:
        other.load_checkpoint(ckpt)
    assert err.value.code == "K0838" and "optimizer" in err.value.message
    wider = kiln.Trainer(mlp_file, optimizer=kiln.optim.Adam(lr=0.01), args={"hidden": 8})
    with pytest.raises(KilnError, match="args"):
        wider.load_checkpoint(ckpt)
    tensors, meta = read_checkpoint(ckpt)
    tensors["0.weight"] = tensors["0.weight"][:, :4].copy()
    broken = tmp_path / "broken.safetensors"
    write_checkpoint(broken, tensors, meta)
    same = kiln.Trainer(mlp_file, optimizer=kiln.optim.Adam(lr=0.01))
    with pytest.raises(KilnError, match=r"0\.weight is float32\[16, 4\]"):
        same.load_checkpoint(broken)
    for path, value in before.items():  # nothing changed
        np.testing.assert_array_equal(other.params[path], value)


@pytest.mark.parametrize("saved, resumed, key", [
    (kiln.optim.cosine(100, 10), kiln.optim.cosine(200, 10), "schedule.total"),
    (kiln.optim.cosine(100, 10), None, "schedule.name"),
    (None, kiln.optim.step_decay(5), "schedule.name"),
])
def test_checkpoint_records_the_schedule(mlp_file, tmp_path, saved, resumed, key):
    """A resumed run follows the learning-rate schedule of the run that wrote the
    checkpoint, or is refused, naming what differs."""
    ckpt = tmp_path / "ckpt.safetensors"
    kiln.Trainer(mlp_file, schedule=saved).save_checkpoint(ckpt)
    kiln.Trainer(mlp_file, schedule=saved).load_checkpoint(ckpt)  # the same one resumes
    with pytest.raises(KilnError) as err:
        kiln.Trainer(mlp_file, schedule=resumed).load_checkpoint(ckpt)
    assert err.value.code == "K0838" and key in err.value.message


def test_checkpoint_is_never_written_through_a_symlink(mlp_file, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    link = tmp_path / "ckpt.safetensors"
    link.symlink_to(victim)
    kiln.Trainer(mlp_file).save_checkpoint(link)
    assert victim.read_text() == "keep me"
    assert not os.path.islink(link) and read_checkpoint(link)[0]


def test_bad_labels_name_the_input(mlp_file):
    trainer = kiln.Trainer(mlp_file, loss="cross_entropy")
    x = np.zeros((4, 8), np.float32)
    with pytest.raises(KilnError) as err:
        trainer.step(x, np.array([0, 1, 3, 2]))
    assert err.value.code == "K0835" and "target" in err.value.message and "3" in err.value.message
    with pytest.raises(KilnError) as err:
        trainer.step(x, np.array([0, -5, 1, 2]))
    assert err.value.code == "K0835"
    nll = kiln.Trainer(mlp_file, loss="nll_loss")
    with pytest.raises(KilnError) as err:
        nll.step(x, np.zeros(4, np.float32))
    assert err.value.code == "K0834" and "target" in err.value.message
    assert trainer.step_count == 0 and nll.step_count == 0


def test_non_finite_loss_names_the_step_and_the_parameter(mlp_file):
    trainer = kiln.Trainer(mlp_file, optimizer=kiln.optim.SGD(lr=0.1))
    (x, y), = batches(n=1)
    trainer.step(x, y)
    before = {p: a.copy() for p, a in trainer.params.items()}
    bad = x.copy()
    bad[0, 0] = np.nan
    with pytest.raises(KilnError) as err:
        trainer.step(bad, y)
    assert err.value.code == "K0836"
    assert "step 2" in err.value.message and "parameter 0.weight" in err.value.message
    assert trainer.step_count == 1
    for path, value in before.items():
        np.testing.assert_array_equal(trainer.params[path], value)


def test_unknown_loss_and_bad_options_are_refused(mlp_file):
    with pytest.raises(KilnError) as err:
        kiln.Trainer(mlp_file, loss="hinge")
    assert err.value.code == "K0837"
    with pytest.raises(KilnError) as err:
        kiln.Trainer(mlp_file, clip_grad_norm=-1)
    assert err.value.code == "K0831"
    with pytest.raises(KilnError) as err:
        kiln.Trainer(mlp_file, target="onnx")
    assert err.value.code == "K0602"


def test_a_loss_from_a_kiln_file(mlp_file, tmp_path):
    loss_file = tmp_path / "myloss.kiln"
    loss_file.write_text("fn squared(out, target) {\n  d = out - target\n  return mean(d * d)\n}\n")
    trainer = kiln.Trainer(mlp_file, loss=f"{loss_file}:squared",
                           optimizer=kiln.optim.SGD(lr=0.1))
    net = torch_twin(trainer.params)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    for x, y in batches(n=3):
        opt.zero_grad()
        loss = ((net(torch.tensor(x)) - torch.tensor(y)) ** 2).mean()
        loss.backward()
        opt.step()
        assert trainer.step(x, y) == pytest.approx(loss.item(), rel=1e-5)
    assert set(trainer.evaluate(*batches(n=1)[0])) == {"loss"}


NAMED = """
import std.nn
model Named {
  forward(x: f32[B, 8]) -> (logits: f32[B, 3], scale: f32[B, 1]) {
    return x |> nn.Linear(8, 3), x |> nn.Linear(8, 1) |> sigmoid
  }
}
"""
NAMED_LOSSES = """
fn scaled(scale, logits, target) {
  d = logits * scale + logits - target
  return mean(d * d)
}
fn scale_only(target, scale) {
  return mean(scale) + 0.0 * mean(target)
}
fn in_order(a, b, target) {
  d = a * b + a - target
  return mean(d * d)
}
model ScaledModel {
  forward(scale: f32[B, 1], logits: f32[B, 3], target: f32[B, 3]) -> f32[] {
    d = logits * scale + logits - target
    return mean(d * d)
  }
}
"""


@pytest.mark.parametrize("name, want", [
    ("scaled", lambda o, y: np.mean((o.logits * o.scale + o.logits - y) ** 2)),
    ("ScaledModel", lambda o, y: np.mean((o.logits * o.scale + o.logits - y) ** 2)),
    ("scale_only", lambda o, y: np.mean(o.scale)),
    ("in_order", lambda o, y: np.mean((o.logits * o.scale + o.logits - y) ** 2))])
def test_a_loss_takes_the_models_outputs_by_name_where_its_parameters_name_them(tmp_path, name,
                                                                                 want):
    """A loss whose parameters but one are named as the model's outputs takes those outputs
    by name (in its order, some left out) and the target as the other; else (`in_order`)
    the outputs in order, then the target."""
    (tmp_path / "named.kiln").write_text(NAMED)
    (tmp_path / "losses.kiln").write_text(NAMED_LOSSES)
    trainer = kiln.Trainer(tmp_path / "named.kiln", loss=f"{tmp_path / 'losses.kiln'}:{name}")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 8)).astype(np.float32)
    y = rng.standard_normal((6, 3)).astype(np.float32)
    got = trainer.evaluate(x, y)["loss"]
    assert got == pytest.approx(want(trainer.model(x), y), rel=1e-5)


BN_NET = """
import std.nn
model BNNet(p: float = 0.0) {
  forward(x: f32[B, 8]) -> f32[B, 3] {
    return x |> nn.Linear(8, 16) |> nn.BatchNorm1d(16) |> relu |> nn.Dropout(p)
             |> nn.Linear(16, 3)
  }
}
"""


@pytest.fixture(scope="module")
def bn_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("trainer_bn") / "bn.kiln"
    path.write_text(BN_NET)
    return str(path)


def test_batch_norm_running_statistics_follow_torch(bn_file):
    """Training mode: batch statistics in the forward, running statistics (and
    num_batches_tracked) updated by each step as torch's train() mode updates them."""
    trainer = kiln.Trainer(bn_file, optimizer=kiln.optim.SGD(lr=0.1, momentum=0.9))
    net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.BatchNorm1d(16),
                              torch.nn.ReLU(), torch.nn.Dropout(0.0), torch.nn.Linear(16, 3))
    net.load_state_dict({k: torch.tensor(np.array(v)) for k, v in trainer.state_dict().items()})
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    net.train()
    for x, y in batches(n=5):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(net(torch.tensor(x)), torch.tensor(y))
        loss.backward()
        opt.step()
        assert trainer.step(x, y) == pytest.approx(loss.item(), rel=1e-4)
    for path, value in net.state_dict().items():
        np.testing.assert_allclose(trainer.params[path], value.numpy(), rtol=1e-3, atol=1e-5,
                                   err_msg=path)
    assert int(trainer.params["1.num_batches_tracked"]) == 5
    # evaluation runs in inference mode: the running statistics, as torch's eval()
    net.eval()
    x, y = batches(seed=9, n=1)[0]
    expected = torch.nn.functional.cross_entropy(net(torch.tensor(x)), torch.tensor(y)).item()
    assert trainer.evaluate(x, y)["loss"] == pytest.approx(expected, rel=1e-4)


def test_running_statistics_share_the_gradients_batch_statistics(bn_file):
    """The train step's graph has two batch_norm_stats of the BatchNorm's input: of x and x
    (the running statistics' mean and variance) and of x and dy (the gradient's sums); the
    share_batch_statistics pass leaves the second alone, read by both (the values: the test
    above, against PyTorch)."""
    from kiln.compiler.pipelines import optimize

    trainer = kiln.Trainer(bn_file, optimizer=kiln.optim.SGD(lr=0.1, momentum=0.9))
    _forward, step_model, _ = trainer.step_parts()
    graph, (stats,) = optimize(step_model, passes=["share_batch_statistics"], verify=True)

    def operands(g):
        return [tuple(v.node for v in g.operands(n)) for n in g.nodes_with_op("batch_norm_stats")]

    before, after = operands(step_model.graph), operands(graph)
    assert len(before) == 2 and sum(x == dy for x, dy in before) == 1
    assert len(after) == 1 and after[0][0] != after[0][1]
    assert stats.changes["shared"] == 1


def test_a_running_statistic_that_is_not_finite_refuses_the_step(bn_file):
    """BatchNorm in training mode on one example: its unbiased variance is 0/0. PyTorch
    refuses the batch; the trainer refuses the step (K0848), naming the buffer, and changes
    nothing, rather than keep a NaN running variance that every evaluation would then read."""
    trainer = kiln.Trainer(bn_file, optimizer=kiln.optim.SGD(lr=0.1))
    x, y = batches(n=1, batch=2)[0]
    before = {k: v.copy() for k, v in trainer.params.items()}
    with pytest.raises(KilnError) as err:
        trainer.step(x[:1], y[:1])
    assert err.value.code == "K0848" and "running_var" in err.value.message
    assert "step 1" in err.value.message and trainer.step_count == 0
    for k, v in before.items():
        np.testing.assert_array_equal(trainer.params[k], v, err_msg=k)
    trainer.step(x, y)  # two examples have a variance
    assert all(np.isfinite(v).all() for v in trainer.params.values())


def test_dropout_masks_follow_the_seed_and_the_step(bn_file):
    (x, y), = batches(n=1)

    def losses(seed, p=0.5):
        # lr 0: the weights never change, so only the dropout mask can change the loss
        trainer = kiln.Trainer(bn_file, args={"p": p}, seed=seed, target="reference",
                               optimizer=kiln.optim.SGD(lr=0.0))
        return [trainer.step(x, y) for _ in range(3)]

    first = losses(0)
    assert losses(0) == first  # reproducible from the seed
    assert len(set(first)) == 3  # a new mask every step
    assert len(set(losses(0, p=0.0))) == 1  # no dropout: the same loss every step


def test_profile_times_the_step_and_changes_nothing(mlp_file):
    trainer = kiln.Trainer(mlp_file, optimizer=kiln.optim.SGD(lr=0.1, momentum=0.9))
    (x, y), = batches(n=1)
    trainer.step(x, y)
    before = {p: a.copy() for p, a in trainer.params.items()}
    state = {k: a.copy() for k, a in trainer.state.items()}
    profile = trainer.profile(x, y, repeat=2)
    assert trainer.step_count == 1
    for p, a in before.items():
        np.testing.assert_array_equal(trainer.params[p], a)
    for k, a in state.items():
        np.testing.assert_array_equal(trainer.state[k], a)
    ops = " ".join(k.kernel for k in profile.kernels)
    assert "matmul" in ops and profile.total > 0
    with pytest.raises(KilnError) as err:
        kiln.Trainer(mlp_file, target="reference").profile(x, y)
    assert err.value.code == "K0602"


UPSAMPLER = """
import std.nn
model Up {
  conv = nn.Conv2d(1, 4, 3, padding = 1)
  shuffle = nn.PixelShuffle(2)
  forward(x: f32[B, 1, H, W]) -> f32[B, 1, 2 * H, 2 * W] { return x |> conv |> shuffle }
}
"""


def test_a_target_takes_the_output_size_the_model_computes(tmp_path):
    """An output of 2*H x 2*W (symbolic H, W): a target of 8 x 10 for 4 x 5 inputs is that
    size (a concrete 8 could not be proved equal to 2*H), another is refused at the call,
    naming the target; the steps match the reference target's."""
    path = tmp_path / "up.kiln"
    path.write_text(UPSAMPLER)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 1, 4, 5)).astype(np.float32)
    y = rng.standard_normal((3, 1, 8, 10)).astype(np.float32)
    losses = {}
    for target in ("native", "reference"):
        t = kiln.Trainer(path, loss="mse_loss", optimizer=kiln.optim.SGD(lr=0.1), seed=1,
                         target=target)
        losses[target] = [t.step(x, y) for _ in range(3)]
        assert losses[target][-1] < losses[target][0]
        with pytest.raises(KilnError) as info:
            t.step(x, y[:, :, :6])
        assert info.value.code == "K0503" and "target" in info.value.message
    np.testing.assert_allclose(losses["native"], losses["reference"], rtol=1e-5)
