"""The primitive ops: one OpRecord each, registered explicitly by the family modules below.

Importing this package imports every family, in this order, and each registers its records.
"""

from . import control, elementwise, linalg, nn, reduce, shape  # noqa: F401  (each registers its records)
from .registry import REGISTRY, REQUIRED, Arg, OpError, OpRecord, Prop, has, lookup

__all__ = ["REGISTRY", "REQUIRED", "Arg", "OpError", "OpRecord", "Prop", "has", "lookup"]
