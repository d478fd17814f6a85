"""Derived parameters: arrays the native code reads that are computed from a parameter or a
constant before any call (a convolution weight prepacked for the GEMM), named so that the name
alone says how to make them:

    prepack_a(groups=1,kc=256):layer1.0.conv1.weight     (a convolution's, as the GEMM's A)
    prepack_b(groups=1,nr=32):main.3.weight              (a transposed convolution's, as B)

The module lists them among its parameters (ModuleLayout.params); the runtime makes them when
it binds the weights (`resolve`), so new weights give new derived arrays, and an ahead-of-time
library stores them beside the others for C callers.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .gemm import prepack_a, prepack_b

KINDS: dict[str, Callable[..., np.ndarray]] = {"prepack_a": prepack_a,
                                                  "prepack_b": prepack_b}


def derived_name(kind: str, source: str, **args: int) -> str:
    inner = ",".join(f"{k}={v}" for k, v in sorted(args.items()))
    return f"{kind}({inner}):{source}"


def parse(name: str) -> tuple[str, dict[str, int], str] | None:
    """(kind, args, source) of a derived name; None for an ordinary parameter name."""
    head, sep, source = name.partition("):")
    kind, paren, inner = head.partition("(")
    if not sep or not paren or kind not in KINDS:
        return None
    args = dict(item.split("=") for item in inner.split(",") if item)
    return kind, {k: int(v) for k, v in args.items()}, source


def resolve(name: str, lookup: Callable[[str], np.ndarray]) -> np.ndarray:
    """The array a name in ModuleLayout.params stands for: a parameter or constant
    (`lookup(name)`), or a derived array made from its source (`lookup(source)`)."""
    parsed = parse(name)
    if parsed is None:
        return lookup(name)
    kind, args, source = parsed
    return KINDS[kind](lookup(source), **args)
