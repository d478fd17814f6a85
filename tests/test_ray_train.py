"""`kiln train --ray-workers` (kiln.ray_train) on a local Ray cluster (two CPUs): 2 Ray Train
workers, summing gradients with Ray's collective allreduce, give the single-process run's
weights and metrics at the same global batch, end to end through the CLI (log, checkpoint,
weights); the torch-free Reducer sums identically for every worker; a KilnError a worker
raises reaches the caller as it is. The sharding arithmetic itself, without Ray, is in
test_train_distributed.py."""

from __future__ import annotations

import json

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="Ray is an optional extra (pip install 'kiln[ray]')")
pytest.importorskip("ray.train", reason="Ray Train is an optional extra (pip install "
                    "'kiln[ray]')")

from _clitest import run  # noqa: E402

import kiln.ray_train  # noqa: E402
from kiln.compiler.errors import KilnError  # noqa: E402
from kiln.runtime.weights import load_weights  # noqa: E402
from kiln.train.checkpoint import read_checkpoint  # noqa: E402

RTOL = 1e-5  # f32 rounding: the sum over shards adds the same terms in another order


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    yield
    ray.shutdown()


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
