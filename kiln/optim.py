"""kiln.optim: optimizers and learning-rate schedules for kiln.Trainer.

    kiln.optim.SGD(lr, momentum, dampening, nesterov, weight_decay)
    kiln.optim.Adam(lr, betas, eps, weight_decay, amsgrad) / AdamW(...)
    kiln.optim.RMSprop(lr, alpha, eps, weight_decay, momentum, centered)
    kiln.optim.by_name("adamw", lr=1e-3)         # as `kiln train --optimizer` names them
    kiln.optim.cosine(total, warmup), step_decay(step_size, gamma)

PyTorch's argument names, defaults and update equations (compiler/train/optim.py).
"""

from __future__ import annotations

from kiln.compiler.train.optim import (
    SGD,
    Adam,
    AdamW,
    Optimizer,
    RMSprop,
    by_name,
    constant,
    cosine,
    numpy_step,
    step_decay,
)

__all__ = ["SGD", "Adam", "AdamW", "Optimizer", "RMSprop", "by_name", "constant", "cosine",
           "numpy_step", "step_decay"]
