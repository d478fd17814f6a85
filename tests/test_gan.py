"""kiln.GANTrainer: alternating D and G steps against a PyTorch twin, each step leaving the
other network bit-identical, checkpoints resuming the trajectory, the 8-Gaussians example
covering its modes, std.gan's DCGAN stepping on digits, and the errors of models that do not
fit together."""

from __future__ import annotations

import numpy as np
import pytest
from _clitest import run

import kiln
from kiln.compiler.errors import KilnError
from kiln.runtime.weights import load_weights
from kiln.train.checkpoint import write_checkpoint
from kiln.train.gan import modes_covered, ring_of_gaussians

torch = pytest.importorskip("torch", reason="the GAN steps are compared with torch")

EXAMPLE = "examples/gan_8gaussians.kiln"
BETAS = (0.5, 0.999)


def adam(lr=1e-3):
    return kiln.optim.Adam(lr=lr, betas=BETAS)


def example_trainer(seed=0, lr=1e-3, **kw):
    """The 8-Gaussians example's trainer: every test here shares its compiled steps."""
    return kiln.GANTrainer(EXAMPLE, loss="bce_with_logits", seed=seed, optimizer_g=adam(lr),
                           optimizer_d=adam(lr), **kw)


def torch_mlps(params):
    """The example's networks in torch, with the trainer's weights."""
    nn = torch.nn
    g = nn.Sequential(nn.Linear(4, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 2))
    d = nn.Sequential(nn.Linear(2, 64), nn.LeakyReLU(0.2), nn.Linear(64, 64), nn.LeakyReLU(0.2),
                      nn.Linear(64, 1))
    for net, name in ((g, "generator."), (d, "discriminator.")):
        net.load_state_dict({k[len(name):]: torch.tensor(v) for k, v in params.items()
                             if k.startswith(name)})
    return g, d


def torch_gan_steps(g, d, batches, noises, lr=1e-3, bce=None):
    """The PyTorch DCGAN tutorial's loop (on logits unless `bce` says otherwise): D on real
    and fake.detach(), then G on D(fake) with target 1; returns the losses per step."""
    bce = bce or torch.nn.functional.binary_cross_entropy_with_logits
    opt_g = torch.optim.Adam(g.parameters(), lr=lr, betas=BETAS)
    opt_d = torch.optim.Adam(d.parameters(), lr=lr, betas=BETAS)
    losses = []
    for real, z in zip(batches, noises):
        real, z = torch.tensor(real), torch.tensor(z)
        fake = g(z)
        opt_d.zero_grad()
        out_real, out_fake = d(real), d(fake.detach())
        loss_d = (bce(out_real, torch.ones_like(out_real))
                  + bce(out_fake, torch.zeros_like(out_fake)))
        loss_d.backward()
        opt_d.step()
        opt_g.zero_grad()
        out = d(fake)
        loss_g = bce(out, torch.ones_like(out))
        loss_g.backward()
        opt_g.step()
        losses.append((loss_d.item(), loss_g.item()))
    return losses


def snapshot(gan, net):
    return {k: v.copy() for k, v in gan.params.items() if k.startswith(net + ".")}


def assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_alternating_steps_match_torch_and_leave_the_other_net_alone():
    gan = example_trainer()
    g, d = torch_mlps(gan.params)
    rng = np.random.default_rng(1)
    batches = [ring_of_gaussians(16, rng) for _ in range(5)]
    noises = [gan.noise(16) for _ in range(5)]
    ours = []
    for real, z in zip(batches, noises):
        g_before = snapshot(gan, "generator")
        loss_d = gan.d_step(real, z)
        assert_same(snapshot(gan, "generator"), g_before)  # the D step leaves G alone
        d_before = snapshot(gan, "discriminator")
        loss_g = gan.g_step(z)
        assert_same(snapshot(gan, "discriminator"), d_before)  # and the G step D
        ours.append((loss_d, loss_g))
    theirs = torch_gan_steps(g, d, batches, noises)
    np.testing.assert_allclose(ours, theirs, rtol=1e-4)
    want = {**{"generator." + k: v.detach().numpy() for k, v in g.state_dict().items()},
            **{"discriminator." + k: v.detach().numpy() for k, v in d.state_dict().items()}}
    assert want.keys() == gan.params.keys()
    for k, v in want.items():
        np.testing.assert_allclose(gan.params[k], v, rtol=1e-3, atol=1e-5, err_msg=k)
    assert gan.d_phase.steps == gan.g_phase.steps == 5


