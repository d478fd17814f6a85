"""What a user arriving from PyTorch or Keras meets first in kiln's training, with numpy as the
oracle: targets of the dtypes and shapes data come in (float class labels, [N] against an
output [N, 1], float64), checkpoints of a model with BatchNorm, evaluate's edge cases, and
`kiln train`'s options refused before any training rather than after it."""

from __future__ import annotations

import os

import numpy as np
import pytest
from _clitest import run

import kiln
from kiln.compiler.errors import KilnError

MODELS = """
import std.nn
model Bin {
  forward(x: f32[B, 4]) -> f32[B, 1] {
    return x |> nn.Linear(4, 8) |> relu |> nn.Linear(8, 1)
  }
}
model Prob {
  forward(x: f32[B, 4]) -> f32[B, 1] {
    return x |> nn.Linear(4, 1) |> sigmoid
  }
}
model Clf(hidden: int = 8) {
  forward(x: f32[B, 4]) -> f32[B, 3] {
    return x |> nn.Linear(4, hidden) |> relu |> nn.Linear(hidden, 3)
  }
}
model Cnn {
  conv = nn.Conv2d(1, 4, 3, padding = 1)
  bn = nn.BatchNorm2d(4)
  fc = nn.Linear(4 * 4 * 4, 3)
  forward(x: f32[B, 1, 8, 8]) -> f32[B, 3] {
    return x |> conv |> bn |> relu |> max_pool(kernel_size = 2) |> flatten |> fc
  }
}
fn sq(pred, target) {
  return mean((pred - target) * (pred - target))
}
"""

RNG = np.random.default_rng(0)
X = RNG.standard_normal((37, 4)).astype(np.float32)
LABELS = (X[:, 0] > 0).astype(np.int64) + (X[:, 1] > 0)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("newuser")
    (root / "m.kiln").write_text(MODELS)
    np.savez(root / "float_labels.npz", x=X, y=LABELS.astype(np.float64))
    np.savez(root / "int_labels.npz", x=X, y=LABELS.astype(np.uint8))
    np.savez(root / "tiny.npz", x=X[:5], y=LABELS[:5])
    return root


def bce_with_logits(z, t):
    return float(np.mean(np.maximum(z, 0) - z * t + np.log1p(np.exp(-np.abs(z)))))


def test_target_of_shape_n_for_an_output_n_by_1_is_not_broadcast(root):
    # PyTorch refuses BCEWithLogits' [N, 1] against [N] (and warns for mse): broadcast, it
    # would be a mean over N x N pairs; kiln takes [N] as the column it means
    y = (X[:, 0] > 0).astype(np.float32)
    trainer = kiln.Trainer(root / "m.kiln", model="Bin", loss="bce_with_logits", seed=0)
    logits = trainer.model(X)[:, 0].astype(np.float64)
    want = bce_with_logits(logits, y)
    assert trainer.step(X, y) == pytest.approx(want, rel=1e-5)
    # the same compiled step takes the column, and an integer or float64 one
    trainer2 = kiln.Trainer(root / "m.kiln", model="Bin", loss="bce_with_logits", seed=0)
    assert trainer2.step(X, y[:, None].astype(np.float64)) == pytest.approx(want, rel=1e-5)
    metrics = trainer.evaluate(X, y.astype(np.int64), batch=8)  # 37 = 4 * 8 + 5
    z = trainer.model(X)[:, 0].astype(np.float64)
    assert metrics["loss"] == pytest.approx(bce_with_logits(z, y), rel=1e-5)


def test_multi_label_targets(root):
    y = (RNG.random((37, 3)) > 0.5).astype(np.float32)
    trainer = kiln.Trainer(root / "m.kiln", model="Clf", loss="bce_with_logits", seed=0)
    z = trainer.model(X).astype(np.float64)
    assert trainer.step(X, y) == pytest.approx(bce_with_logits(z, y), rel=1e-5)


