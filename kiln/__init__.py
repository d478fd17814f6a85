"""kiln: a declarative language for neural-network models, and its compiler.

import kiln
program = kiln.load("examples/mlp.kiln")          # parse and resolve imports
model = kiln.compile("examples/mlp.kiln", seed=0)  # elaborate, initialise, build
y = model(x)                                      # numpy in, numpy out
"""

from __future__ import annotations

from kiln.runtime.version import __version__

from .api import KilnError, compile, load, load_compiled

__all__ = ["KilnError", "__version__", "compile", "load", "load_compiled"]
