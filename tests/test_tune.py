"""kiln.tune on a local Ray cluster (two CPUs): a grid of 4 and a 4-trial Optuna search (with
ASHA) finish and pick the best trial of their results table, whose saved weights give that
trial's validation accuracy in kiln.compile and equal what `kiln train` makes of the same
configuration; failed trials are listed; options a search cannot run are refused before any
trial runs. The search space's checks, which need no Ray, are in test_tune_space.py."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="Ray Tune is an optional extra (pip install 'kiln[tune]')")
pytest.importorskip("ray.tune", reason="Ray Tune is an optional extra (pip install 'kiln[tune]')")
pytest.importorskip("optuna", reason="Optuna is an optional extra (pip install 'kiln[tune]')")
pytest.importorskip("sklearn", reason="the iris dataset comes with scikit-learn")

from _raycluster import local_cluster  # noqa: E402

import kiln  # noqa: E402
import kiln.tune  # noqa: E402
from kiln import KilnError  # noqa: E402
from kiln.cli import main  # noqa: E402
from kiln.runtime.weights import load_weights  # noqa: E402
from kiln.train.data import load_dataset  # noqa: E402
from kiln.tune import WEIGHTS_FILE, Setup, train_trial  # noqa: E402

NET = """
import std.nn

model Net(hidden: int = 8) {
  forward(x: f32[B, 4]) -> f32[B, 3] {
    return x |> nn.Linear(4, hidden) |> relu |> nn.Linear(hidden, 3)
  }
}
"""
EPOCHS = 2


@pytest.fixture(scope="module")
def cluster():
    yield from local_cluster(__name__)  # this module's classes go to the workers by value


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    path = tmp_path_factory.mktemp("tune") / "net.kiln"
    path.write_text(NET)
    return path


def val_accuracy(net, config: dict, weights) -> float:
    """The accuracy on iris's validation split (as kiln.tune splits it, seed 0) of the model
    compiled with the configuration's model arguments and the weights."""
    data = load_dataset("iris", 0.2, 0)
    model = kiln.compile(net, args={"hidden": config["hidden"]}, weights=weights)
    predicted = np.argmax(model(data.x_val.astype(np.float32)), axis=1)
    return float(np.mean(predicted == data.y_val))


def check_best(result, net, output) -> None:
    """The best trial is the first row of the table and has the best metric of all; its
    weights file is what the result holds and gives its validation accuracy."""
    finished = [t for t in result.trials if t.error is None]
    assert result.best is result.trials[0]
    assert result.best.metrics["val_accuracy"] == max(t.metrics["val_accuracy"]
                                                      for t in finished)
    assert result.table().splitlines()[1].split()[:2] == ["*", result.best.id]
    saved = load_weights(output)
    assert saved.keys() == result.weights.keys()
    for k in saved:
        np.testing.assert_array_equal(saved[k], result.weights[k])
    assert val_accuracy(net, result.best.config, output) == result.best.metrics["val_accuracy"]


def test_grid_of_four_picks_the_best(cluster, net, tmp_path):
    output = tmp_path / "best.safetensors"
    result = kiln.tune.run(net, data="iris", space={"lr": [1e-3, 3e-2], "hidden": [4, 16]},
                           epochs=EPOCHS, output=output, storage=tmp_path / "runs")
    assert sorted((t.config["lr"], t.config["hidden"]) for t in result.trials) == [
        (1e-3, 4), (1e-3, 16), (3e-2, 4), (3e-2, 16)]
    assert all(t.error is None and t.epochs == EPOCHS for t in result.trials)
    check_best(result, net, output)
    # a trial is `kiln train` with its configuration and the same seed: the same weights
    best = result.best.config
    again = tmp_path / "again.safetensors"
    assert main(["train", str(net), "--data", "iris", "--epochs", str(EPOCHS), "--quiet",
                 "--lr", repr(best["lr"]), "--arg", f"hidden={best['hidden']}",
                 "-o", str(again)]) == 0
    trained = load_weights(again)
    for k, v in result.weights.items():
        np.testing.assert_allclose(trained[k], v, rtol=1e-5, atol=1e-6)


def test_optuna_search_of_four_trials_with_asha(cluster, net, tmp_path):
    output = tmp_path / "best.safetensors"
    space = {"lr": kiln.tune.loguniform(1e-3, 1e-1), "batch": [16, 32], "hidden": [4, 16]}
    result = kiln.tune.run(net, data="iris", space=space, search="optuna", num_samples=4,
                           scheduler="asha", epochs=EPOCHS + 1, output=output,
                           storage=tmp_path / "runs")
    assert len(result.trials) == 4
    for t in result.trials:
        assert t.error is None and 1 <= t.epochs <= EPOCHS + 1  # ASHA may stop it early
        assert 1e-3 <= t.config["lr"] <= 1e-1
        assert t.config["batch"] in (16, 32) and t.config["hidden"] in (4, 16)
    check_best(result, net, output)


