"""Data-parallel training without Ray (kiln/train/distributed.py): workers as threads of this
process, summing through a barrier, give the single-process Trainer's numbers at the same
global batch, also for batches that do not divide evenly, ignored class targets and empty
shards; BatchNorm, normalizing each shard by its own statistics, gives the shards' steps
averaged; and every worker holds the same weights. The same on a Ray
cluster is in test_ray_train.py."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import kiln
from kiln.compiler.errors import KilnError
from kiln.train.distributed import ShardTrainer, shard
from kiln.train.trainer import Trainer

MLP = """
import std.nn
model MLP(hidden: int = 8) {
  forward(x: f32[B, 6]) -> f32[B, 3] {
    return x |> nn.Linear(6, hidden) |> relu |> nn.Linear(hidden, 3)
  }
}
"""
BN = """
import std.nn
model Net {
  forward(x: f32[B, 6]) -> f32[B, 3] {
    return x |> nn.Linear(6, 5) |> nn.BatchNorm1d(5) |> relu |> nn.Linear(5, 3)
  }
}
"""
NOISY = """
import std.nn
model Noisy {
  forward(x: f32[B, 6], eps: f32[B, 3]) -> f32[B, 3] {
    return (x |> nn.Linear(6, 3)) + eps
  }
}
"""
GRAPH = """
import std.nn
model Edges {
  forward(x: f32[N, 6], edge_index: i64[2, E]) -> f32[N, 3] {
    return x |> nn.Linear(6, 3)
  }
}
"""
RTOL = 1e-5  # f32 rounding: the sum over shards is another order of the same terms


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("distributed")
    (root / "mlp.kiln").write_text(MLP)
    (root / "bn.kiln").write_text(BN)
    (root / "noisy.kiln").write_text(NOISY)
    (root / "graph.kiln").write_text(GRAPH)
    return root


class ThreadSum:
    """An allreduce over `world` threads: each adds its vector, all get the sum, in rank
    order (so every thread gets the same bits)."""

    def __init__(self, world: int):
        self.world = world
        self.parts: dict[int, np.ndarray] = {}
        self.barrier = threading.Barrier(world)

    def of(self, rank: int):
        def allreduce(vector: np.ndarray) -> np.ndarray:
            self.parts[rank] = vector
            self.barrier.wait()
            total = sum(self.parts[r] for r in range(self.world))
            self.barrier.wait()  # everyone has read the parts before the next step writes
            return total
        return allreduce


def run_workers(path, world, batches, **options):
    """Train `world` ShardTrainers in threads on the same global batches; their losses of
    each step and their trainers."""
    reduce = ThreadSum(world)
    trainers = [ShardTrainer(path, rank=r, world=world, allreduce=reduce.of(r), **options)
                for r in range(world)]
    for t in trainers:  # compiled here: the threads only step
        t.prepare(batches[0][1])
    losses = [[] for _ in range(world)]
    failures = []

    def work(rank):
        try:
            for x, y in batches:
                losses[rank].append(trainers[rank].step(x, y))
            trainers[rank].check_in_sync()
        except BaseException as e:  # reported by the test's thread
            failures.append(e)
            reduce.barrier.abort()

    threads = [threading.Thread(target=work, args=(r,)) for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failures:
        raise failures[0]
    return losses, trainers


def single(path, batches, **options):
    trainer = Trainer(path, **options)
    return [trainer.step(x, y) for x, y in batches], trainer


def data(sizes, seed=0, ignore=False):
    rng = np.random.default_rng(seed)
    out = []
    for n in sizes:
        y = rng.integers(0, 3, n)
        if ignore:
            y[rng.random(n) < 0.4] = -100  # cross_entropy's ignore_index: not counted
        out.append((rng.standard_normal((n, 6)).astype(np.float32), y))
    return out


def assert_same(reference, losses, trainers, buffers=()):
    ref_losses, ref = reference
    for worker_losses in losses:
        np.testing.assert_allclose(worker_losses, ref_losses, rtol=RTOL)
    for path, want in ref.params.items():
        for t in trainers:
            np.testing.assert_allclose(t.params[path], want, rtol=RTOL, atol=1e-7,
                                       err_msg=path)
            # every worker applied the same update to the same weights: identical bits
            np.testing.assert_array_equal(t.params[path], trainers[0].params[path])
    for t in trainers:
        for (path, slot), state in ref.state.items():
            np.testing.assert_allclose(t.state[(path, slot)], state, rtol=RTOL, atol=1e-9)
        assert t.step_count == ref.step_count


def test_shards_cover_the_batch_evenly():
    for n in (0, 1, 2, 3, 5, 7, 64):
        for world in (1, 2, 3, 4):
            parts = [shard(n, r, world) for r in range(world)]
            assert [i for p in parts for i in range(n)[p]] == list(range(n))
            sizes = [p.stop - p.start for p in parts if p.stop > p.start]
            assert max(sizes, default=0) - min(sizes, default=0) <= 1
            # no shard of one example out of more: BatchNorm has no variance of one
            assert n == 1 or 1 not in sizes, (n, world, sizes)
            assert len(sizes) == min(world, max(n // 2, 1 if n else 0))


@pytest.mark.parametrize("world, sizes", [(1, [16, 7]), (2, [16, 16, 7]), (3, [10, 2, 5])],
                         ids=["one", "two-uneven", "three-with-empty-shard"])
def test_workers_equal_one_process(files, world, sizes):
    options = dict(args={"hidden": 8}, seed=1, optimizer=kiln.optim.Adam(lr=0.05),
                   clip_grad_norm=1.0)
    batches = data(sizes)
    losses, trainers = run_workers(files / "mlp.kiln", world, batches, **options)
    assert_same(single(files / "mlp.kiln", batches, **options), losses, trainers)


def test_ignored_targets_weight_the_shards_by_counted_targets(files):
    options = dict(seed=2, optimizer=kiln.optim.SGD(lr=0.1, momentum=0.9))
    batches = data([9, 9], seed=3, ignore=True)
    losses, trainers = run_workers(files / "mlp.kiln", 2, batches, **options)
    assert_same(single(files / "mlp.kiln", batches, **options), losses, trainers)


def test_batchnorm_uses_each_shards_statistics_and_averages_the_running_ones(files):
    """What docs/training.md says of BatchNorm on workers: each shard is normalized by its own
    batch statistics, so the step is the shards' one-process steps averaged by their shares of
    the batch (loss, weights, running mean and variance alike, SGD's update being linear),
    every worker holds the same result, and it is not the whole batch's in one process."""
    batches = data([7])  # shards of 4 and 3
    options = dict(seed=0, optimizer=kiln.optim.SGD(lr=0.1))
    losses, trainers = run_workers(files / "bn.kiln", 2, batches, **options)
    (x, y), = batches
    shards = [single(files / "bn.kiln", [(x[p], y[p])], **options)
              for p in (shard(7, 0, 2), shard(7, 1, 2))]
    shares = (4 / 7, 3 / 7)
    for worker_losses in losses:
        np.testing.assert_allclose(worker_losses[0], sum(s * shard_losses[0] for s, (
            shard_losses, _) in zip(shares, shards)), rtol=RTOL)
    for path, value in trainers[0].params.items():
        if value.dtype.kind == "f":
            want = sum(s * t.params[path] for s, (_, t) in zip(shares, shards))
            np.testing.assert_allclose(value, want, rtol=RTOL, atol=1e-7, err_msg=path)
        else:  # num_batches_tracked: one step
            assert value == 1, path
        np.testing.assert_array_equal(trainers[1].params[path], value)
    whole, one = single(files / "bn.kiln", batches, **options)
    assert abs(losses[0][0] - whole[0]) > 1e-3 * abs(whole[0])  # the batch's statistics differ
    mean = next(p for p in one.params if p.endswith("running_mean"))
    # the running mean is linear in the batch's mean: the whole batch's, exactly
    np.testing.assert_allclose(trainers[0].params[mean], one.params[mean], rtol=RTOL, atol=1e-7)


def test_a_batch_too_small_to_split_in_twos_runs_on_fewer_workers(files):
    """A batch of 3 on 2 workers is not split 2 + 1 (BatchNorm's unbiased running variance
    of one example is NaN): one worker runs it whole, with one process's numbers."""
    batches = data([3, 2])
    options = dict(seed=0, optimizer=kiln.optim.SGD(lr=0.1))
    losses, trainers = run_workers(files / "bn.kiln", 2, batches, **options)
    assert_same(single(files / "bn.kiln", batches, **options), losses, trainers)
    var = next(p for p in trainers[0].params if p.endswith("running_var"))
    assert np.isfinite(trainers[0].params[var]).all()


def test_bad_worker_arguments_are_errors(files):
    with pytest.raises(KilnError) as e:
        ShardTrainer(files / "mlp.kiln", rank=2, world=2)
    assert e.value.code == "K0955"
    with pytest.raises(KilnError) as e:
        ShardTrainer(files / "mlp.kiln", rank=0, world=2)  # no allreduce
    assert e.value.code == "K0955"


def test_workers_whose_weights_differ_are_refused(files):
    reduce = ThreadSum(2)
    trainers = [ShardTrainer(files / "mlp.kiln", rank=r, world=2, allreduce=reduce.of(r))
                for r in range(2)]
    trainers[1].set_params({"0.bias": trainers[1].params["0.bias"] + 1e-6})
    errors = []

    def check(rank):
        try:
            trainers[rank].check_in_sync()
        except KilnError as e:
            errors.append(e)

    threads = [threading.Thread(target=check, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [e.code for e in errors] == ["K0956", "K0956"]  # every worker stops
    assert "worker 1 differ" in errors[0].message


def test_noise_is_drawn_for_the_whole_batch_as_one_process_draws_it(files):
    options = dict(seed=4, loss="mse", noise=["eps"], optimizer=kiln.optim.SGD(lr=0.1))
    rng = np.random.default_rng(5)
    batches = [(rng.standard_normal((n, 6)).astype(np.float32),
                rng.standard_normal((n, 3)).astype(np.float32)) for n in (8, 5)]
    losses, trainers = run_workers(files / "noisy.kiln", 2, batches, **options)
    assert_same(single(files / "noisy.kiln", batches, **options), losses, trainers)


def test_inputs_that_are_not_per_example_cannot_be_split(files):
    with pytest.raises(KilnError) as e:
        ShardTrainer(files / "graph.kiln", rank=0, world=2, allreduce=lambda v: v)
    assert e.value.code == "K0955" and "edge_index" in e.value.message
