"""Training: kiln.Trainer (trainer.py), the generated program composing a model with its
loss (program.py), kiln.GANTrainer (gan.py), checkpoints, metrics, datasets and the
`kiln train` loop (loop.py)."""

from __future__ import annotations

from .gan import GANTrainer
from .trainer import Trainer

__all__ = ["GANTrainer", "Trainer"]
