"""The ONNX op converters: CONVERTERS maps each op type of the default domain ('' or
'ai.onnx') to the function that builds it from kiln primitives.

    outputs = CONVERTERS[node.op_type](gb, node)   # one Value (or None) per ONNX output

A converter builds only with gb.op(...)/gb.constant(...) and raises Unsupported for what kiln
cannot compute exactly (an op, attribute value, element type or run-time shape input); the
importer (importer.py) lists every such node at once. The converters live by family in
convert_elementwise.py, convert_tensor.py, convert_nn.py, convert_rnn.py,
convert_einsum.py and convert_grid.py; ops the standard
defines as functions of other ops (and kiln has no converter of its own for) expand their
function body (convert_function.py); the helpers they share, the OnnxNode they see and
Unsupported, in convert_base.py.
"""

from __future__ import annotations

from . import (
    convert_control,
    convert_einsum,
    convert_elementwise,
    convert_grid,
    convert_nn,
    convert_rnn,
    convert_tensor,
)
from .convert_base import Converter, OnnxNode, Unsupported
from .convert_function import function_converter, function_ops

CONVERTERS: dict[str, Converter] = {
    **convert_elementwise.CONVERTERS,
    **convert_tensor.CONVERTERS,
    **convert_nn.CONVERTERS,
    **convert_rnn.CONVERTERS,
    **convert_control.CONVERTERS,
    **convert_einsum.CONVERTERS,
    **convert_grid.CONVERTERS,
}
# the ops ONNX defines as functions of others, and kiln has no converter of its own for
_EXPAND = function_converter(CONVERTERS)
CONVERTERS.update({op: _EXPAND for op in function_ops() if op not in CONVERTERS})

# The input slots whose values kiln needs at import time (shapes, axes, pads, bounds: kiln
# takes them as attributes), by op type. The importer names them when they are not constants.
_REDUCTIONS = ("ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1",
               "ReduceL2", "ReduceSumSquare", "ReduceLogSum", "ReduceLogSumExp")
IMPORT_TIME_INPUTS: dict[str, tuple[int, ...]] = {
    "Reshape": (1,), "Expand": (1,), "Tile": (1,), "Squeeze": (1,), "Unsqueeze": (1,),
    "Split": (1,), "Slice": (1, 2, 3, 4), "Pad": (1, 2, 3), "Trilu": (1,), "Clip": (1, 2),
    "OneHot": (1,), "Range": (0, 1, 2), "ConstantOfShape": (0,), "Resize": (1, 2, 3),
    "Dropout": (1, 2), "Compress": (1,), "ReverseSequence": (1,), "CumSum": (1,),
    "DFT": (1, 2), "Col2Im": (1, 2), "TopK": (1,), "CumProd": (1,),
    **{op: (1,) for op in _REDUCTIONS},
}

__all__ = ["CONVERTERS", "IMPORT_TIME_INPUTS", "Converter", "OnnxNode", "Unsupported"]
