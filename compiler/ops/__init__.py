"""The primitive ops: one OpRecord each, registered explicitly by the family modules below.

Importing this package imports every family, in this order, and each registers its records.
"""

# the order is the registry's (listings and docs follow it), not the alphabet's
# isort: off
from . import control, elementwise, linalg  # noqa: F401  (each registers its records)
from . import norm, random, conv, resize, reduce  # noqa: F401
from . import views, slicing, gather, creation  # noqa: F401
# isort: on
from .registry import REGISTRY, REQUIRED, Arg, OpError, OpRecord, Prop, VjpNode, has, lookup

__all__ = ["REGISTRY", "REQUIRED", "Arg", "OpError", "OpRecord", "Prop", "VjpNode", "has",
           "lookup"]