def test_step_is_a_d_step_then_a_g_step_on_the_same_noise():
    a, b = example_trainer(seed=3), example_trainer(seed=3)
    real = ring_of_gaussians(32, np.random.default_rng(0))
    losses = a.step(real)
    z = b.noise(32)
    assert losses == (b.d_step(real, z), b.g_step(z))
    assert_same(a.params, b.params)
    assert a.noise_draws == b.noise_draws == 1


def test_checkpoint_resumes_the_same_trajectory(tmp_path):
    rng = np.random.default_rng(2)
    batches = [ring_of_gaussians(32, rng) for _ in range(6)]
    first = example_trainer(seed=5)
    for real in batches[:3]:
        first.step(real)
    first.save_checkpoint(tmp_path / "gan.safetensors")
    rest = [first.step(real) for real in batches[3:]]
    resumed = example_trainer(seed=5)
    resumed.load_checkpoint(tmp_path / "gan.safetensors")
    assert (resumed.d_phase.steps, resumed.g_phase.steps, resumed.noise_draws) == (3, 3, 3)
    assert [resumed.step(real) for real in batches[3:]] == rest
    assert_same(resumed.params, first.params)
    for ours, theirs in ((resumed.d_phase, first.d_phase), (resumed.g_phase, first.g_phase)):
        assert ours.state.keys() == theirs.state.keys()
        for key in ours.state:
            np.testing.assert_array_equal(ours.state[key], theirs.state[key])
    other = kiln.GANTrainer(EXAMPLE, loss="hinge", optimizer_g=adam(), optimizer_d=adam())
    with pytest.raises(KilnError) as err:
        other.load_checkpoint(tmp_path / "gan.safetensors")
    assert err.value.code == "K0838" and "loss" in str(err.value)
    write_checkpoint(tmp_path / "plain.safetensors", {"x": np.zeros(2)}, {})
    with pytest.raises(KilnError) as err:  # no kiln_gan header (a kiln.Trainer's, say)
        resumed.load_checkpoint(tmp_path / "plain.safetensors")
    assert err.value.code == "K0838"
    before = {k: v.copy() for k, v in resumed.params.items()}
    for bad in (lambda: resumed.d_step(np.zeros((4, 3), np.float32)),  # not a point
                lambda: resumed.d_step(batches[0], np.zeros((32, 5), np.float32)),
                lambda: resumed.g_step(0)):
        with pytest.raises(KilnError):
            bad()
    assert_same(resumed.params, before)  # a failing step changes nothing
    assert (resumed.d_phase.steps, resumed.g_phase.steps, resumed.noise_draws) == (6, 6, 6)


def test_the_example_covers_at_least_six_of_eight_modes():
    # 5000 steps of batch 256 covered all 8 modes for seeds 0-5 while this was written
    gan = example_trainer(seed=0)
    rng = np.random.default_rng(0)
    before = modes_covered(gan.sample(2000))
    for _ in range(5000):
        gan.step(ring_of_gaussians(256, rng))
    assert before < 6  # the untrained generator covers none: the training did it
    assert modes_covered(gan.sample(2000)) >= 6


