"""`kiln train --ray-workers` (kiln.ray_train) on a local Ray cluster (two CPUs): 2 Ray Train
workers, summing gradients with Ray's collective allreduce, give the single-process run's
weights and metrics at the same global batch, end to end through the CLI (log, checkpoint,
weights); the torch-free Reducer sums identically for every worker; a KilnError a worker
raises reaches the caller as it is; `--resume` on the workers and a restart from Ray Train's own
checkpoint (a worker lost mid-run) continue as one process does. The sharding arithmetic
itself, without Ray, is in test_train_distributed.py."""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="Ray is an optional extra (pip install 'kiln[ray]')")
pytest.importorskip("ray.train", reason="Ray Train is an optional extra (pip install "
                    "'kiln[ray]')")

from _clitest import run  # noqa: E402
from _raycluster import local_cluster  # noqa: E402

import kiln.ray_train  # noqa: E402
from kiln.compiler.errors import KilnError  # noqa: E402
from kiln.runtime.weights import load_weights  # noqa: E402
from kiln.train.checkpoint import read_checkpoint  # noqa: E402
from kiln.train.distributed import ShardTrainer  # noqa: E402

RTOL = 1e-5  # f32 rounding: the sum over shards adds the same terms in another order


@pytest.fixture(scope="module")
def cluster():
    yield from local_cluster(__name__)  # this module's classes go to the workers by value


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """45 examples of 784 pixels: batches of 16, 16 and 13 (uneven shards), and 10 for
    validation."""
    path = tmp_path_factory.mktemp("ray_train") / "small.npz"
    rng = np.random.default_rng(0)
    np.savez(path, x=rng.standard_normal((45, 784)).astype(np.float32),
             y=rng.integers(0, 10, 45), x_val=rng.standard_normal((10, 784)).astype(np.float32),
             y_val=rng.integers(0, 10, 10))
    return path


def test_two_workers_equal_one_process_through_the_cli(cluster, dataset, tmp_path, capsys):
    common = ["train", "examples/mlp.kiln", "--arg", "hidden=8", "--data", dataset,
              "--epochs", "2", "--batch", "16", "--lr", "0.01", "--quiet"]
    code, out, _ = run(capsys, *common, "-o", tmp_path / "one.safetensors",
                       "--log", tmp_path / "one.jsonl")
    assert code == 0
    code, out, _ = run(capsys, *common, "--ray-workers", "2",
                       "-o", tmp_path / "two.safetensors", "--log", tmp_path / "two.jsonl",
                       "--checkpoint", tmp_path / "ckpt.safetensors")
    assert code == 0, out
    assert "train_loss" in out and "wrote" in out
    one, two = (load_weights(tmp_path / f"{n}.safetensors") for n in ("one", "two"))
    assert sorted(one) == sorted(two)
    for path in one:  # Adam magnifies the rounding of gradients near 0: scaled by the tensor
        np.testing.assert_allclose(two[path], one[path], rtol=RTOL,
                                   atol=RTOL * np.abs(one[path]).max(), err_msg=path)
    rows = [[json.loads(line) for line in (tmp_path / f"{n}.jsonl").read_text().splitlines()]
            for n in ("one", "two")]
    assert [r["epoch"] for r in rows[1]] == [1, 2]
    for key in ("train_loss", "val_loss", "accuracy"):
        np.testing.assert_allclose([r[key] for r in rows[1]], [r[key] for r in rows[0]],
                                   rtol=RTOL)
    # the Ray Train checkpoint is kiln's: it resumes a single-process run
    tensors, meta = read_checkpoint(tmp_path / "ckpt.safetensors")
    assert json.loads(meta["kiln_trainer"])["step"] == 6  # 2 epochs of 3 batches
    np.testing.assert_array_equal(tensors["0.weight"], two["0.weight"])


class LostOnce(ShardTrainer):
    """A worker trainer of which rank 0 is lost (raises) once, at its evaluation after step
    `at`, as a node of a cluster may be; every process writes its pid to `log` at each
    evaluation."""

    def __init__(self, *args, log="", at=0, **kwargs):
        super().__init__(*args, **kwargs)
        self.log, self.at = Path(log), at

    def evaluate(self, *args, **kwargs):
        with self.log.open("a") as f:
            f.write(f"{os.getpid()}\n")
        lost = self.log.with_suffix(".lost")
        if self.rank == 0 and self.step_count == self.at and not lost.exists():
            lost.touch()
            raise RuntimeError("the node running worker 0 was lost")
        return super().evaluate(*args, **kwargs)


