"""What the standard-library tests share: random f32 inputs and one comparison, with one
tolerance (f32 results against a float64 or f32 reference of the same computation)."""

from __future__ import annotations

import numpy as np

RTOL = ATOL = 1e-5


def rand(rng, *shape, scale: float = 1.0) -> np.ndarray:
    """N(0, scale^2) values of `shape` as f32."""
    return (scale * rng.standard_normal(shape)).astype(np.float32)


def close(got, want, rtol: float = RTOL, atol: float = ATOL) -> None:
    """`got` is f32, has want's shape and is within the tolerances of it."""
    want = np.asarray(want)
    assert got.dtype == np.float32 and got.shape == want.shape, (got.dtype, got.shape, want.shape)
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol)
