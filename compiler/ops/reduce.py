"""Reductions (sum mean max min prod, argmax argmin, logsumexp) and softmax along an axis.

As PyTorch: sums and products of bool or integer tensors are i64, mean needs floats, and the
arg-reductions give i64 indices. Softmax and logsumexp subtract the maximum first.
"""

from __future__ import annotations

import numpy as np

from ._common import ALL_DTYPES, FLOATS, INTS, along_axis, reduction
from .registry import register


def _widen_ints(dtype: str, _attrs) -> str:
    return "i64" if dtype in INTS or dtype == "bool" else dtype


def _shifted_max(x, axis):
    """max over axis (keepdims), with infinite maxima replaced by 0 so x - m stays finite."""
    m = np.max(x, axis=axis, keepdims=True)
    return np.where(np.isfinite(m), m, 0)


def softmax(x, axis):
    e = np.exp(x - _shifted_max(x, axis))
    return e / np.sum(e, axis=axis, keepdims=True)


def log_softmax(x, axis):
    shifted = x - _shifted_max(x, axis)
    return shifted - np.log(np.sum(np.exp(shifted), axis=axis, keepdims=True))


def logsumexp(x, axis, keepdims):
    m = _shifted_max(x, axis)
    out = np.log(np.sum(np.exp(x - m), axis=axis, keepdims=True)) + m
    return out if keepdims else np.squeeze(out, axis=axis)


register(reduction("sum", np.sum, "Sum over axis (None = every axis).", dtypes=ALL_DTYPES,
                   out_dtype=_widen_ints))
register(reduction("mean", np.mean, "Arithmetic mean over axis.", dtypes=FLOATS))
register(reduction("max", np.max, "Maximum over axis.", dtypes=ALL_DTYPES))
register(reduction("min", np.min, "Minimum over axis.", dtypes=ALL_DTYPES))
register(reduction("prod", np.prod, "Product over axis.", dtypes=ALL_DTYPES,
                   out_dtype=_widen_ints))
register(reduction("argmax", np.argmax,
                   "Index (i64) of the first maximum along one axis, or of the flattened tensor.",
                   dtypes=ALL_DTYPES, out_dtype="i64", single_axis=True))
register(reduction("argmin", np.argmin,
                   "Index (i64) of the first minimum along one axis, or of the flattened tensor.",
                   dtypes=ALL_DTYPES, out_dtype="i64", single_axis=True))
register(reduction("logsumexp", logsumexp, "log(sum(exp(x))) over axis, computed stably.",
                   dtypes=FLOATS))
register(along_axis("softmax", softmax, "exp(x) / sum(exp(x)) along axis, computed stably."))
register(along_axis("log_softmax", log_softmax, "log(softmax(x)) along axis, computed stably."))
