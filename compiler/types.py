"""Element types and tensor types (dtype + shape of Dims)."""

from __future__ import annotations

import math
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cache

import numpy as np

from .dims import Dim, DivAtom
from .errors import KilnError, Span


@cache
def bfloat16() -> np.dtype:
    """numpy's dtype for bf16, ml_dtypes' bfloat16 (numpy has none). ml_dtypes is imported
    here, on first use: importing it takes longer than importing numpy, and most models never
    use bf16."""
    import ml_dtypes

    return np.dtype(ml_dtypes.bfloat16)


def is_bfloat16(dtype) -> bool:
    """Whether `dtype` is ml_dtypes' bfloat16, without importing ml_dtypes (an array of that
    dtype means it is imported already)."""
    module = sys.modules.get("ml_dtypes")
    return module is not None and dtype == module.bfloat16


_EAGER_DTYPES = {
    "f32": np.dtype(np.float32),
    "f16": np.dtype(np.float16),
    "f64": np.dtype(np.float64),
    "i8": np.dtype(np.int8),
    "u8": np.dtype(np.uint8),
    "i16": np.dtype(np.int16),
    "u16": np.dtype(np.uint16),
    "i32": np.dtype(np.int32),
    "u32": np.dtype(np.uint32),
    "i64": np.dtype(np.int64),
    "bool": np.dtype(np.bool_),
}
_KILN_OF_NUMPY = {dt: name for name, dt in _EAGER_DTYPES.items()}


class _NumpyDtypes(Mapping):
    """kiln name -> numpy dtype, bf16's made on first use (bfloat16())."""

    _NAMES = ("f32", "f16", "bf16", "f64", "i8", "u8", "i16", "u16", "i32", "u32", "i64", "bool")

    def __getitem__(self, name: str) -> np.dtype:
        return bfloat16() if name == "bf16" else _EAGER_DTYPES[name]

    def __contains__(self, name: object) -> bool:
        return name in self._NAMES

    def __iter__(self) -> Iterator[str]:
        return iter(self._NAMES)

    def __len__(self) -> int:
        return len(self._NAMES)


NUMPY_DTYPES: Mapping[str, np.dtype] = _NumpyDtypes()
DTYPES = ("f32", "f16", "bf16", "f64", "i8", "u8", "i16", "u16", "i32", "u32", "i64", "bool")
FLOAT_DTYPES = frozenset({"f32", "f16", "bf16", "f64"})
INT_DTYPES = frozenset({"i8", "u8", "i16", "u16", "i32", "u32", "i64"})
# the integers narrower than 32 bits, and u32: stored in their width, computed in a wider
# signed int that holds every value (codegen/llvm/abi.py), wrapped again when stored
NARROW_INTS = frozenset({"i8", "u8", "i16", "u16", "u32"})

# promotion order for mixed-dtype arithmetic (as PyTorch: bool < ints < floats)
_RANK = {"bool": 0, "i8": 1, "u8": 1, "i16": 2, "u16": 2, "i32": 3, "u32": 3, "i64": 4,
         "bf16": 5, "f16": 5, "f32": 6, "f64": 7}


def promote(a: str, b: str) -> str:
    """The dtype two operands meet at; f16 with bf16 meets at f32; integers as numpy's
    (i8 with u8 meets at i16, i32 with u32 at i64)."""
    if a == b:
        return a
    if {a, b} == {"f16", "bf16"}:
        return "f32"
    if a in INT_DTYPES and b in INT_DTYPES:
        return _KILN_OF_NUMPY[np.promote_types(_EAGER_DTYPES[a], _EAGER_DTYPES[b])]
    return a if _RANK[a] > _RANK[b] else b


def dtype_of_numpy(dtype: np.dtype) -> str | None:
    """The kiln name of a numpy dtype, or None where kiln has no such element type."""
    try:
        name = _KILN_OF_NUMPY.get(np.dtype(dtype))
    except TypeError:
        return None
    return "bf16" if name is None and is_bfloat16(dtype) else name


Shape = tuple[Dim, ...]

# The most bytes one tensor may span: 2**48 (256 TiB), the user address space of 64-bit CPUs
# with 4-level page tables, so no such tensor could be allocated anyway. Native code computes
# sizes, strides, offsets and the heap blocks of its kernels in int64; with every tensor this
# far below 2**63, none of them can wrap.
MAX_TENSOR_BYTES = 2**48


def span_bytes(shape, itemsize: int) -> int:
    """The bytes a tensor of this concrete shape spans, counting an empty axis as one: the
    largest size or stride code computes for it (a tensor with no elements still has strides,
    products of its other sizes). Exact: Python ints never wrap."""
    return itemsize * math.prod(max(int(n), 1) for n in shape)


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

    def least_span_bytes(self) -> int:
        """A lower bound of `span_bytes` for every value of the symbolic sizes: the constant
        sizes alone (a symbolic size spans at least one)."""
        return span_bytes([d.value for d in self.shape if d.is_const], self.np_dtype.itemsize)

    def check_size(self, span: Span | None) -> None:
        """Refuse a tensor whose constant sizes alone span MAX_TENSOR_BYTES or more, or
        whose size formulas hold a number that large (K0304): no call could run it, and its
        sizes would wrap in int64 arithmetic."""
        least = self.least_span_bytes()
        huge = [d for d in self.shape if largest_number(d) >= MAX_TENSOR_BYTES]
        if least >= MAX_TENSOR_BYTES:
            at_least = "" if self.is_concrete() else "at least "
            why = f"it spans {at_least}{bytes_text(least)} bytes"
        elif huge:  # 2**70 * B: too large unless B is 0
            why = f"its size {huge[0]} holds a number past {bytes_text(MAX_TENSOR_BYTES)}"
        else:
            return
        raise KilnError("K0304", f"the tensor {self} is too large: {why}; {SIZE_LIMIT}", span,
                        hint="a size in this expression is too large")

    def with_shape(self, shape) -> TensorType:
        return TensorType(self.dtype, tuple(shape))

    def with_dtype(self, dtype: str) -> TensorType:
        return TensorType(dtype, self.shape)

    def __str__(self) -> str:
        return f"{self.dtype}[{', '.join(str(d) for d in self.shape)}]"


def shape_str(shape) -> str:
    return "[" + ", ".join(str(Dim.of(d)) for d in shape) + "]"


def largest_number(d: Dim) -> int:
    """The largest magnitude of a number in a size's formula (its floor divisions' too)."""
    largest = 0
    for mono, coeff in d.terms:
        largest = max(largest, abs(coeff))
        for atom, _power in mono:
            if isinstance(atom, DivAtom):
                largest = max(largest, largest_number(atom.num))
    return largest


def bytes_text(n: int) -> str:
    """A byte count, as a power of two when it is one (2**66 reads better than 20 digits)."""
    return f"2**{n.bit_length() - 1}" if n & (n - 1) == 0 else f"{n:,}"


SIZE_LIMIT = f"a tensor must span less than {bytes_text(MAX_TENSOR_BYTES)} bytes (256 TiB)"