def test_a_target_of_another_shape_is_refused(root):
    trainer = kiln.Trainer(root / "m.kiln", model="Clf", loss="mse")
    with pytest.raises(KilnError) as err:
        trainer.step(X, X[:, :2])
    assert err.value.code == "K0834" and "[37, 2]" in str(err.value)
    assert "f32[B, 3]" in str(err.value)


def test_float_class_labels_are_refused_naming_the_shape(root):
    trainer = kiln.Trainer(root / "m.kiln", model="Clf", loss="cross_entropy")
    with pytest.raises(KilnError) as err:
        trainer.step(X, LABELS.astype(np.float32))
    assert err.value.code == "K0834" and "shape [37]" in str(err.value)
    assert "astype(np.int64)" in err.value.hint and "probabilities" in err.value.hint


def test_own_loss_takes_a_float64_target(root):
    y = RNG.standard_normal((37, 3))  # float64, a type the language has not
    trainer = kiln.Trainer(root / "m.kiln", model="Clf", loss=f"{root / 'm.kiln'}:sq")
    want = float(np.mean((trainer.model(X).astype(np.float64) - y) ** 2))
    assert trainer.step(X, y) == pytest.approx(want, rel=1e-5)


def test_a_list_is_the_one_input_of_a_model_of_one(root):
    trainer = kiln.Trainer(root / "m.kiln", model="Clf", seed=0)
    other = kiln.Trainer(root / "m.kiln", model="Clf", seed=0)
    assert trainer.step(X.tolist(), LABELS) == other.step(X, LABELS)


def test_evaluate_edges(root):
    trainer = kiln.Trainer(root / "m.kiln", model="Clf", seed=0)
    trainer.step(X, LABELS)
    whole = trainer.evaluate(X, LABELS, batch=37)
    assert trainer.evaluate(X, LABELS, batch=5)["loss"] == pytest.approx(whole["loss"],
                                                                           rel=1e-6)
    logits = trainer.model(X).astype(np.float64)
    logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    assert whole["loss"] == pytest.approx(-logp[np.arange(37), LABELS].mean(), rel=1e-5)
    assert whole["accuracy"] == pytest.approx(np.mean(logits.argmax(1) == LABELS))
    for batch in (0, -1, 2.5, True):
        with pytest.raises(KilnError) as err:
            trainer.evaluate(X, LABELS, batch=batch)
        assert err.value.code == "K0831"
    with pytest.raises(KilnError) as err:
        trainer.evaluate(X[:0], LABELS[:0])
    assert err.value.code == "K0830"


def test_checkpoint_of_batchnorm_resumes_bit_equal(root, tmp_path):
    # BatchNorm's num_batches_tracked is 0-d: the checkpoint once wrote it 1-d and refused it
    x = RNG.standard_normal((24, 1, 8, 8)).astype(np.float32)
    y = RNG.integers(0, 3, 24)
    parts = [RNG.permutation(24)[:8] for _ in range(4)]

    def make():
        return kiln.Trainer(root / "m.kiln", model="Cnn", seed=1,
                            optimizer=kiln.optim.SGD(lr=0.1, momentum=0.9),
                            schedule=kiln.optim.cosine(4, 1), clip_grad_norm=1.0)

    straight = make()
    losses = [straight.step(x[p], y[p]) for p in parts]
    first = make()
    head = [first.step(x[p], y[p]) for p in parts[:2]]
    first.save_checkpoint(tmp_path / "c.safetensors")
    second = make()
    second.load_checkpoint(tmp_path / "c.safetensors")
    assert second.params["bn.num_batches_tracked"].shape == ()
    assert head + [second.step(x[p], y[p]) for p in parts[2:]] == losses
    for path, value in straight.params.items():
        assert np.array_equal(second.params[path], value), path
    for key, value in straight.state.items():
        assert np.array_equal(second.state[key], value), key
    assert int(second.params["bn.num_batches_tracked"]) == 4
    # the trained model infers with the running statistics
    out = second.model(x)
    assert out.shape == (24, 3) and np.array_equal(out, straight.model(x))


