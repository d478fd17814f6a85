"""kiln.Trainer against hand-written PyTorch twins, as a user checks a port: the same initial
weights (a state_dict saved with safetensors, loaded by torch's own names through
`weights=`), the same batches; per-step losses within 1e-4 relative and the weights after
within rounding. A small CNN with BatchNorm and Dropout(p=0) under Adam and AdamW with weight
decay, an MLP under SGD with Nesterov momentum, an LR schedule and gradient clipping."""

from __future__ import annotations

import numpy as np
import pytest

import kiln

torch = pytest.importorskip("torch", reason="the trajectories are compared with PyTorch's")
F = torch.nn.functional
safetensors_torch = pytest.importorskip("safetensors.torch",
                                        reason="the twins' weights are saved with safetensors")

MODELS = """
import std.nn
model Cnn {
  conv = nn.Conv2d(1, 4, 3, padding = 1, bias = false)
  bn = nn.BatchNorm2d(4)
  drop = nn.Dropout(0.0)
  fc = nn.Linear(4 * 4 * 4, 3)
  forward(x: f32[B, 1, 8, 8]) -> f32[B, 3] {
    return x |> conv |> bn |> relu |> max_pool(kernel_size = 2) |> flatten |> drop |> fc
  }
}
model Mlp {
  fc1 = nn.Linear(6, 16)
  fc2 = nn.Linear(16, 3)
  forward(x: f32[B, 6]) -> f32[B, 3] {
    return x |> fc1 |> tanh |> fc2
  }
}
"""
STEPS, BATCH = 6, 16


class Cnn(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3, padding=1, bias=False)
        self.bn = torch.nn.BatchNorm2d(4)
        self.drop = torch.nn.Dropout(0.0)
        self.fc = torch.nn.Linear(64, 3)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn(self.conv(x))), 2)
        return self.fc(self.drop(torch.flatten(x, 1)))


class Mlp(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = torch.nn.Linear(6, 16)
        self.fc2 = torch.nn.Linear(16, 3)

    def forward(self, x):
        return self.fc2(torch.tanh(self.fc1(x)))


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    path = tmp_path_factory.mktemp("twins") / "m.kiln"
    path.write_text(MODELS)
    return path


def compare(models, tmp_path, net, make_torch_opt, optimizer, x, y, schedule=None, clip=None):
    """Step kiln and the torch twin `net` on the same batches; check losses and weights."""
    weights = tmp_path / "init.safetensors"
    safetensors_torch.save_file({k: v.contiguous() for k, v in net.state_dict().items()},
                                str(weights))
    trainer = kiln.Trainer(models, model=type(net).__name__, loss="CrossEntropyLoss",
                           optimizer=optimizer, weights=weights, schedule=schedule,
                           clip_grad_norm=clip)
    opt = make_torch_opt(net.parameters())
    # kiln's schedule gives step t (from 1) the factor schedule(t): LambdaLR's epoch e is t - 1
    lr_sched = (torch.optim.lr_scheduler.LambdaLR(opt, lambda e: schedule(e + 1))
                if schedule else None)
    rng = np.random.default_rng(0)
    net.train()
    for step in range(STEPS):
        part = rng.permutation(len(x))[:BATCH]
        opt.zero_grad()
        loss = F.cross_entropy(net(torch.tensor(x[part])), torch.tensor(y[part]))
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(net.parameters(), clip)
        opt.step()
        if lr_sched:
            lr_sched.step()
        assert trainer.step(x[part], y[part]) == pytest.approx(loss.item(), rel=1e-4), step
    for path, value in net.state_dict().items():
        np.testing.assert_allclose(trainer.params[path], value.numpy(), rtol=1e-4, atol=1e-5,
                                   err_msg=path)
    net.eval()
    with torch.no_grad():
        np.testing.assert_allclose(trainer.model(x), net(torch.tensor(x)).numpy(), rtol=1e-4,
                                   atol=1e-5)


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(1)
    return rng.standard_normal((48, 1, 8, 8)).astype(np.float32), rng.integers(0, 3, 48)


@pytest.fixture(scope="module")
def rows():
    rng = np.random.default_rng(2)
    return rng.standard_normal((48, 6)).astype(np.float32), rng.integers(0, 3, 48)


def test_cnn_with_batchnorm_under_adam(models, tmp_path, images):
    torch.manual_seed(0)
    compare(models, tmp_path, Cnn(), lambda p: torch.optim.Adam(p, lr=1e-2),
            kiln.optim.Adam(lr=1e-2), *images)


def test_cnn_with_batchnorm_under_adamw_with_weight_decay(models, tmp_path, images):
    torch.manual_seed(1)
    compare(models, tmp_path, Cnn(), lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1),
            kiln.optim.by_name("AdamW", lr=1e-2, weight_decay=0.1), *images)


def test_mlp_under_sgd_nesterov(models, tmp_path, rows):
    torch.manual_seed(2)
    compare(models, tmp_path, Mlp(),
            lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True,
                                      weight_decay=1e-3),
            kiln.optim.SGD(lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3), *rows)


def test_mlp_with_a_schedule_and_clipping(models, tmp_path, rows):
    torch.manual_seed(3)
    compare(models, tmp_path, Mlp(), lambda p: torch.optim.Adam(p, lr=5e-2),
            kiln.optim.Adam(lr=5e-2), *rows, schedule=kiln.optim.cosine(STEPS, 2), clip=0.5)


def test_a_torch_tensor_is_refused_with_the_conversion(models):
    trainer = kiln.Trainer(models, model="Mlp")
    with pytest.raises(kiln.KilnError) as err:
        trainer.step(torch.randn(4, 6), np.zeros(4, np.int64))
    assert err.value.code == "K0502" and "x.detach().cpu().numpy()" in err.value.hint
