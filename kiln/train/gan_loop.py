"""`kiln train FILE --gan`: the loop around a GANTrainer — data, epochs, progress, a table.

Each epoch shuffles the real examples with numpy's Generator seeded by (seed, epoch) and takes
one `GANTrainer.step` (a D step, then a G step on the same noise) per batch of `--batch`; a
last batch smaller than `--batch` is left out, as the batch statistics of a GAN's batch norm
would see it alone. `--data gaussians8` is the 8-Gaussians mixture (GAN_POINTS points drawn
with the seed); each epoch's row then also counts the modes the generator covers.

`--arg NAME=VALUE` binds a compile-time argument of each of the two models that has one of
that name (`hidden` of both, `nz` of a generator that alone has it); `--arg
generator.NAME=VALUE` or `discriminator.NAME=VALUE` binds it in that one only, over an
unqualified `--arg` of the same name. `--schedule` applies to both nets, each over its own
steps (one per batch), as `kiln train`'s over its steps.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from kiln.compiler.errors import KilnError

from .data import load_dataset, shape_examples
from .gan import (
    DISCRIMINATOR,
    GENERATOR,
    GANTrainer,
    modes_covered,
    ring_of_gaussians,
    stdlib_path,
)
from .loop import _progress, schedule_of

GAUSSIANS = "gaussians8"
GAN_POINTS = 51_200  # 200 steps of batch 256 per epoch
COLUMNS = ("epoch", "d_loss", "g_loss")
# kiln train's options the GAN loop has no use for, with their defaults: any other value is
# refused rather than ignored
UNUSED = {"l1": 0.0, "l2": 0.0, "trainable": [], "augment": [],
          "early_stopping": 0, "log": None, "plot": None, "weights": None, "noise": [],
          "full_batch": False, "autoencode": False, "val_split": 0.2}


def fit_gan(opts) -> int:
    """Run `kiln train FILE --gan` with the parsed options `opts` (kiln/cli.py)."""
    from kiln.compiler.train.optim import by_name

    if opts.model:
        raise KilnError("K0830", "kiln train --gan takes --generator and --discriminator, not "
                        "--model")
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
    args_g, args_d = gan_args(opts.arg, opts.file, opts.generator, opts.discriminator)
    if opts.data == GAUSSIANS:
        x = ring_of_gaussians(GAN_POINTS, np.random.default_rng(opts.seed))
    else:
        x = load_dataset(opts.data, 0.0, opts.seed).x
    if len(x) < opts.batch:
        raise KilnError("K0830", f"--batch {opts.batch} is more than the {len(x)} examples")
    steps = len(x) // opts.batch
    gan = GANTrainer(opts.file, generator=opts.generator, discriminator=opts.discriminator,
                     optimizer_g=by_name(opts.optimizer, **hyper),
                     optimizer_d=by_name(opts.optimizer, **hyper), loss=opts.loss or "bce",
                     seed=opts.seed, clip_grad_norm=opts.clip_grad_norm, target=opts.target,
                     args_g=args_g, args_d=args_d, schedule_g=schedule_of(opts, steps),
                     schedule_d=schedule_of(opts, steps))
    x = shape_examples(x, gan._nets[DISCRIMINATOR].model.inputs[0])
    if opts.resume:
        gan.load_checkpoint(opts.resume)
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


def gan_args(items: list[str], path: str, generator: str, discriminator: str
             ) -> tuple[dict[str, Any], dict[str, Any]]:
    """The compile-time arguments of the generator and of the discriminator that `--arg`
    items give (see the module's docstring); K0830 for a name neither model has."""
    from pathlib import Path

    from kiln.compiler.elaborate import load_program
    from kiln.inputs import parse_args_option

    program = load_program(Path(stdlib_path("gan") if path == "std.gan" else path))
    names = {GENERATOR: generator, DISCRIMINATOR: discriminator}
    takes = {net: [p.name for p in program.model_ref(name).defn.params]
             for net, name in names.items()}
    shared: dict[str, dict[str, Any]] = {GENERATOR: {}, DISCRIMINATOR: {}}
    own: dict[str, dict[str, Any]] = {GENERATOR: {}, DISCRIMINATOR: {}}
    for item in items:
        net, dot, rest = item.partition(".")
        if dot and net in names and "=" not in net:  # generator.NAME=VALUE
            own[net].update(parse_args_option([rest]))
            continue
        ((name, value),) = parse_args_option([item]).items()
        nets = [net for net in names if name in takes[net]]
        if not nets:
            raise KilnError("K0830", f"--arg {name}: neither {generator} nor {discriminator} "
                            f"has an argument {name}",
                            hint=f"{generator}'s: {', '.join(takes[GENERATOR]) or 'none'}; "
                            f"{discriminator}'s: {', '.join(takes[DISCRIMINATOR]) or 'none'}")
        for net in nets:
            shared[net][name] = value
    return ({**shared[GENERATOR], **own[GENERATOR]},
            {**shared[DISCRIMINATOR], **own[DISCRIMINATOR]})


__all__ = ["GAUSSIANS", "fit_gan", "gan_args"]