def test_weights_from_a_checkpoint_say_what_it_is(root, tmp_path):
    trainer = kiln.Trainer(root / "m.kiln", model="Clf")
    trainer.save_checkpoint(tmp_path / "c.safetensors")
    with pytest.raises(KilnError) as err:
        kiln.Trainer(root / "m.kiln", model="Clf", weights=tmp_path / "c.safetensors")
    assert "--resume" in err.value.hint and "load_checkpoint" in err.value.hint


# ------------------------------------------------------------------ kiln train


def train(capsys, root, *more):
    return run(capsys, "train", root / "m.kiln", "--model", "Clf", "--epochs", "1",
               "--batch", "16", "--quiet", *more)


def test_cli_takes_float_class_labels(capsys, root):
    # y saved from pandas or sklearn as 0.0, 1.0, 2.0: class indices all the same
    code, out, err = train(capsys, root, "--data", root / "float_labels.npz")
    assert code == 0, err
    code, out_int, err = train(capsys, root, "--data", root / "int_labels.npz")
    assert out == out_int


def test_cli_validation_split_edges(capsys, root):
    code, _out, err = train(capsys, root, "--data", root / "tiny.npz", "--val-split", "0.99")
    assert code == 1 and "K0830" in err and "none to train on" in err
    # 5 examples at 0.05: one validates, rather than none silently
    code, out, err = train(capsys, root, "--data", root / "tiny.npz", "--val-split", "0.05")
    assert code == 0, err
    assert out.splitlines()[1].split()[2] != "-"  # a validation loss


@pytest.mark.parametrize(("more", "says"), [
    (["--early-stopping", "2", "--val-split", "0"], "no validation examples"),
    (["--early-stopping", "-1"], "--early-stopping must be >= 0"),
    (["--augment", "flip"], "--augment flip transforms images"),
    (["--augment", "crop"], "--augment crop transforms images"),
])
def test_cli_options_that_would_do_nothing_are_refused(capsys, root, more, says):
    code, out, err = train(capsys, root, "--data", root / "tiny.npz", *more)
    assert code == 1 and "K0830" in err and says in err
    assert "epoch" not in out


@pytest.mark.parametrize(("more", "code_", "says"), [
    (["-o", "{tmp}"], "K0830", "is a directory"),
    (["-o", "{tmp}/weights"], "K0403", "unsupported extension"),
    (["-o", "{tmp}/w.pt"], "K0403", "unsupported extension"),
    (["-o", "{tmp}/no/w.safetensors"], "K0830", "there is no folder"),
    (["--checkpoint", "{tmp}"], "K0830", "is a directory"),
    (["--checkpoint", "{tmp}/c.npz"], "K0838", "a checkpoint is a .safetensors file"),
    (["--log", "{tmp}"], "K0830", "is a directory"),
    (["--plot", "{tmp}/curves.xyz"], "K0830", "matplotlib writes no 'xyz'"),
    (["-o", "{tmp}/a.safetensors", "--checkpoint", "{tmp}/a.safetensors"], "K0830",
     "given to two options"),
])
def test_cli_outputs_are_checked_before_training(capsys, root, tmp_path, more, code_, says):
    if "--plot" in more:
        pytest.importorskip("matplotlib", reason="--plot draws with matplotlib")
    (tmp_path / "keep.safetensors").write_bytes(b"mine")
    more = [m.format(tmp=tmp_path) for m in more]
    code, out, err = train(capsys, root, "--data", root / "tiny.npz", *more)
    assert code == 1 and code_ in err and says in err, err
    assert "epoch" not in out  # refused before any training
    assert sorted(os.listdir(tmp_path)) == ["keep.safetensors"]


