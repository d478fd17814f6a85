"""A loss that applies an activation the model's output already applied (cross_entropy on a
softmax: it trains, slowly) is a KilnWarning naming the loss, the model and where the
activation is; the same model with its scores, or a loss that takes probabilities, is not."""

from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pytest

import kiln

SOURCE = """
import std.nn
model Probs {
  body = [nn.Linear(4, 3), nn.Softmax(dim = 1)]
  forward(x: f32[B, 4]) -> f32[B, 3] { return body(x) }
}
model Scores {
  fc = nn.Linear(4, 3)
  forward(x: f32[B, 4]) -> f32[B, 3] { return fc(x) }
}
model LogProbs {
  fc = nn.Linear(4, 3)
  forward(x: f32[B, 4]) -> f32[B, 3] { return log_softmax(fc(x), axis = -1) }
}
model Gate {
  fc = nn.Linear(4, 1)
  forward(x: f32[B, 4]) -> f32[B, 1] {
    return sigmoid(fc(x))
  }
}
model TwoOut {
  fc = nn.Linear(4, 3)
  forward(x: f32[B, 4]) -> (f32[B, 3], f32[B, 3]) { return fc(x), softmax(fc(x), -1) }
}
"""


@pytest.fixture(scope="module")
def path(tmp_path_factory):
    p = tmp_path_factory.mktemp("warn") / "models.kiln"
    p.write_text(SOURCE)
    return str(p)


def caught(path, loss, model):
    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter("always")
        kiln.Trainer(path, loss=loss, model=model, target="reference")
    return [w for w in got if issubclass(w.category, kiln.KilnWarning)]


@pytest.mark.parametrize(("loss", "model", "words"), [
    ("cross_entropy", "Probs", ["cross_entropy takes logits", "Probs's output is a softmax",
                                "body.1", "nll_loss on log_softmax"]),
    ("CrossEntropyLoss", "Probs", ["cross_entropy takes logits"]),
    ("nll_loss", "Probs", ["log-probabilities", "end the model with log_softmax"]),
    ("binary_cross_entropy_with_logits", "Gate",
     ["takes logits", "Gate's output is a sigmoid", "models.kiln:", "binary_cross_entropy"]),
])
def test_a_loss_on_its_own_activation_warns(path, loss, model, words):
    (warning,) = caught(path, loss, model)
    for word in words:
        assert word in str(warning.message)


@pytest.mark.parametrize(("loss", "model"), [
    ("cross_entropy", "Scores"), ("cross_entropy", "LogProbs"), ("nll_loss", "LogProbs"),
    ("binary_cross_entropy", "Gate"), ("mse_loss", "Probs"),
    ("cross_entropy", "TwoOut"),  # the loss takes the first output: the scores
])
def test_a_loss_that_fits_the_output_is_quiet(path, loss, model):
    assert caught(path, loss, model) == []


def test_the_warning_can_be_an_error(path):
    with warnings.catch_warnings():
        warnings.simplefilter("error", kiln.KilnWarning)
        with pytest.raises(kiln.KilnWarning):
            kiln.Trainer(path, loss="cross_entropy", model="Probs", target="reference")


def test_kiln_train_prints_it_as_kiln_does(path, tmp_path):
    data = tmp_path / "d.npz"
    rng = np.random.default_rng(0)
    np.savez(data, x=rng.standard_normal((16, 4)).astype(np.float32),
             y=rng.integers(0, 3, 16))
    run = subprocess.run([sys.executable, "-m", "kiln.cli", "train", path, "--model", "Probs",
                          "--data", str(data), "--epochs", "1", "--batch", "8",
                          "--target", "reference", "-o", str(tmp_path / "w.safetensors")],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    lines = [line for line in run.stderr.splitlines() if "cross_entropy takes logits" in line]
    assert len(lines) == 1 and lines[0].startswith("kiln: warning: ")


@pytest.mark.parametrize(("loss", "warns"), [("bce", False), ("bce_with_logits", True),
                                             ("hinge", True)])
def test_a_gan_loss_on_scores_warns_of_a_sigmoid_discriminator(loss, warns):
    # std.gan's DCGAN discriminator ends in nn.Sigmoid, as the PyTorch tutorial's does
    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter("always")
        kiln.GANTrainer("std.gan", args_g={"nz": 8, "ngf": 4, "nc": 1},
                        args_d={"nc": 1, "ndf": 4}, loss=loss, target="reference")
    messages = [str(w.message) for w in got if issubclass(w.category, kiln.KilnWarning)]
    if warns:
        (message,) = messages
        assert f"GAN loss {loss} takes the discriminator's scores" in message
        assert "Discriminator's output is a sigmoid" in message and "loss='bce'" in message
    else:
        assert messages == []