def test_cli_prints_the_table_lists_a_failed_trial_and_writes_the_best(cluster, net, tmp_path,
                                                                       capsys):
    # with Adam at lr 1e30 the weights overflow and the loss is not finite: K0836
    output = tmp_path / "best.safetensors"
    assert main(["tune", str(net), "--data", "iris", "--param", "lr=1e30,0.03",
                 "--param", "hidden=4", "--epochs", "1", "--storage", str(tmp_path / "runs"),
                 "--quiet", "-o", str(output)]) == 0
    out = capsys.readouterr().out  # after Ray Tune's own lines: the table, then the best
    lines = out.splitlines()
    lines = lines[next(i for i, line in enumerate(lines) if line.split()[:1] == ["trial"]):]
    assert lines[0].split()[:4] == ["trial", "lr", "hidden", "epochs"]  # --param order
    star, best_id, lr = lines[1].split()[:3]
    assert star == "*" and lr == "0.03" and f"best: trial {best_id}, val_accuracy" in out
    failed_id, failed_lr, _, epochs, *cells = lines[2].split()
    assert failed_lr == "1e+30" and epochs == "0" and set(cells) == {"-"}
    assert lines[3].startswith(f"{failed_id}: error[K0836]: the loss is")
    assert f"wrote {output}" in out and output.exists()


def test_every_trial_failing_raises_the_first_ones_error(cluster, net, tmp_path):
    with pytest.raises(KilnError) as info:
        kiln.tune.run(net, data="iris", space={"lr": [1e30]}, epochs=1,
                      storage=tmp_path / "runs")
    assert info.value.code == "K0836"
    assert info.value.message.startswith("every trial failed (1); the first, ")


@pytest.mark.parametrize("options, words", [
    ({"search": "bayes"}, "unknown search 'bayes'"),
    ({"metric": "accuracy"}, "unknown metric 'accuracy'"),
    ({"search": "grid", "num_samples": 3}, "a grid search runs each combination once"),
    ({"loss": "mse", "metric": "val_f1"}, "val_f1 is a classification metric"),
    ({"val_split": 0.0}, "the metric val_accuracy needs validation examples"),
])
def test_options_a_search_cannot_run_are_refused_before_any_trial(net, options, words):
    with pytest.raises(KilnError) as info:
        kiln.tune.run(net, data="iris", space={"hidden": [4, 8]}, **options)
    assert info.value.code == "K0960" and words in info.value.message


def test_a_model_argument_the_model_refuses_is_found_before_any_trial(net):
    with pytest.raises(KilnError) as info:  # `nn.Linear(4, hidden)` refuses a float hidden
        kiln.tune.run(net, data="iris", space={"hidden": [4, 2.5]})
    assert info.value.code.startswith("K02")


@dataclasses.dataclass(frozen=True)
class FailsOnce(Setup):
    """A trial whose worker is lost once, after its first epoch's checkpoint (as a node of a
    cluster may be); each process writes a line per evaluation to `log`."""

    log: str = ""

    def trainer(self, config):
        trainer = super().trainer(config)
        evaluate, log = trainer.evaluate, Path(self.log)

        def evaluate_or_fail(*args, **kwargs):
            lines = log.read_text().split() if log.exists() else []
            with log.open("a") as f:
                f.write(f"{os.getpid()}\n")
            if lines.count(str(os.getpid())) == 1 and len(set(lines)) == 1:
                raise RuntimeError("the worker running this trial was lost")
            return evaluate(*args, **kwargs)

        trainer.evaluate = evaluate_or_fail
        return trainer


def test_a_restarted_trial_resumes_from_its_checkpoint(cluster, net, tmp_path):
    from ray import tune

    log = tmp_path / "evaluations.log"
    epochs, config = 3, {"lr": 0.03, "hidden": 4}
    setup = FailsOnce(str(net), None, "cross_entropy", "adam", {}, 0, epochs, "native",
                      log=str(log))
    tuner = tune.Tuner(tune.with_parameters(train_trial, setup=setup,
                                            data=load_dataset("iris", 0.2, 0)),
                       param_space=config,
                       run_config=tune.RunConfig(storage_path=str(tmp_path / "runs"), verbose=0,
                                                 failure_config=tune.FailureConfig(max_failures=1)))
    (result,) = tuner.fit()
    assert result.error is None and result.metrics["epoch"] == epochs
    first, second = dict.fromkeys(log.read_text().split())  # the two processes, in order
    lines = log.read_text().split()
    # the first ran epoch 1 and failed in epoch 2; the second resumed at epoch 2, not 1
    assert lines.count(first) == 2 and lines.count(second) == epochs - 1
    # and its weights are those of an uninterrupted run
    again = tmp_path / "again.safetensors"
    assert main(["train", str(net), "--data", "iris", "--epochs", str(epochs), "--quiet",
                 "--lr", "0.03", "--arg", "hidden=4", "-o", str(again)]) == 0
    with result.checkpoint.as_directory() as where:
        resumed = load_weights(Path(where, WEIGHTS_FILE))
    trained = load_weights(again)
    for k, v in resumed.items():
        np.testing.assert_allclose(trained[k], v, rtol=1e-5, atol=1e-6)