def test_resume_and_a_restart_from_ray_trains_checkpoint_continue_as_one_process(
        cluster, dataset, tmp_path, capsys):
    """`--resume` a one-process checkpoint of epoch 1 on 2 workers for epochs 2 and 3, a worker
    lost in epoch 3: Ray Train restarts the workers, which resume from its checkpoint of
    epoch 2 (not from --resume again), and the run ends with the numbers of one process
    resumed from the same checkpoint: with --early-stopping, the weights of its best epoch,
    epoch 2, which the lost workers had seen."""
    common = ["train", "examples/mlp.kiln", "--arg", "hidden=8", "--data", dataset,
              "--batch", "16", "--lr", "0.05", "--early-stopping", "5", "--quiet"]
    first = tmp_path / "epoch1.safetensors"
    assert run(capsys, *common, "--epochs", "1", "--checkpoint", first)[0] == 0
    code, _, _ = run(capsys, *common, "--epochs", "3", "--resume", first,
                     "-o", tmp_path / "one.safetensors", "--log", tmp_path / "one.jsonl")
    assert code == 0
    log = tmp_path / "evaluations.log"
    result = kiln.ray_train.fit(
        "examples/mlp.kiln", str(dataset), workers=2, args={"hidden": 8}, epochs=3, batch=16,
        lr=0.05, early_stopping=5, quiet=True, resume=str(first), retries=1, allreduce="actor",
        storage=str(tmp_path / "ray"), make_trainer=functools.partial(LostOnce, log=str(log),
                                                                       at=9))
    pids = list(dict.fromkeys(log.read_text().split()))  # 2 lost processes, then 2 new
    counts = [log.read_text().split().count(p) for p in pids]
    assert len(pids) == 4 and counts[:2] == [2, 2] and counts[2:] == [1, 1], counts
    assert [r["epoch"] for r in result.history] == [2, 3]  # epoch 2 from the checkpoint
    rows = [json.loads(line) for line in (tmp_path / "one.jsonl").read_text().splitlines()]
    assert rows[0]["val_loss"] < rows[1]["val_loss"]  # the best epoch is 2, before the loss
    for key in ("train_loss", "val_loss"):
        np.testing.assert_allclose([r[key] for r in result.history], [r[key] for r in rows],
                                   rtol=RTOL)
    one = load_weights(tmp_path / "one.safetensors")
    for path in one:
        np.testing.assert_allclose(result.weights[path], one[path], rtol=RTOL,
                                   atol=RTOL * np.abs(one[path]).max(), err_msg=path)


def test_the_torch_free_reducer_gives_every_worker_the_same_sum(cluster):
    reducer = ray.remote(num_cpus=0, max_concurrency=4)(kiln.ray_train.Reducer).remote(3)

    @ray.remote(num_cpus=0)
    def worker(rank):
        total = kiln.ray_train._ActorSum(reducer, rank)
        return [total(np.full(4, 0.1 * (rank + 1) + r)) for r in range(2)]

    sums = ray.get([worker.remote(r) for r in range(3)])
    for rnd in range(2):
        want = 0.1 * 1 + rnd + 0.1 * 2 + rnd + 0.1 * 3 + rnd
        for rank in range(3):
            np.testing.assert_allclose(sums[rank][rnd], np.full(4, want))
            np.testing.assert_array_equal(sums[rank][rnd], sums[0][rnd])


def test_a_workers_kiln_error_reaches_the_caller(cluster, dataset):
    with pytest.raises(KilnError) as e:  # refused by each worker's trainer, as by one
        kiln.ray_train.fit("examples/mlp.kiln", str(dataset), workers=2, epochs=1,
                           args={"hidden": 8}, trainable=["nothing.*"], allreduce="actor")
    assert e.value.code == "K0833"


def test_bad_options_are_refused_before_ray_starts():
    with pytest.raises(KilnError) as e:
        kiln.ray_train.fit("examples/mlp.kiln", "digits", workers=0)
    assert e.value.code == "K0955"
    with pytest.raises(KilnError) as e:
        kiln.ray_train.fit("examples/mlp.kiln", "digits", epoch=3)  # a typo of epochs
    assert e.value.code == "K0955" and "epoch" in e.value.message
    with pytest.raises(KilnError) as e:
        kiln.ray_train.fit("examples/mlp.kiln", "digits", retries=-1)
    assert e.value.code == "K0955" and "retries" in e.value.message
