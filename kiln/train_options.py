"""The options of `kiln train`, an argparse parser's arguments: kiln/cli.py's `train` command
and kiln.ray_train.fit (which parses a Python call's options as the command's) both take them
from here, so neither imports the other."""

from __future__ import annotations


def train_options(t) -> None:
    """The options of `kiln train`."""
    t.add_argument("--data", required=True, metavar="NAME_OR_NPZ",
                   help="digits, iris, wine, breast_cancer, diabetes (scikit-learn's bundled "
                   "datasets) or a .npz file with x, y (optionally x_val, y_val, and arrays "
                   "named after the model's other inputs)")
    t.add_argument("--loss", help="a std.losses name (cross_entropy, mse, ...) or "
                   "FILE.kiln:NAME (default: cross_entropy); with --gan bce, bce_with_logits "
                   "or hinge (default: bce)")
    t.add_argument("--optimizer", default="adam", help="sgd, adam, adamw or rmsprop (default: "
                   "adam)")
    t.add_argument("--lr", type=float, default=1e-3, help="learning rate (default: 1e-3)")
    t.add_argument("--momentum", type=float, help="momentum (sgd, rmsprop)")
    t.add_argument("--weight-decay", type=float, help="weight decay")
    t.add_argument("--schedule", choices=["constant", "cosine", "step"], default="constant",
                   help="learning-rate schedule: cosine (after --warmup steps of linear "
                   "warm-up) or step (times --gamma every --step-size epochs)")
    t.add_argument("--warmup", type=int, default=0, metavar="STEPS",
                   help="cosine: steps of linear warm-up")
    t.add_argument("--step-size", type=int, default=10, metavar="EPOCHS",
                   help="step: epochs between decays")
    t.add_argument("--gamma", type=float, default=0.1, help="step: the decay factor")
    t.add_argument("--clip-grad-norm", type=float, metavar="MAX",
                   help="clip the gradients' global 2-norm to MAX")
    t.add_argument("--l1", type=float, default=0.0, help="L1 penalty on the trainable "
                   "parameters")
    t.add_argument("--l2", type=float, default=0.0, help="L2 penalty on the trainable "
                   "parameters")
    t.add_argument("--trainable", action="append", default=[], metavar="PATTERN",
                   help="train only the parameters matching this glob (repeatable)")
    t.add_argument("--epochs", type=int, default=10, help="passes over the training examples "
                   "(default: 10)")
    t.add_argument("--batch", type=int, default=64, help="examples per step (default: 64)")
    t.add_argument("--val-split", type=float, default=0.2,
                   help="the fraction of examples kept for validation, when the .npz has no "
                   "x_val (default: 0.2)")
    t.add_argument("--augment", action="append", default=[], choices=["flip", "crop", "noise"],
                   help="augment image batches [N, C, H, W] (repeatable)")
    t.add_argument("--early-stopping", type=int, default=0, metavar="N",
                   help="stop after N epochs without a lower validation loss, keeping the "
                   "best epoch's weights")
    t.add_argument("--seed", type=int, default=0,
                   help="seed of the initial weights, the shuffling and the augmentations")
    t.add_argument("--weights", help="initial weights (.safetensors or .npz)")
    t.add_argument("--target", choices=["native", "reference"], default="native",
                   help="native: LLVM code for this CPU (default); reference: the numpy "
                   "interpreter")
    t.add_argument("--resume", metavar="CKPT", help="resume from a checkpoint")
    t.add_argument("--checkpoint", metavar="CKPT",
                   help="write a checkpoint (.safetensors) after every epoch")
    t.add_argument("--log", metavar="RUN.jsonl", help="write each epoch's metrics as JSON lines")
    t.add_argument("--plot", metavar="CURVES.png", help="draw the loss curves (matplotlib)")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    model_input_options(t)
    t.add_argument("-o", "--output", help="write the trained weights (.safetensors or .npz)")
    ray_train_options(t)


def ray_train_options(t) -> None:
    """The options of `kiln train` that train on Ray (docs/scale-out.md)."""
    t.add_argument("--ray-workers", type=int, metavar="N",
                   help="train data-parallel on N Ray Train workers (kiln[ray])")
    t.add_argument("--ray-address", metavar="ADDR",
                   help="with --ray-workers: the Ray cluster to join (default: $RAY_ADDRESS, "
                   "else a local cluster)")
    t.add_argument("--ray-storage", metavar="DIR_OR_URI",
                   help="with --ray-workers: where Ray Train keeps its checkpoints (every "
                   "worker must reach it; default: a temporary directory here)")
    t.add_argument("--ray-retries", type=int, default=0, metavar="N",
                   help="with --ray-workers: start the workers again from Ray Train's last "
                   "checkpoint up to N times when one is lost (default: 0)")


def model_input_options(t) -> None:
    """The options of `kiln train` for models of several inputs (kiln/train/inputs.py)."""
    t.add_argument("--noise", action="append", default=[], metavar="INPUT",
                   help="draw the model input INPUT from N(0, 1) for every batch, seeded "
                   "(a VAE's eps; repeatable)")
    t.add_argument("--full-batch", action="store_true",
                   help="step on all training examples at once, in order (a graph's nodes)")
    t.add_argument("--autoencode", action="store_true",
                   help="the examples are their own targets (an autoencoder, a VAE)")


__all__ = ["model_input_options", "ray_train_options", "train_options"]
