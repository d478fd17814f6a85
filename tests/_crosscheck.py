"""The oracle of every model-level cross-target check, and the -O0 vs -O1 sweep.

The oracle is the reference interpreter on the graph as elaborated (`opt_level=0`): a target
compared with the reference at -O1 runs the same optimized graph, so a wrong rewrite (say
`0 - x` simplified to `x`) would agree with itself. `check_opt_levels` runs a model through
the optimized targets (native code and the reference, both -O1) on random inputs and compares
each with the oracle.
"""

from __future__ import annotations

import os

import numpy as np
from _sizes import symbol_sizes
from _stdlibtest import close

import kiln

# f32 kernels against the same f32 graph interpreted by numpy: the GEMM's blocked sums and a
# folded BatchNorm round differently, measured up to 4e-6 on ResNet-18 logits of magnitude 5;
# a rewrite that changes the value of an expression (a dropped sign, a lost term) moves the
# result by far more.
RTOL, ATOL = 1e-4, 2e-5
OPTIMIZED = ("reference", "native")
# The reference at -O1 runs every pass the native target runs (fusion and the memory plan
# included), so it alone catches a wrong rewrite; native code adds its lowering, at the cost of
# an LLVM build (seconds for a network), which sweeps pay only where no other test does.
REFERENCE = ("reference",)


def oracle(source, **kw):
    """The model on the reference interpreter, unoptimized: what every target must compute."""
    return kiln.compile(source, target="reference", opt_level=0, **kw)


def random_inputs(model, size: int, rng, sizes: dict[str, int] | None = None
                  ) -> list[np.ndarray]:
    """One array per input (optional ones included), every symbolic size bound to `sizes` or
    else to `size`; integer inputs (token ids, node indices, class labels) are below 2, so
    they are valid for every size >= 2."""
    out = []
    env = symbol_sizes(model, sizes or {}, size)
    for port in model.inputs:
        shape = [d.evaluate(env) for d in port.type.shape]
        if port.type.dtype.startswith("f"):
            out.append(rng.standard_normal(shape).astype(port.type.np_dtype))
        elif port.type.dtype == "bool":
            out.append(rng.random(shape) < 0.3)
        else:
            out.append(rng.integers(0, min(2, size), shape).astype(port.type.np_dtype))
    return out


def perturbed(params: dict[str, np.ndarray], rng) -> dict[str, np.ndarray]:
    """The float weights moved off their initial values (a BatchNorm's ones and zeros would
    hide what folding it does with its statistics), running variances kept positive; a tied
    tensor (one array under two names) stays one."""
    made: dict[int, np.ndarray] = {}
    for path, value in params.items():
        if id(value) in made:
            continue
        if value.dtype.kind != "f":
            new = value
        elif path.endswith("running_var"):
            new = rng.uniform(0.5, 2.0, value.shape)
        else:  # on the scale of the initial values, so activations keep theirs
            spread = float(value.std()) or 1.0
            new = value * rng.uniform(0.8, 1.2, value.shape) \
                + 0.1 * spread * rng.standard_normal(value.shape)
        made[id(value)] = np.asarray(new, value.dtype)
    return {path: made[id(value)] for path, value in params.items()}


def as_tuple(outputs) -> tuple:
    return outputs if isinstance(outputs, tuple) else (outputs,)


def check_opt_levels(source, model: str | None = None, *, args: dict | None = None,
                     sizes: dict[str, int] | None = None, size: int = 2, seed: int = 0,
                     targets: tuple[str, ...] = OPTIMIZED, rtol: float = RTOL,
                     atol: float = ATOL) -> None:
    """Each of `targets` at -O1 computes what the unoptimized reference computes, on random
    inputs (symbolic sizes from `sizes`, else `size`) and the initial weights of `seed`
    perturbed."""
    if isinstance(source, str | os.PathLike):  # parsed once for the three compiles
        source = kiln.load(source)
    want_model = oracle(source, model=model, args=args, seed=seed)
    rng = np.random.default_rng(seed)
    weights = perturbed(want_model.state_dict(), rng)
    want_model.load_weights(weights)
    inputs = random_inputs(want_model, size, rng, sizes)
    want = as_tuple(want_model(*inputs))
    for target in targets:
        got = as_tuple(kiln.compile(source, model=model, args=args, weights=weights,
                                    target=target, opt_level=1)(*inputs))
        assert len(got) == len(want)
        for g, w in zip(got, want, strict=True):
            if w.dtype == np.float32:
                close(g, w, rtol, atol)
            else:
                assert g.dtype == w.dtype
                np.testing.assert_array_equal(g, w, err_msg=target)
