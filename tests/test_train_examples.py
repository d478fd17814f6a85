"""The training examples end to end (issue 15): an LSTM learns a synthetic sequence task, a
VAE's ELBO falls on digits, a GCN classifies a stochastic-block-model graph; their synthetic
datasets; and what the trainer needs for them: noise inputs, inputs given whole, metrics
over the targets a loss counts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from _clitest import run

import kiln
from kiln.compiler.errors import KilnError
from kiln.train import data as datasets
from kiln.train import synthetic

EXAMPLES = Path(__file__).parent.parent / "examples"


def last_rows(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()]


# ------------------------------------------------------------------ datasets
def test_majority_labels_count_the_ones():
    data = synthetic.majority(n=50, length=5, seed=3)
    assert data["x"].shape == (50, 5) and data["x"].dtype == np.int64
    assert set(np.unique(data["x"])) <= {0, 1}
    np.testing.assert_array_equal(data["y"], data["x"].sum(axis=1) >= 3)
    np.testing.assert_array_equal(synthetic.majority(n=50, length=5, seed=3)["x"], data["x"])
    with pytest.raises(KilnError) as err:
        synthetic.majority(length=4)
    assert err.value.code == "K0845"


def test_sbm_is_one_graph_split_into_training_and_held_out_nodes():
    data = synthetic.sbm(nodes=60, communities=3, features=4, seed=1)
    x, edges, y, y_val = data["x"], data["edge_index"], data["y"], data["y_val"]
    assert x.shape == (60, 4) and data["x_val"] is x
    assert edges.shape[0] == 2 and edges.min() >= 0 and edges.max() < 60
    pairs = set(map(tuple, edges.T))
    assert all((b, a) in pairs for a, b in pairs)  # undirected: both directions listed
    scored, held_out = y != synthetic.IGNORE, y_val != synthetic.IGNORE
    assert not (scored & held_out).any() and (scored | held_out).all()
    assert held_out.sum() == 30
    label = np.where(scored, y, y_val)
    assert set(np.unique(label)) == {0, 1, 2}
    inside = np.mean(label[edges[0]] == label[edges[1]])
    assert inside > 0.6  # p_in = 0.1 within, p_out = 0.01 across: mostly within communities
    with pytest.raises(KilnError) as err:
        synthetic.sbm(communities=1)
    assert err.value.code == "K0845"


def test_synthetic_writes_npz(tmp_path, capsys):
    out = tmp_path / "m.npz"
    assert synthetic.main(["majority", str(out), "--seed", "2"]) == 0
    with np.load(out) as saved:
        np.testing.assert_array_equal(saved["x"], synthetic.majority(seed=2)["x"])
    link = tmp_path / "link.npz"
    link.symlink_to(tmp_path / "elsewhere.npz")
    assert synthetic.main(["majority", str(link)]) == 0
    # never written through a symlink: the link is replaced, its target not created
    assert not link.is_symlink() and not (tmp_path / "elsewhere.npz").exists()
    (tmp_path / "dir.npz").mkdir()
    assert synthetic.main(["majority", str(tmp_path / "dir.npz")]) == 1
    assert "K0845" in capsys.readouterr().err


# ------------------------------------------------------------------ the examples
def test_lstm_learns_majority(capsys, tmp_path):
    data, log = tmp_path / "majority.npz", tmp_path / "run.jsonl"
    synthetic.write_npz(str(data), synthetic.majority(n=600, seed=0))
    code, _out, err = run(capsys, "train", EXAMPLES / "lstm_majority.kiln", "--data", data,
                          "--lr", "1e-2", "--epochs", "3", "--batch", "32", "--seed", "0",
                          "--quiet", "--log", log)
    assert code == 0, err
    assert last_rows(log)[-1]["accuracy"] >= 0.9  # chance: 0.5


def test_vae_elbo_falls_on_digits(capsys, tmp_path):
    log = tmp_path / "run.jsonl"
    code, _out, err = run(capsys, "train", EXAMPLES / "vae.kiln", "--arg", "features=64",
                          "--arg", "hidden=64", "--arg", "latent=4", "--data", "digits",
                          "--autoencode", "--noise", "eps", "--loss",
                          EXAMPLES / "vae.kiln:elbo", "--lr", "2e-3", "--epochs", "3",
                          "--batch", "64", "--seed", "0", "--quiet", "--log", log)
    assert code == 0, err
    val = [r["val_loss"] for r in last_rows(log)]
    assert val[0] > val[1] > val[2] and val[2] < 0.9 * val[0], val
    assert "accuracy" not in last_rows(log)[-1]  # not a classifier: no class metrics


def test_gcn_classifies_sbm_nodes(capsys, tmp_path):
    data, log = tmp_path / "sbm.npz", tmp_path / "run.jsonl"
    synthetic.write_npz(str(data), synthetic.sbm(seed=0))
    code, _out, err = run(capsys, "train", EXAMPLES / "gcn.kiln", "--arg", "num_features=16",
                          "--arg", "num_classes=3", "--data", data, "--loss", "nll_loss",
                          "--full-batch", "--lr", "0.01", "--weight-decay", "5e-4",
                          "--epochs", "30", "--seed", "0", "--quiet", "--log", log)
    assert code == 0, err
    assert last_rows(log)[-1]["accuracy"] >= 0.9  # held-out nodes; chance: 1/3


# ------------------------------------------------------------------ what the examples need
TWO_INPUTS = """
import std.nn
model Net() {
  fc = nn.Linear(3, 2)
  forward(x: f32[B, 3], eps: f32[B, 3]) -> f32[B, 2] {
    return fc(x + eps)
  }
}
"""


@pytest.fixture
def two_inputs(tmp_path):
    path = tmp_path / "net.kiln"
    path.write_text(TWO_INPUTS)
    return path


def test_noise_is_seeded_by_the_step(two_inputs):
    x, y = np.ones((4, 3), np.float32), np.array([0, 1, 0, 1])

    def losses(seed):
        trainer = kiln.Trainer(two_inputs, optimizer=kiln.optim.SGD(lr=0.0), seed=seed,
                               noise=["eps"], target="reference")
        return [trainer.step(x, y) for _ in range(2)], trainer.evaluate(x, y)["loss"]

    (first, second), evaluated = losses(0)
    assert first != second  # lr 0: only the noise differs between steps
    assert losses(0) == ([first, second], evaluated)  # the same seed draws the same noise
    assert losses(1)[0][0] != first
    trainer = kiln.Trainer(two_inputs, seed=0, noise=["eps"], target="reference")
    assert trainer.evaluate(x, y) == trainer.evaluate(x, y)  # every evaluation the same


def test_checkpoint_records_which_inputs_are_drawn(two_inputs, tmp_path):
    ckpt = tmp_path / "ckpt.safetensors"
    kiln.Trainer(two_inputs, noise=["eps"], target="reference").save_checkpoint(ckpt)
    with pytest.raises(KilnError) as err:  # without noise, eps would be data: another run
        kiln.Trainer(two_inputs, target="reference").load_checkpoint(ckpt)
    assert err.value.code == "K0838" and "noise" in err.value.message


@pytest.mark.parametrize(("noise", "code"), [(["z"], "K0846"), (["x"], "K0846")])
def test_noise_must_name_a_later_input(two_inputs, noise, code):
    with pytest.raises(KilnError) as err:
        kiln.Trainer(two_inputs, noise=noise, target="reference")
    assert err.value.code == code


def test_noise_needs_a_float_of_fixed_sizes(tmp_path):
    path = tmp_path / "graph.kiln"
    path.write_text(TWO_INPUTS.replace("eps: f32[B, 3]", "eps: f32[B, K]")
                    .replace("fc(x + eps)", "fc(x + sum(eps, axis = 1, keepdims = true))"))
    with pytest.raises(KilnError) as err:
        kiln.Trainer(path, noise=["eps"], target="reference")
    assert err.value.code == "K0847" and "eps" in err.value.message


@pytest.mark.parametrize(("arrays", "message"), [({}, "nothing to feed input eps"),
                                                 ({"eps": 1, "mask": 1}, "'mask'")])
def test_kiln_train_feeds_every_input(capsys, two_inputs, tmp_path, arrays, message):
    data = tmp_path / "d.npz"
    np.savez(data, x=np.zeros((8, 3), np.float32), y=np.zeros(8, np.int64),
             **{k: np.zeros((8, 3), np.float32) for k in arrays})
    code, _out, err = run(capsys, "train", two_inputs, "--data", data, "--epochs", "1",
                          "--val-split", "0", "--quiet", "--target", "reference")
    assert code == 1 and "K0846" in err and message in err


def test_evaluate_scores_only_the_counted_targets(two_inputs):
    trainer = kiln.Trainer(two_inputs, noise=["eps"], target="reference", seed=0)
    x = np.random.default_rng(0).standard_normal((6, 3)).astype(np.float32)
    predicted = np.argmax(trainer.model(x, np.zeros((6, 3), np.float32)), axis=1)
    y = np.where(np.arange(6) < 3, predicted, -100)  # the first three right, the rest ignored
    trainer = kiln.Trainer(two_inputs, target="reference", seed=0)
    assert trainer.evaluate((x, np.zeros((6, 3), np.float32)), y)["accuracy"] == 1.0


GRAPH = """
import std.gnn
model G() {
  conv = gnn.GCNConv(2, 2)
  forward(x: f32[N, 2], edge_index: i64[2, E]) -> f32[N, 2] {
    return log_softmax(conv(x, edge_index), axis = -1)
  }
}
"""


def test_evaluate_gives_a_graph_whole(tmp_path):
    path = tmp_path / "g.kiln"
    path.write_text(GRAPH)
    trainer = kiln.Trainer(path, loss="nll_loss", target="reference", seed=0)
    x = np.arange(10, dtype=np.float32).reshape(5, 2)
    edges = np.array([[0, 4, 1, 3], [4, 0, 3, 1]])
    y = np.array([0, 1, 1, 0, 1])
    # batches of 2 nodes would cut the graph (node 4 in another batch than node 0)
    assert trainer.evaluate((x, edges), y, batch=2) == trainer.evaluate((x, edges), y, batch=5)


def test_a_graph_is_never_split_at_random(tmp_path):
    graph = synthetic.sbm(nodes=12, communities=2, features=2, seed=0)
    data = tmp_path / "g.npz"
    np.savez(data, x=graph["x"], y=graph["y"], edge_index=graph["edge_index"])
    with pytest.raises(KilnError) as err:
        datasets.load_dataset(str(data), val_split=0.2)
    assert err.value.code == "K0830" and "edge_index" in err.value.message
    whole = datasets.load_dataset(str(data), val_split=0)
    np.testing.assert_array_equal(whole.x, graph["x"])  # in order: edge_index still fits
    assert len(whole.x_val) == 0


def test_a_loss_of_ones_own_takes_class_indices(capsys, tmp_path):
    """kiln train gives a FILE.kiln:NAME loss integer labels as class indices (a masked
    sequence loss, a custom NLL), not converted to the model's float output."""
    (tmp_path / "net.kiln").write_text("""
import std.losses
import std.nn
fn half_nll(out, target) { return 0.5 * losses.nll_loss(out, target) }
model Net() {
  forward(x: f32[B, 4]) -> f32[B, 3] { return log_softmax(nn.Linear(4, 3)(x), axis = -1) }
}
""")
    rng = np.random.default_rng(0)
    data = tmp_path / "d.npz"
    np.savez(data, x=rng.standard_normal((20, 4)).astype(np.float32),
             y=rng.integers(0, 3, 20))
    code, _out, err = run(capsys, "train", tmp_path / "net.kiln", "--data",
                          data, "--loss", f"{tmp_path / 'net.kiln'}:half_nll", "--epochs", "1",
                          "--quiet", "--target", "reference")
    assert code == 0, err
