"""Gradient rules of the training-mode ops (dropout, dropout_keyed, batch_norm in both modes)
against central finite differences in float64 (tests/_gradcheck.py)."""

from __future__ import annotations

import numpy as np
import pytest
from _gradcheck import backward, check_vjp
from hypothesis import given, settings
from hypothesis import strategies as st

from kiln.compiler.ops.random import keep_mask

KEY = np.array([11, 4], np.int64)


def f64(rng, *shape, scale: float = 1.0) -> np.ndarray:
    return scale * rng.standard_normal(shape)


def test_dropout_eval_mode_passes_the_cotangent_through():
    check_vjp("dropout", f64(np.random.default_rng(0), 3, 4), p=0.3)


@pytest.mark.parametrize("p", [0.0, 0.4, 1.0])
def test_dropout_keyed_gradient(p):
    """Linear in x for a fixed key: the finite differences see the one mask the rule reuses."""
    check_vjp("dropout_keyed", f64(np.random.default_rng(1), 4, 7), KEY, p=p, stream=2)


def test_dropout_keyed_gradient_reuses_the_forward_mask():
    x = f64(np.random.default_rng(2), 6, 9)
    (y,), (ct,), (dx, dkey) = backward("dropout_keyed", x, KEY, p=0.5, stream=7)
    keep = keep_mask(x.shape, KEY, 7, 0.5)
    np.testing.assert_array_equal(y != 0, keep)
    np.testing.assert_array_equal(dx, np.where(keep, 2 * ct, 0))
    assert dkey is None


BN_SHAPES = st.sampled_from([(4, 3), (2, 3, 5), (3, 2, 2, 3), (2, 1, 1, 2)])


@settings(max_examples=12, deadline=None)
@given(shape=BN_SHAPES, training=st.booleans(), affine=st.sampled_from(["both", "weight",
                                                                          "bias", "none"]),
       seed=st.integers(0, 2**16))
def test_batch_norm_gradient(shape, training, affine, seed):
    rng = np.random.default_rng(seed)
    channels = shape[1]
    x = f64(rng, *shape, scale=2.0) + 1.0
    mean = f64(rng, channels)
    var = rng.uniform(0.5, 2.0, channels)
    weight = f64(rng, channels) if affine in ("both", "weight") else None
    bias = f64(rng, channels) if affine in ("both", "bias") else None
    check_vjp("batch_norm", x, mean, var, weight, bias, training=training, eps=1e-3,
              rtol=1e-5, atol=1e-6)
