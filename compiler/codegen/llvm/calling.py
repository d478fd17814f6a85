"""What the caller of a compiled module follows: where every tensor lives (`ModuleLayout`),
the workspace offsets at a call's sizes (`plan_memory`) and the names of the profiling
symbols. Needs nothing of LLVM: a model loaded from a library or the compile cache calls its
code with these alone."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ...sizes import place
from ...types import TensorType

PROFILE_SYMBOL, CYCLES_SYMBOL = "kiln_profile", "kiln_cycles"


@dataclass
class ModuleLayout:
    """Where every tensor of the model lives at run time."""

    symbols: list[str]
    params: list[str] = field(default_factory=list)  # dotted paths, then "const:N" names
    constants: dict[str, np.ndarray] = field(default_factory=dict)
    slots: list[tuple[TensorType, int, int]] = field(default_factory=list)  # type, born, dies
    failures: list = field(default_factory=list)  # (message, span) of each status code - 1
    # constants made from weights that no derived name remakes (a BatchNorm folded with
    # constant statistics): new weights need the graph optimized again (aot: a library that
    # cannot take new weights)
    folded: set[str] = field(default_factory=set)
    # a profiling build's timed kernels: the node of each entry of kiln_profile, in run order,
    # as a path: (node,) in the model's graph, (scan, node) in a scan's body, ...
    profiled: list[tuple[int, ...]] = field(default_factory=list)

    def param(self, name: str) -> int:
        """The index of `name` in `params`, added at the end if new."""
        if name not in self.params:
            self.params.append(name)
        return self.params.index(name)


def plan_memory(layout: ModuleLayout, dims: dict[str, int]) -> tuple[np.ndarray, int]:
    """Offsets of the intermediate tensors in one workspace at the sizes `dims`, reusing the
    bytes of dead tensors (passes/memory.py); returns (offsets, workspace bytes)."""
    return place(layout.slots, dims)
