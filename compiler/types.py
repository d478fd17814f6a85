"""Element types and tensor types (dtype + shape of Dims)."""

from __future__ import annotations

from dataclasses import dataclass

import ml_dtypes
import numpy as np

from .dims import Dim

# kiln name -> numpy dtype; bf16 comes from ml_dtypes (numpy has none)
NUMPY_DTYPES: dict[str, np.dtype] = {
    "f32": np.dtype(np.float32),
    "f16": np.dtype(np.float16),
    "bf16": np.dtype(ml_dtypes.bfloat16),
    "f64": np.dtype(np.float64),
    "i32": np.dtype(np.int32),
    "i64": np.dtype(np.int64),
    "bool": np.dtype(np.bool_),
}
DTYPES = ("f32", "f16", "bf16", "i32", "i64", "bool")
FLOAT_DTYPES = frozenset({"f32", "f16", "bf16", "f64"})
INT_DTYPES = frozenset({"i32", "i64"})

# promotion order for mixed-dtype arithmetic (as PyTorch: bool < ints < floats)
_RANK = {"bool": 0, "i32": 1, "i64": 2, "bf16": 3, "f16": 3, "f32": 4, "f64": 5}


def promote(a: str, b: str) -> str:
    """The dtype two operands meet at; f16 with bf16 meets at f32."""
    if a == b:
        return a
    if {a, b} == {"f16", "bf16"}:
        return "f32"
    return a if _RANK[a] > _RANK[b] else b


def dtype_of_numpy(dtype: np.dtype) -> str | None:
    for name, np_dtype in NUMPY_DTYPES.items():
        if np_dtype == dtype:
            return name
    return None


Shape = tuple[Dim, ...]


@dataclass(frozen=True)
class TensorType:
    """A tensor's element type and shape; dimensions may be symbolic."""

    dtype: str
    shape: Shape

    def __post_init__(self):
        object.__setattr__(self, "shape", tuple(Dim.of(d) for d in self.shape))

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def np_dtype(self) -> np.dtype:
        return NUMPY_DTYPES[self.dtype]

    def is_concrete(self) -> bool:
        return all(d.is_const for d in self.shape)

    def concrete_shape(self, env: dict[str, int] | None = None) -> tuple[int, ...]:
        return tuple(d.evaluate(env or {}) for d in self.shape)

    def with_shape(self, shape) -> TensorType:
        return TensorType(self.dtype, tuple(shape))

    def with_dtype(self, dtype: str) -> TensorType:
        return TensorType(dtype, self.shape)

    def __str__(self) -> str:
        return f"{self.dtype}[{', '.join(str(d) for d in self.shape)}]"


def shape_str(shape) -> str:
    return "[" + ", ".join(str(Dim.of(d)) for d in shape) + "]"