def test_std_gan_dcgan_on_digits_follows_the_tutorials_loop():
    """Two iterations of the PyTorch DCGAN tutorial's loop (batch norm in training mode: batch
    statistics, running statistics updated as the tutorial's single fake per iteration does)."""
    from sklearn.datasets import load_digits
    from test_stdlib_gan import torch_refs

    digits = load_digits().images[:8].astype(np.float32) / 16 * 2 - 1  # [-1, 1], as tanh gives
    real = np.kron(digits, np.ones((8, 8), np.float32))[:, None]  # 8x8 -> 64x64, std.gan's size
    g_args, d_args = {"nz": 8, "ngf": 4, "nc": 1}, {"nc": 1, "ndf": 4}
    # the reference target: the same steps, without compiling DCGAN's kernels for seconds of use
    gan = kiln.GANTrainer("std.gan", args_g=g_args, args_d=d_args, seed=0, target="reference")
    _, generator, discriminator, _ = torch_refs()
    g, d = generator(**g_args).train(), discriminator(**d_args).train()
    for net, name in ((g, "generator"), (d, "discriminator")):
        net.load_state_dict({k: torch.tensor(v) for k, v in gan.net_params(name).items()})
    start = dict(gan.params)
    noises = [gan.noise(8) for _ in range(2)]
    ours = [(gan.d_step(real, z), gan.g_step(z)) for z in noises]
    theirs = torch_gan_steps(g, d, [real] * len(noises), noises, lr=2e-4,
                             bce=torch.nn.BCELoss())
    np.testing.assert_allclose(ours, theirs, rtol=1e-4)
    for net, name in ((g, "generator"), (d, "discriminator")):
        for k, v in net.state_dict().items():
            np.testing.assert_allclose(gan.params[f"{name}.{k}"], v.numpy(), rtol=1e-3,
                                       atol=1e-5, err_msg=f"{name}.{k}")
        changed = [k for k in start if k.startswith(name) and gan.info[k].kind == "param"
                   and not np.array_equal(start[k], gan.params[k])]
        assert changed, f"no {name} parameter changed"
    assert gan.params["generator.main.1.num_batches_tracked"] == 2
    # D's batch norm runs on real and fake in the D step, and on fake again in the G step
    assert gan.params["discriminator.main.3.num_batches_tracked"] == 6
    assert gan.generator(gan.noise(2)).shape == (2, 1, 64, 64)


def test_kiln_train_gan_resumes_and_writes_the_generator(capsys, tmp_path):
    ckpt, weights = tmp_path / "gan.safetensors", tmp_path / "g.safetensors"
    common = [EXAMPLE, "--gan", "--data", "gaussians8", "--loss", "bce_with_logits",
              "--batch", "256", "--quiet", "--checkpoint", ckpt]
    code, out, _ = run(capsys, "train", *common, "--epochs", "1")
    assert code == 0 and out.split("\n")[0].split() == ["epoch", "d_loss", "g_loss", "modes"]
    code, out, _ = run(capsys, "train", *common, "--epochs", "2", "--resume", ckpt, "-o", weights)
    rows = [line.split() for line in out.splitlines() if line.split()[:1] == ["2"]]
    assert code == 0 and len(rows) == 1 and np.isfinite([float(v) for v in rows[0][1:3]]).all()
    generator = kiln.compile(EXAMPLE, model="Generator", weights=weights)
    gan = example_trainer()
    gan.load_checkpoint(ckpt)
    z = gan.noise(5)
    np.testing.assert_array_equal(generator(z), gan.generator(z))
    assert gan.d_phase.steps == 2 * 51_200 // 256


@pytest.mark.parametrize("args", [["--arg", "depth=8"], ["--batch", "0"],
                                  ["--batch", "100000"], ["--model", "Generator"],
                                  ["--augment", "flip"], ["--l2", "0.1"]])
def test_kiln_train_gan_refuses_options_it_cannot_honour(capsys, args):
    code, _, err = run(capsys, "train", EXAMPLE, "--gan", "--data", "gaussians8", "--quiet",
                       *args)
    assert code == 1 and "K0830" in err


