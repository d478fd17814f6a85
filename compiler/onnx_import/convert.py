"""The ONNX op converters: CONVERTERS maps each op type of the default domain ('' or
'ai.onnx') to the function that builds it from kiln primitives.

    outputs = CONVERTERS[node.op_type](gb, node)   # one Value (or None) per ONNX output

A converter builds only with gb.op(...)/gb.constant(...) and raises Unsupported for what kiln
cannot compute exactly (an op, attribute value, element type or run-time shape input); the
importer (importer.py) lists every such node at once. The converters live by family in
convert_elementwise.py, convert_tensor.py and convert_nn.py; the helpers they share, the
OnnxNode they see and Unsupported, in convert_base.py.
"""

from __future__ import annotations

from . import convert_elementwise, convert_nn, convert_tensor
from .convert_base import Converter, OnnxNode, Unsupported

CONVERTERS: dict[str, Converter] = {
    **convert_elementwise.CONVERTERS,
    **convert_tensor.CONVERTERS,
    **convert_nn.CONVERTERS,
}

__all__ = ["CONVERTERS", "Converter", "OnnxNode", "Unsupported"]
