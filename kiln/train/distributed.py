"""Data-parallel training: one global batch split across workers, the gradients summed.

    trainer = ShardTrainer("mlp.kiln", rank=r, world=n, allreduce=sum_over_workers, ...)
    loss = trainer.step(x, y)       # x, y: the whole global batch, the same on every worker

Every worker holds the same weights and is given the same global batch (each draws the same
shuffle and augmentations from the seed). A worker runs the train step's first half
(compiler/train/step.py: build_grad_step) on its shard of the batch, a contiguous slice of
about 1/n of it (`shard`), and weights what it computed by its share of the batch; one
allreduce (a sum over the workers, `allreduce`, which kiln/ray_train.py gives from Ray) then
yields on every worker the same gradient, loss and buffers as the whole batch on one worker
(but for BatchNorm and dropout, below), and every worker applies the same update
(build_update_step): the weights stay identical.

- **The weights**: a loss that is a mean over the batch's examples (every std.losses loss
  with reduction "mean") is the sum over shards of each shard's mean times its share
  (n_k / N), and so is its gradient: exact, also when N does not divide evenly. For a class
  index loss the share is that of the targets it counts (those not equal to -100, the
  ignore_index), as its mean divides by those. A loss of one's own is weighted by examples.
- **The sum** runs in float64 over one vector (loss, gradients, buffers), whatever the
  parameters' dtypes, and is cast back: at most one rounding of the parameter's dtype away
  from the single-process gradient.
- **BatchNorm** in training mode normalizes each shard by the shard's own batch statistics,
  as PyTorch's DistributedDataParallel does without SyncBatchNorm: the step is then the
  shards' one-process steps averaged by their shares, not the whole batch's, and a model
  with BatchNorm trains close to, not exactly as, one process. (Synchronised statistics
  would need an allreduce inside each BatchNorm of the forward and backward passes, which
  are one native call here.) Its buffers, the running statistics, are each worker's new
  value averaged with the examples' shares, so every worker holds the same: the running mean
  is the whole batch's exactly; the running variance the shards' unbiased variances
  averaged (no term for the spread between the shards' means); num_batches_tracked one
  process's count. No shard is one example of a larger batch (see `shard`).
- **Randomness**: noise inputs (`noise=`, a VAE's eps) are drawn for the whole batch on
  every worker, as one process draws them, and sharded with it: exact. Dropout draws inside
  the step: worker r of n with the key [seed, n * step + r], distinct masks on every worker
  and step (on one worker the key [seed, step] of kiln.Trainer).
- A model with an input that is not per example (a graph's edge_index) cannot be split by
  examples (K0955).

A worker whose shard is empty (a batch smaller than twice the number of workers) adds zeros.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

from kiln.compiler.errors import KilnError
from kiln.compiler.train.step import GRAD, build_grad_step, build_update_step

from .inputs import per_example
from .program import PREFIX, target_name
from .trainer import IGNORE_INDEX, UPDATED, Trainer, accept_step, step_feeds

# the sum over the workers of each one's float64 vector (the same length on every worker)
Allreduce = Callable[[np.ndarray], np.ndarray]


def shard(n: int, rank: int, world: int) -> slice:
    """Worker `rank`'s contiguous part of `n` examples split over `world` workers: over the
    first min(world, n // 2) of them (at least one), sizes differing by at most one, the
    larger first (as numpy.array_split's); the other workers get none. So no shard is one
    example of a larger batch: BatchNorm's unbiased variance of one example is undefined
    (NaN), while the whole batch has one."""
    active = min(world, max(n // 2, 1))
    if rank >= active:
        return slice(n, n)
    base, extra = divmod(n, active)
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (rank < extra))


class _Half(NamedTuple):
    """One compiled half of the train step: its runner, layout and output names (what
    trainer.step_feeds takes as a step)."""

    runner: Any
    layout: Any
    names: list[str]

    def __call__(self, feeds: dict[str, Any]) -> dict[str, np.ndarray]:
        taken = {p.name for p in self.runner.inputs}  # the grad half takes no lr or step
        arrays, dims = self.runner.bind_inputs((), {k: v for k, v in feeds.items()
                                                    if k in taken})
        return dict(zip(self.names, self.runner.run(arrays, dims)))


class ShardTrainer(Trainer):
    """A Trainer that is worker `rank` of `world` in data-parallel training (see the module's
    docstring); every other argument as Trainer's."""

    def __init__(self, *args: Any, rank: int = 0, world: int = 1,
                 allreduce: Allreduce | None = None, **kwargs: Any):
        if not (isinstance(world, int) and world >= 1 and isinstance(rank, int)
                and 0 <= rank < world):
            raise KilnError("K0955", f"a data-parallel worker is rank 0..{world - 1} of "
                            f"workers >= 1, not rank {rank!r} of {world!r}")
        if allreduce is None and world > 1:
            raise KilnError("K0955", f"{world} data-parallel workers need an allreduce")
        super().__init__(*args, **kwargs)
        apart = [p.name for p in self.inputs if p.name not in per_example(self.inputs)]
        if apart and world > 1:
            raise KilnError("K0955", f"{self.model_name} takes inputs that are not per example "
                            f"({', '.join(apart)}): data-parallel workers split a batch by "
                            "its examples", hint="train it in one process")
        self.rank, self.world = rank, world
        self.allreduce = allreduce if allreduce is not None else (lambda v: v)

    def _compile_step(self, train) -> tuple[_Half, _Half, Any]:
        grad_model, layout = build_grad_step(train, PREFIX, self.trainable, self.l1, self.l2,
                                             self.penalized)
        update_model, update_layout = build_update_step(grad_model, layout, self.optimizer,
                                                        self.clip_grad_norm)
        halves = [_Half(self._compile(m), lay, [p.name for p in m.outputs])
                  for m, lay in ((grad_model, layout), (update_model, update_layout))]
        # what trainer.accept_step takes the step's results by
        whole = dataclasses.replace(layout, slots=update_layout.slots)
        return halves[0], halves[1], whole

    def _shares(self, target: np.ndarray, part: slice) -> tuple[float, float]:
        """This worker's share of the batch's loss (see the module's docstring) and of its
        examples."""
        n = len(target)
        rows = (part.stop - part.start) / n if n else 0.0
        if not self.loss.class_index or target.dtype.kind not in "iu":
            return rows, rows
        counted = target != IGNORE_INDEX
        total = int(counted.sum())
        return (int(counted[part].sum()) / total if total else rows), rows

    def step(self, x: Any, y: Any) -> float:
        """One training step on the global batch (x, y), the same on every worker: this
        worker's shard's gradients, summed over the workers, then the update; returns the
        batch's loss. A non-finite loss raises K0836 (on every worker) and changes nothing."""
        feeds, target = self._checked(x, y)
        grad, update, whole = self._step
        t = self.step_count + 1
        feeds = self._with_noise(feeds, [self.seed, t])  # the whole batch's, as one process's
        part = shard(len(target), self.rank, self.world)
        loss_share, row_share = self._shares(target, part)
        local = {}
        if part.stop > part.start:
            mine = {k: np.asarray(v)[part] for k, v in feeds.items()}
            mine[target_name(list(mine))] = target[part]
            key = [self.seed, self.world * t + self.rank]
            local = grad(step_feeds(grad, mine, self.params, self.state,
                                    self.learning_rate(t), t, key))
        total = self._sum(local, loss_share, row_share, whole)
        grads = {GRAD + p: total[GRAD + p] for p in whole.trainable}
        updates = update(step_feeds(update, grads, self.params, self.state,
                                    self.learning_rate(t), t, [self.seed, t]))
        loss = accept_step(whole, {**total, **updates}, self.params, self.state, "the loss",
                           f"at step {t}")
        self.step_count = t
        self._version += 1
        return loss

    def profile(self, x: Any, y: Any, repeat: int = 10):
        """Not for a worker: its step is two graphs and an allreduce (K0955)."""
        raise KilnError("K0955", "a data-parallel worker does not profile its step",
                        hint="profile the step of a kiln.Trainer of the same model")

    def check_in_sync(self) -> None:
        """Refuse (K0956, on every worker) weights or optimizer state that differ between the
        workers: one allreduce of a digest of each worker's."""
        digest = hashlib.sha256()
        for path in sorted(self.params):
            digest.update(self.params[path].tobytes())
        for key in sorted(self.state):
            digest.update(self.state[key].tobytes())
        digests = np.zeros(self.world)
        # 48 bits: whole numbers a float64 holds exactly, so the sum moves them unchanged
        digests[self.rank] = int.from_bytes(digest.digest()[:6], "little")
        digests = self.allreduce(digests)
        differ = [r for r in range(self.world) if digests[r] != digests[0]]
        if differ:
            raise KilnError("K0956", f"after step {self.step_count} the weights of worker "
                            f"{differ[0]} differ from worker 0's, though every worker applies "
                            "the same update to the same weights",
                            hint="the workers' CPUs may round differently (mixed machines), "
                            "or an allreduce gave the workers different sums")

    def _sum(self, local: dict[str, np.ndarray], loss_share: float, row_share: float,
             layout: Any) -> dict[str, np.ndarray]:
        """The weighted sum over the workers of the loss, the gradients (as `grad:<path>`) and
        the buffers (`updated:<path>`), each in its own dtype; `local`: this worker's grad
        step results (empty for an empty shard: it adds zeros)."""
        entries = [("loss", np.zeros((), np.float32), loss_share)]
        entries += [(GRAD + p, self.params[p], loss_share) for p in layout.trainable]
        entries += [(UPDATED + p, self.params[p], row_share) for p in layout.buffers]
        parts = [np.asarray(local[name], np.float64).ravel() * share if local
                 else np.zeros(np.size(like)) for name, like, share in entries]
        summed = self.allreduce(np.concatenate(parts) if parts else np.zeros(0))
        out, offset = {}, 0
        for name, like, _ in entries:
            like = np.asarray(local.get(name, like))
            size = like.size
            value = summed[offset:offset + size].reshape(like.shape)
            if like.dtype.kind in "iu":  # a counter, the same on every worker
                value = np.rint(value)
            out[name] = value.astype(like.dtype)
            offset += size
        return out


__all__ = ["Allreduce", "ShardTrainer", "shard"]