def test_kiln_train_gan_binds_model_arguments_and_follows_a_schedule(capsys, tmp_path):
    """`--arg hidden=8` binds both models' hidden, `--arg generator.nz=2` the generator's nz
    (over `--arg nz=3`); `--schedule step --step-size 1 --gamma 0` trains epoch 1 at the
    full rate and epoch 2 at 0, so its generator is the one-epoch run's, bit for bit."""
    data = tmp_path / "ring.npz"
    np.savez(data, x=ring_of_gaussians(512, np.random.default_rng(0)), y=np.zeros(512))
    common = [EXAMPLE, "--gan", "--data", data, "--loss", "bce_with_logits", "--batch", "128",
              "--quiet", "--arg", "hidden=8", "--arg", "generator.nz=2", "--arg", "nz=3"]
    one, two = tmp_path / "one.safetensors", tmp_path / "two.safetensors"
    assert run(capsys, "train", *common, "--epochs", "1", "-o", one)[0] == 0
    code, _, err = run(capsys, "train", *common, "--epochs", "2", "--schedule", "step",
                       "--step-size", "1", "--gamma", "0", "-o", two)
    assert code == 0, err
    first, second = load_weights(one), load_weights(two)
    assert first["0.weight"].shape == (8, 2)  # Linear(nz=2, hidden=8), as torch stores it
    for path in first:
        np.testing.assert_array_equal(second[path], first[path], err_msg=path)
    generator = kiln.compile(EXAMPLE, model="Generator", args={"nz": 2, "hidden": 8},
                             weights=two)
    assert generator(np.zeros((3, 2), np.float32)).shape == (3, 2)


def test_each_net_follows_its_own_schedule_and_checkpoints_name_it(tmp_path):
    gan = example_trainer(schedule_d=kiln.optim.step_decay(1, 0.0))  # D learns in step 1 only
    rng = np.random.default_rng(0)
    gan.step(ring_of_gaussians(64, rng))
    d, g = snapshot(gan, "discriminator"), snapshot(gan, "generator")
    gan.step(ring_of_gaussians(64, rng))
    assert_same(snapshot(gan, "discriminator"), d)
    assert any((snapshot(gan, "generator")[k] != v).any() for k, v in g.items())
    assert gan.learning_rate(gan.d_phase, 1) == 1e-3 and gan.learning_rate(gan.d_phase, 2) == 0
    gan.save_checkpoint(tmp_path / "gan.safetensors")
    with pytest.raises(KilnError) as err:  # a run without the schedule is another run
        example_trainer().load_checkpoint(tmp_path / "gan.safetensors")
    assert err.value.code == "K0838" and "schedule_d" in err.value.message


GEN_3 = """
import std.nn
model Generator { forward(z: f32[B, 4]) -> f32[B, 3] { return z |> nn.Linear(4, 3) } }
model Discriminator { forward(x: f32[B, 2]) -> f32[B, 1] { return x |> nn.Linear(2, 1) } }
model Two { forward(a: f32[B, 2], b: f32[B, 2]) -> f32[B, 1] { return a |> nn.Linear(2, 1) } }
"""


def test_models_that_do_not_fit_and_unknown_losses_are_refused(tmp_path):
    path = tmp_path / "gan.kiln"
    path.write_text(GEN_3)
    with pytest.raises(KilnError) as err:
        kiln.GANTrainer(path)
    assert err.value.code == "K0840" and "f32[B, 3]" in str(err.value)
    with pytest.raises(KilnError) as err:
        kiln.GANTrainer(path, discriminator="Two")
    assert err.value.code == "K0840" and "takes 2 inputs" in str(err.value)
    with pytest.raises(KilnError) as err:
        kiln.GANTrainer(path, loss="wasserstein")
    assert err.value.code == "K0841"
