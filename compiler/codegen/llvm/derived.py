"""The native backend's derived arrays (compiler/derived.py explains the naming): on top of
the compiler's kinds (a weight's `permute`), the GEMM's prepacked panels:

    prepack_a(groups=1,kc=256):layer1.0.conv1.weight     (a convolution's, as the GEMM's A)
    prepack_b(groups=1,nr=32):permute(perm=1_0):0.weight (a Linear's weight.T, as B)
    winograd_b(nr=32):layer1.0.conv1.weight             (G g G^T, winograd.py's 36 Bs)
    winograd_ct(nr=32):main.3.weight                     (a 4x4 stride-2 transposed
                                                          convolution's, as a 3x3's)
    winograd_ct_or_b(nr=32):main.3.weight                (that, then prepack_b's panels:
                                                          the one a call's batch picks)
    winograd_lazy_or_b(nr=32):main.3.weight              (prepack_b's panels, then the
                                                          weight channels-last, from which
                                                          a large batch makes U by blocks)
    winograd_lazy_a(kc=256):layer4.0.conv2.weight        (a convolution's likewise, after
                                                          prepack_a's slices)

The module lists them among its parameters (ModuleLayout.params); the runtime makes them when
it binds the weights (`resolve`), so new weights give new derived arrays, and an ahead-of-time
library stores them beside the others for C callers.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ... import derived as base
from ...derived import derived_name
from .packing import (
    prepack_a,
    prepack_a_bf16,
    prepack_b,
    prepack_b_bf16,
    winograd_b,
    winograd_ct,
    winograd_ct_or_b,
    winograd_lazy_a,
    winograd_lazy_or_b,
)

KINDS: dict[str, base.Kind] = {**base.KINDS, "prepack_a": prepack_a, "prepack_b": prepack_b,
                               "prepack_a_bf16": prepack_a_bf16,  # precision="bf16": paired
                               "prepack_b_bf16": prepack_b_bf16, "winograd_b": winograd_b,
                               "winograd_ct": winograd_ct, "winograd_ct_or_b": winograd_ct_or_b,
                               "winograd_lazy_or_b": winograd_lazy_or_b,
                               "winograd_lazy_a": winograd_lazy_a}


def parse(name: str) -> tuple[str, dict, str] | None:
    """(kind, args, source) of a derived name; None for an ordinary parameter name."""
    return base.parse(name, KINDS)


def resolve(name: str, lookup: Callable[[str], np.ndarray]) -> np.ndarray:
    """The array a name in ModuleLayout.params stands for: a parameter or constant
    (`lookup(name)`), or a derived array made from its source (`lookup(source)`, resolved)."""
    return base.resolve(name, lookup, KINDS)


def remakeable(name: str, is_param: Callable[[str], bool]) -> bool:
    """Whether the array `name` can be remade from parameters alone (after new weights)."""
    return base.remakeable(name, is_param, KINDS)


__all__ = ["KINDS", "derived_name", "parse", "resolve", "remakeable"]
