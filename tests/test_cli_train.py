"""`kiln train`: the loop, its files (weights, log, checkpoint, plot), resuming, early
stopping, datasets and augmentations."""

from __future__ import annotations

import json

import numpy as np
import pytest
from _clitest import run

import kiln
from kiln.compiler.errors import KilnError
from kiln.train import data as datasets

pytest.importorskip("sklearn", reason="kiln train's datasets come from scikit-learn")

NET = """
import std.nn
model Net(hidden: int = 16) {
  forward(x: f32[B, 4]) -> f32[B, 3] {
    return x |> nn.Linear(4, hidden) |> relu |> nn.Linear(hidden, 3)
  }
}
"""


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A small model and iris with one-hot targets (class probabilities) as a .npz."""
    import sklearn.datasets

    root = tmp_path_factory.mktemp("cli_train")
    (root / "net.kiln").write_text(NET)
    bunch = sklearn.datasets.load_iris()
    x = ((bunch.data - bunch.data.mean(0)) / bunch.data.std(0)).astype(np.float32)
    np.savez(root / "iris.npz", x=x, y=np.eye(3, dtype=np.float32)[bunch.target])
    return root


def train(capsys, files, *more):
    return run(capsys, "train", files / "net.kiln", "--data", files / "iris.npz", "--lr",
               "0.05", "--batch", "16", "--quiet", *more)


def test_train_writes_weights_log_and_checkpoint(capsys, files, tmp_path):
    weights, log = tmp_path / "w.safetensors", tmp_path / "run.jsonl"
    ckpt = tmp_path / "c.safetensors"
    code, out, err = train(capsys, files, "--epochs", "4", "-o", weights, "--log", log,
                           "--checkpoint", ckpt)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["epoch", "train_loss", "val_loss", "accuracy", "precision",
                                "recall", "f1", "lr"]
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    assert rows[-1]["accuracy"] > 0.8  # iris with a small MLP
    model = kiln.compile(files / "net.kiln", weights=weights)
    assert model(np.zeros((2, 4), np.float32)).shape == (2, 3)
    resumed_log = tmp_path / "resumed.jsonl"
    code, out, err = train(capsys, files, "--epochs", "5", "--resume", ckpt, "--log",
                           resumed_log)
    assert code == 0, err
    # resumed after epoch 4: only epoch 5 runs
    assert [json.loads(r)["epoch"] for r in resumed_log.read_text().splitlines()] == [5]


def test_resume_refuses_another_optimizer(capsys, files, tmp_path):
    ckpt = tmp_path / "c.safetensors"
    assert train(capsys, files, "--epochs", "1", "--checkpoint", ckpt)[0] == 0
    code, _out, err = train(capsys, files, "--epochs", "2", "--optimizer", "sgd", "--resume",
                            ckpt)
    assert code == 1 and "K0838" in err and "optimizer" in err


def test_early_stopping_stops(capsys, files):
    # a learning rate this large makes the validation loss climb at once
    code, out, err = train(capsys, files, "--epochs", "30", "--lr", "5", "--optimizer", "sgd",
                           "--early-stopping", "2")
    assert code == 0, err
    assert "early stopping" in out
    epochs = [line.split()[0] for line in out.splitlines()[1:] if line.split()[0].isdigit()]
    assert len(epochs) < 30


def test_plot_is_a_png(capsys, files, tmp_path):
    pytest.importorskip("matplotlib", reason="--plot draws with matplotlib")
    plot = tmp_path / "curves.png"
    assert train(capsys, files, "--epochs", "2", "--plot", plot)[0] == 0
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(("args", "code"), [
    (["--data", "mnist"], "K0830"),
    (["--data", "iris", "--val-split", "1.5"], "K0830"),
    (["--data", "iris", "--optimizer", "lion"], "K0832"),
    (["--data", "iris", "--loss", "hinge"], "K0837"),
    (["--data", "iris", "--trainable", "conv.*"], "K0833"),
])
def test_bad_options_are_errors(capsys, files, args, code):
    status, _out, err = run(capsys, "train", files / "net.kiln", "--epochs", "1", "--quiet",
                            *args)
    assert status == 1 and code in err


def test_npz_without_y_is_refused(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.zeros((4, 2)))
    with pytest.raises(KilnError) as err:
        datasets.load_dataset(str(tmp_path / "d.npz"))
    assert err.value.code == "K0830" and "'y'" in err.value.message


def test_datasets_split_and_shape():
    digits = datasets.load_dataset("digits", 0.25, seed=1)
    assert len(digits.x) + len(digits.x_val) == 1797
    assert len(digits.x_val) == round(1797 * 0.25)
    assert digits.x.max() <= 1.0  # pixels 0..16 scaled to [0, 1]
    again = datasets.load_dataset("digits", 0.25, seed=1)
    np.testing.assert_array_equal(digits.y_val, again.y_val)

    class Port:
        type = kiln.compiler.types.TensorType("f32", ("B", 1, 8, 8))

    images = datasets.shape_examples(digits.x[:5], Port)
    assert images.shape == (5, 1, 8, 8) and images.dtype == np.float32
    np.testing.assert_array_equal(images[:, 0, 2], digits.x[:5, 16:24])


def test_augmentations_are_seeded_and_keep_shapes():
    x = np.arange(2 * 1 * 4 * 4, dtype=np.float32).reshape(2, 1, 4, 4)
    for name in datasets.AUGMENTATIONS:
        a = datasets.augment(x, [name], np.random.default_rng(0))
        b = datasets.augment(x, [name], np.random.default_rng(0))
        assert a.shape == x.shape and a.dtype == x.dtype
        np.testing.assert_array_equal(a, b)
    flipped = datasets.flip(x, np.random.default_rng(0))
    for img, out in zip(x, flipped):  # each image is itself or its mirror
        assert np.array_equal(out, img) or np.array_equal(out, img[..., ::-1])
    cropped = datasets.crop(x, np.random.default_rng(1), padding=1)
    # a crop shifts by at most one pixel: every value it keeps is the image's own
    assert set(np.unique(cropped)) <= set(np.unique(x)) | {0.0}


def test_class_indices_on_iris(capsys, files):
    code, out, err = run(capsys, "train", files / "net.kiln", "--data", "iris", "--epochs", "3",
                         "--lr", "0.05", "--batch", "16", "--quiet")
    assert code == 0, err
    assert float(out.splitlines()[-1].split()[3]) > 0.7


def test_lenet_style_cnn_on_digits(capsys):
    """examples/digits_cnn.kiln reaches 97 % validation accuracy on digits (its docs command,
    with fewer epochs)."""
    from pathlib import Path

    example = Path(__file__).parent.parent / "examples" / "digits_cnn.kiln"
    code, out, err = run(capsys, "train", example, "--data", "digits", "--optimizer", "adam",
                         "--lr", "5e-3", "--schedule", "cosine", "--epochs", "12", "--batch",
                         "32", "--seed", "0",
                         "--quiet")
    assert code == 0, err
    accuracy = float(out.splitlines()[-1].split()[3])
    assert accuracy >= 0.97
