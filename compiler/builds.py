"""What is built once per key under one lock (`Builds`), and one set of parameter values
with what was made from it (`Weights`): shared by the compiler driver (driver.py) and the
runtime, and light enough for a model loaded from the compile cache without the compiler."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from .driver import GradientModel
    from .elaborate import ElaboratedModel


class Builds:
    """Tables filled once per key under one reentrant lock: one build however many threads
    ask; calls never take the lock once what they need is built. Reentrant: builds nest."""

    def __init__(self) -> None:
        self.lock = threading.RLock()

    def once(self, table: dict, key, make: Callable[[], Any]):
        """table[key], made by `make()` the first time."""
        value = table.get(key)
        if value is None:
            with self.lock:
                value = table.get(key)
                if value is None:
                    value = table[key] = make()
        return value


def read_only(params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The arrays as read-only views: what a model runs with cannot be edited in place."""
    def frozen(a: np.ndarray) -> np.ndarray:
        view = np.asarray(a).view()
        view.flags.writeable = False
        return view

    return {path: frozen(a) for path, a in params.items()}


@dataclasses.dataclass
class Weights:
    """One set of parameter values (read-only) and the graphs optimized with them, by
    (optional inputs, pipeline). Never edited but to add to its table: new values are a new
    Weights, so a user of this one never sees half of a change."""

    params: dict[str, np.ndarray]
    lowered: dict[tuple, ElaboratedModel] = dataclasses.field(default_factory=dict)
    gradients: dict[tuple, GradientModel] = dataclasses.field(default_factory=dict)

    @staticmethod
    def of(params: dict[str, np.ndarray]) -> Weights:
        """The weights of these values, kept as read-only views."""
        return Weights(read_only(params))
