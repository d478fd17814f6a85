"""kiln: a declarative language for neural-network models, and its compiler.

import kiln
program = kiln.load("examples/mlp.kiln")          # parse and resolve imports
model = kiln.compile("examples/mlp.kiln", seed=0)  # elaborate, initialise, build
y = model(x)                                      # numpy in, numpy out
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kiln.compiler.errors import KilnError, KilnWarning
from kiln.compiler.version import __version__

if TYPE_CHECKING:
    from . import optim
    from .api import compile, load, load_compiled
    from .train import GANTrainer, Trainer

__all__ = ["GANTrainer", "KilnError", "KilnWarning", "Trainer", "__version__", "compile", "load",
           "load_compiled", "optim"]

_API = ("compile", "load", "load_compiled")


def __getattr__(name: str) -> Any:
    # The compiler (numpy, networkx, ml_dtypes, lark) loads on first use, not on `import kiln`:
    # `kiln --help` and `kiln --version` import this package and need none of it.
    if name in _API:
        from . import api

        return getattr(api, name)
    if name in ("Trainer", "GANTrainer"):  # the training loop loads the compiler: on first use
        from . import train

        return getattr(train, name)
    if name == "optim":
        import importlib

        return importlib.import_module("kiln.optim")
    if name in ("ray", "tune"):  # they use Ray: loaded only when asked for
        import importlib

        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'kiln' has no attribute {name!r}")