def test_cli_weights_are_readable_as_any_new_file(capsys, root, tmp_path):
    old = os.umask(0o022)
    try:
        code, _out, err = train(capsys, root, "--data", root / "tiny.npz", "-o",
                                tmp_path / "w.safetensors", "--checkpoint",
                                tmp_path / "c.safetensors")
    finally:
        os.umask(old)
    assert code == 0, err
    for name in ("w.safetensors", "c.safetensors"):
        assert os.stat(tmp_path / name).st_mode & 0o777 == 0o644, name  # not safetensors' 0600


def test_pytorch_and_keras_names():
    from kiln.train.program import LossSpec

    assert LossSpec.parse("BCEWithLogitsLoss").name == "binary_cross_entropy_with_logits"
    assert LossSpec.parse("CrossEntropyLoss").name == "cross_entropy"
    assert LossSpec.parse("mean_squared_error").name == "mse_loss"
    # Keras's cross entropies take probabilities: named, not aliased
    with pytest.raises(KilnError) as err:
        LossSpec.parse("categorical_crossentropy")
    assert err.value.code == "K0837" and "leave out a final softmax" in err.value.hint
    assert kiln.optim.by_name("AdamW", lr=0.1).config() == kiln.optim.AdamW(lr=0.1).config()
    assert kiln.optim.by_name("RMSprop", lr=0.1).config()["name"] == "rmsprop"


def test_resume_names_an_argument_left_at_its_default(capsys, root, tmp_path):
    ckpt = tmp_path / "c.safetensors"
    code, _out, err = train(capsys, root, "--data", root / "tiny.npz", "--checkpoint", ckpt)
    assert code == 0, err
    code, _out, err = run(capsys, "train", root / "m.kiln", "--model", "Bin", "--loss", "mse",
                          "--data", root / "tiny.npz", "--resume", ckpt, "--quiet")
    assert code == 1 and "its model is 'Clf', this trainer's 'Bin'" in err
    # the default, given: the checkpoint says it was not
    trainer = kiln.Trainer(root / "m.kiln", model="Clf", args={"hidden": 8})
    with pytest.raises(KilnError) as err:
        trainer.load_checkpoint(ckpt)
    assert "its args.hidden is not given, this trainer's 8" in str(err.value)


TWO = """
import std.nn
model Two {
  a = nn.Linear(4, 8)
  b = nn.Linear(2, 8)
  head = nn.Linear(8, 3)
  forward(x: f32[B, 4], z: f32[B, 2]) -> f32[B, 3] {
    return relu(a(x) + b(z)) |> head
  }
}
"""


@pytest.mark.parametrize("own_validation", [True, False])
def test_cli_second_input_per_example(capsys, tmp_path, own_validation):
    # an image and its metadata, a sentence and its mask: both one row per example, split,
    # shuffled and batched together (once refused, or given whole to every step)
    import json

    from kiln.train.loop import shuffled_batches

    (tmp_path / "two.kiln").write_text(TWO)
    rng = np.random.default_rng(3)
    x, z = X, rng.standard_normal((37, 2))  # z float64: converted as x is
    if own_validation:
        np.savez(tmp_path / "d.npz", x=x[:30], z=z[:30], y=LABELS[:30], x_val=x[30:],
                 z_val=z[30:], y_val=LABELS[30:])
        train_rows, val_rows = np.arange(30), np.arange(30, 37)
    else:
        np.savez(tmp_path / "d.npz", x=x, z=z, y=LABELS)
        order = np.random.default_rng(0).permutation(37)  # load_dataset's split, seed 0
        train_rows, val_rows = order[:30], order[30:]  # round(37 * 0.2) = 7 validate
    code, _out, err = run(capsys, "train", tmp_path / "two.kiln", "--data", tmp_path / "d.npz",
                          "--epochs", "2", "--batch", "8", "--quiet", "--log",
                          tmp_path / "log.jsonl")
    assert code == 0, err
    rows = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    trainer = kiln.Trainer(tmp_path / "two.kiln", seed=0)
    xt, zt, yt = x[train_rows], z[train_rows].astype(np.float32), LABELS[train_rows]
    for epoch, row in enumerate(rows):
        _, parts = shuffled_batches(30, 8, 0, epoch)
        losses = [trainer.step((xt[p], zt[p]), yt[p]) * len(p) for p in parts]
        assert row["train_loss"] == pytest.approx(sum(losses) / 30, rel=1e-6)
        val = trainer.evaluate((x[val_rows], z[val_rows].astype(np.float32)), LABELS[val_rows])
        assert row["val_loss"] == pytest.approx(val["loss"], rel=1e-6)


