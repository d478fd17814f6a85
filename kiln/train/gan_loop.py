"""`kiln train FILE --gan`: the loop around a GANTrainer — data, epochs, progress, a table.

Each epoch shuffles the real examples with numpy's Generator seeded by (seed, epoch) and takes
one `GANTrainer.step` (a D step, then a G step on the same noise) per batch of `--batch`; a
last batch smaller than `--batch` is left out, as the batch statistics of a GAN's batch norm
would see it alone. `--data gaussians8` is the 8-Gaussians mixture (GAN_POINTS points drawn
with the seed); each epoch's row then also counts the modes the generator covers.
"""

from __future__ import annotations

import numpy as np

from kiln.compiler.errors import KilnError

from .data import load_dataset, shape_examples
from .gan import DISCRIMINATOR, GANTrainer, modes_covered, ring_of_gaussians
from .loop import _progress

GAUSSIANS = "gaussians8"
GAN_POINTS = 51_200  # 200 steps of batch 256 per epoch
COLUMNS = ("epoch", "d_loss", "g_loss")
# kiln train's options the GAN loop has no use for, with their defaults: any other value is
# refused rather than ignored
UNUSED = {"schedule": "constant", "l1": 0.0, "l2": 0.0, "trainable": [], "augment": [],
          "early_stopping": 0, "log": None, "plot": None, "weights": None, "noise": [],
          "full_batch": False, "autoencode": False, "val_split": 0.2}


def fit_gan(opts) -> int:
    """Run `kiln train FILE --gan` with the parsed options `opts` (kiln/cli.py)."""
    from kiln.compiler.train.optim import by_name

    if opts.arg or opts.model:
        raise KilnError("K0830", "kiln train --gan takes --generator and --discriminator, and "
                        "the models' defaults", hint="give compile-time arguments with "
                        "kiln.GANTrainer(args_g=..., args_d=...) in Python")
    for name, default in UNUSED.items():
        if getattr(opts, name, default) != default:
            raise KilnError("K0830", f"kiln train --gan does not take --{name.replace('_', '-')}",
                            hint="kiln.GANTrainer in Python for more control")
    if opts.batch < 1 or opts.epochs < 0:
        raise KilnError("K0830", "--batch must be >= 1 and --epochs >= 0")
    hyper: dict = {"lr": opts.lr}
    if opts.optimizer in ("adam", "adamw"):
        hyper["betas"] = (0.5, 0.999)  # the DCGAN paper's, as PyTorch's tutorial
    if opts.momentum is not None:
        hyper["momentum"] = opts.momentum
    if opts.weight_decay is not None:
        hyper["weight_decay"] = opts.weight_decay
    gan = GANTrainer(opts.file, generator=opts.generator, discriminator=opts.discriminator,
                     optimizer_g=by_name(opts.optimizer, **hyper),
                     optimizer_d=by_name(opts.optimizer, **hyper), loss=opts.loss or "bce",
                     seed=opts.seed, clip_grad_norm=opts.clip_grad_norm, target=opts.target)
    if opts.data == GAUSSIANS:
        x = ring_of_gaussians(GAN_POINTS, np.random.default_rng(opts.seed))
    else:
        x = load_dataset(opts.data, 0.0, opts.seed).x
    x = shape_examples(x, gan._nets[DISCRIMINATOR].model.inputs[0])
    if len(x) < opts.batch:
        raise KilnError("K0830", f"--batch {opts.batch} is more than the {len(x)} examples")
    if opts.resume:
        gan.load_checkpoint(opts.resume)
    steps = len(x) // opts.batch
    columns = COLUMNS + (("modes",) if opts.data == GAUSSIANS else ())
    print(" ".join(f"{c:>10}" for c in columns))
    for epoch in range(gan.d_phase.steps // steps, opts.epochs):
        order = np.random.default_rng([opts.seed, epoch]).permutation(len(x))
        bar = _progress(steps, f"epoch {epoch + 1}/{opts.epochs}", opts.quiet)
        totals = np.zeros(2)
        for start in range(0, steps * opts.batch, opts.batch):
            losses = gan.step(x[order[start:start + opts.batch]])
            totals += losses
            if bar is not None:
                bar.set_postfix(d_loss=f"{losses[0]:.4f}", g_loss=f"{losses[1]:.4f}")
                bar.update(1)
        if bar is not None:
            bar.close()
        row = [f"{epoch + 1:>10d}"] + [f"{v / steps:>10.4g}" for v in totals]
        if opts.data == GAUSSIANS:
            row.append(f"{modes_covered(gan.sample(2000)):>10d}")
        print(" ".join(row), flush=True)
        if opts.checkpoint:
            gan.save_checkpoint(opts.checkpoint)
    if opts.output:
        gan.generator.save_weights(opts.output)
        print(f"wrote the generator's weights to {opts.output}")
    return 0


__all__ = ["GAUSSIANS", "fit_gan"]