def test_cli_per_example_input_of_other_rows_is_refused(capsys, tmp_path):
    (tmp_path / "two.kiln").write_text(TWO)
    np.savez(tmp_path / "d.npz", x=X, z=np.zeros((36, 2), np.float32), y=LABELS)
    code, _out, err = run(capsys, "train", tmp_path / "two.kiln", "--data", tmp_path / "d.npz",
                          "--quiet")
    assert code == 1 and "K0830" in err and "z per example" in err
    np.savez(tmp_path / "d.npz", x=X, z=np.zeros((37, 2), np.float32), y=LABELS, x_val=X,
             y_val=LABELS)
    code, _out, err = run(capsys, "train", tmp_path / "two.kiln", "--data", tmp_path / "d.npz",
                          "--quiet")
    assert code == 1 and "K0830" in err and "z_val" in err


def test_regression_data_under_the_default_loss_says_which_loss(root):
    trainer = kiln.Trainer(root / "m.kiln", model="Bin")  # cross_entropy, the default
    with pytest.raises(KilnError) as err:
        trainer.step(X, np.round(X[:, 0] * 100))  # whole-number regression targets
    assert err.value.code == "K0834"
    with pytest.raises(KilnError) as err:
        trainer.step(X, np.arange(37))
    assert err.value.code == "K0835" and "mse, bce_with_logits" in err.value.hint


@pytest.mark.parametrize("loss", ["bce_with_logits", "bce"])
def test_binary_classifier_gets_classification_metrics(root, loss):
    # Keras's binary_accuracy: a probability above 0.5, a logit above 0
    y = (X[:, 0] > 0).astype(np.float32)
    model = "Bin" if loss == "bce_with_logits" else "Prob"
    trainer = kiln.Trainer(root / "m.kiln", model=model, loss=loss, seed=0)
    trainer.step(X, y)
    metrics = trainer.evaluate(X, y, batch=8)
    predicted = trainer.model(X)[:, 0] > (0.0 if loss == "bce_with_logits" else 0.5)
    assert metrics["accuracy"] == pytest.approx(np.mean(predicted == y))
    tp = np.sum(predicted & (y == 1))
    precision_1 = tp / max(predicted.sum(), 1)
    precision_0 = np.sum(~predicted & (y == 0)) / max((~predicted).sum(), 1)
    assert metrics["precision"] == pytest.approx((precision_0 + precision_1) / 2)
    # soft targets (label smoothing): the loss alone
    assert set(trainer.evaluate(X, y * 0.9 + 0.05)) == {"loss"}


def test_channels_last_images_are_refused_not_scrambled():
    from kiln.compiler.interface import Port
    from kiln.compiler.types import TensorType
    from kiln.train.data import shape_examples

    port = Port("x", TensorType("f32", ("B", 3, 4, 5)))
    images = RNG.standard_normal((2, 3, 4, 5)).astype(np.float32)
    with pytest.raises(KilnError) as err:
        shape_examples(images.transpose(0, 2, 3, 1), port)  # Keras's [N, H, W, C]
    assert err.value.code == "K0830" and "transpose(0, 3, 1, 2)" in err.value.hint
    # flat rows, and axes of size 1 moved, are the same elements in the same order
    np.testing.assert_array_equal(shape_examples(images.reshape(2, 60), port), images)
    gray = Port("x", TensorType("f32", ("B", 1, 4, 5)))
    np.testing.assert_array_equal(shape_examples(images[..., :1, :, :].transpose(0, 2, 3, 1),
                                                 gray), images[:, :1])


def test_optimizer_by_name_or_a_clear_refusal(root):
    trainer = kiln.Trainer(root / "m.kiln", model="Clf", optimizer="AdamW")
    assert trainer.optimizer.config() == kiln.optim.AdamW().config()
    for wrong, says in ((kiln.optim.Adam, "the class"), (3, "not int")):
        with pytest.raises(KilnError) as err:
            kiln.Trainer(root / "m.kiln", model="Clf", optimizer=wrong)
        assert err.value.code == "K0831" and says in str(err.value)
        assert "kiln.optim.Adam(lr=1e-3)" in err.value.hint


def test_std_loss_of_a_model_of_several_outputs_reads_the_first(tmp_path):
    # (logits, features): once called as cross_entropy(logits, features, target), the
    # features taken for the target and the target for the class weights
    (tmp_path / "two_out.kiln").write_text("""
import std.nn
model TwoOut {
  fc = nn.Linear(4, 8)
  head = nn.Linear(8, 3)
  forward(x: f32[B, 4]) -> (logits: f32[B, 3], feats: f32[B, 8]) {
    h = relu(fc(x))
    return (head(h), h)
  }
}
""")
    trainer = kiln.Trainer(tmp_path / "two_out.kiln")
    logits = trainer.model(X)[0].astype(np.float64)
    logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    assert trainer.step(X, LABELS) == pytest.approx(-logp[np.arange(37), LABELS].mean(),
                                                    rel=1e-5)


def test_class_indices_of_shape_n_by_1(root):
    # Keras's sparse labels are often [N, 1]; PyTorch refuses them, kiln takes the column
    trainer = kiln.Trainer(root / "m.kiln", model="Clf", seed=0)
    other = kiln.Trainer(root / "m.kiln", model="Clf", seed=0)
    assert trainer.step(X, LABELS[:, None]) == other.step(X, LABELS)
    with pytest.raises(KilnError) as err:
        trainer.step(X, np.stack([LABELS, LABELS], 1))
    assert err.value.code == "K0834" and "one axis fewer" in str(err.value)


def test_dataset_files_kiln_train_does_not_read(tmp_path):
    from kiln.train.data import load_dataset

    (tmp_path / "d.csv").write_text("a,b\n1,2\n")
    with pytest.raises(KilnError) as err:
        load_dataset(str(tmp_path / "d.csv"))
    assert err.value.code == "K0830" and "np.savez" in err.value.hint
    with pytest.raises(KilnError) as err:
        load_dataset(str(tmp_path / "none.npz"))
    assert str(err.value).splitlines()[0].endswith("dataset " + str(tmp_path / "none.npz")
                                                   + ": no such file")


def test_resume_with_another_batch_is_refused(capsys, root, tmp_path):
    # the epoch to go on from is the step over the steps per epoch: another --batch (or
    # other examples, another seed's shuffle) would go on somewhere else, silently
    ckpt = tmp_path / "c.safetensors"
    code, _out, err = train(capsys, root, "--data", root / "float_labels.npz", "--checkpoint",
                            ckpt)
    assert code == 0, err
    code, _out, err = train(capsys, root, "--data", root / "float_labels.npz", "--resume",
                            ckpt, "--batch", "8")
    assert code == 1 and "K0838" in err and "batch was 16, this run's is 8" in err
    code, _out, err = train(capsys, root, "--data", root / "float_labels.npz", "--resume",
                            ckpt, "--seed", "1")
    assert code == 1 and "K0838" in err and "seed was 0" in err
    code, out, err = train(capsys, root, "--data", root / "float_labels.npz", "--resume",
                           ckpt, "--epochs", "2")
    assert code == 0, err
    assert [line.split()[0] for line in out.splitlines()[1:]] == ["2"]
