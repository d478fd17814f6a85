"""The ONNX op converters: CONVERTERS maps each op type of the default domain ('' or
'ai.onnx') to the function that builds it from kiln primitives.

    outputs = CONVERTERS[node.op_type](gb, node)   # one Value (or None) per ONNX output

A converter builds only with gb.op(...)/gb.constant(...) and raises Unsupported for what kiln
cannot compute exactly (an op, attribute value, element type or run-time shape input); the
importer (importer.py) lists every such node at once. The converters live by family in
convert_elementwise.py, convert_tensor.py, convert_nn.py, convert_rnn.py,
convert_einsum.py, convert_grid.py and convert_signal.py; ops the standard
defines as functions of other ops (and kiln has no converter of its own for) expand their
function body (convert_function.py); the helpers they share, the OnnxNode they see and
Unsupported, in convert_base.py.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx

from ..builder import GraphBuilder
from . import (
    convert_control,
    convert_domains,
    convert_einsum,
    convert_elementwise,
    convert_grid,
    convert_nn,
    convert_quant,
    convert_rnn,
    convert_signal,
    convert_tensor,
)
from .convert_base import Converter, OnnxNode, ReadAttributes, Unsupported
from .convert_function import decode_attribute, function_converter, function_ops

CONVERTERS: dict[str, Converter] = {
    **convert_elementwise.CONVERTERS,
    **convert_tensor.CONVERTERS,
    **convert_nn.CONVERTERS,
    **convert_rnn.CONVERTERS,
    **convert_control.CONVERTERS,
    **convert_einsum.CONVERTERS,
    **convert_grid.CONVERTERS,
    **convert_signal.CONVERTERS,
    **convert_quant.CONVERTERS,
}


def convert_node(gb: GraphBuilder, node: OnnxNode) -> list:
    """The node converted by CONVERTERS[node.op_type], refused (Unsupported) where it has an
    attribute the converter never read and whose value is not the standard's default for
    the node's opset: each such attribute named, all at once."""
    node.attrs = ReadAttributes(node.attrs)
    outs = converter_of(node.domain, node.op_type)(gb, node)
    ignored = [name for name in dict.keys(node.attrs) if name not in node.attrs.read
               and not _is_default(node, name, dict.__getitem__(node.attrs, name))]
    foreign = [name for name in ignored if not _in_schema(node, name)]
    if foreign:
        listed = ", ".join(f"{name}={dict.__getitem__(node.attrs, name)!r}"
                           for name in sorted(foreign))
        raise Unsupported(f"{listed}: not an attribute of {node.op_type} in opset "
                          f"{node.opset} (onnxruntime refuses the model too)")
    if ignored:
        listed = ", ".join(f"{name}={dict.__getitem__(node.attrs, name)!r}"
                           for name in sorted(ignored))
        raise Unsupported(f"attribute{'s' if len(ignored) > 1 else ''} {listed}: kiln's "
                          f"converter of {node.op_type} supports only the default")
    return outs


def _in_schema(node: OnnxNode, name: str) -> bool:
    """Whether `name` is an attribute of the node's op at its opset (True where ONNX has no
    schema of the op to ask: a converter of another domain's op)."""
    try:
        schema = onnx.defs.get_schema(node.op_type, node.opset, node.domain or "")
    except onnx.defs.SchemaError:
        return True
    return name in schema.attributes


def _is_default(node: OnnxNode, name: str, value: Any) -> bool:
    """Whether attribute `name` has the value the op's schema gives it by default."""
    try:
        schema = onnx.defs.get_schema(node.op_type, node.opset, node.domain or "")
    except onnx.defs.SchemaError:
        return False
    spec = schema.attributes.get(name)
    if spec is None or not spec.default_value.name:
        return False  # not the op's attribute, or one without a default
    default = decode_attribute(spec.default_value)
    try:
        return bool(np.array_equal(np.asarray(value), np.asarray(default)))
    except (TypeError, ValueError):
        return False


# the ops ONNX defines as functions of others, and kiln has no converter of its own for
_EXPAND = function_converter(convert_node, CONVERTERS)
CONVERTERS.update({op: _EXPAND for op in function_ops() if op not in CONVERTERS})
# the ops of ONNX's other domains that kiln converts: those defined as functions (the
# preview domain's FlexAttention, ...), through their bodies, and convert_domains.py's
DOMAIN_CONVERTERS: dict[str, dict[str, Converter]] = {
    "ai.onnx.preview": {op: _EXPAND for op in function_ops(("ai.onnx.preview",))},
    **convert_domains.DOMAINS,
}


def converter_of(domain: str, op_type: str) -> Converter | None:
    """The converter of `op_type` of `domain` ('' or 'ai.onnx': the standard one), or None."""
    if domain in ("", "ai.onnx"):
        return CONVERTERS.get(op_type)
    return DOMAIN_CONVERTERS.get(domain, {}).get(op_type)

def similar_ops(domain: str, op_type: str) -> list[str]:
    """The ops kiln converts of `domain` whose names are closest to `op_type` (`Matmul`:
    MatMul), for an error that names an op kiln has no converter for."""
    import difflib

    known = CONVERTERS if domain in ("", "ai.onnx") else DOMAIN_CONVERTERS.get(domain, {})
    by_case = {op.lower(): op for op in known}
    close = difflib.get_close_matches(op_type.lower(), list(by_case), n=3, cutoff=0.85)
    return [by_case[op] for op in close]

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
    "MaxUnpool": (2,), "STFT": (1, 3), "MelWeightMatrix": (0, 1, 2, 3, 4),
    "Upsample": (1,),  # (before opset 13: the version converter makes it a Resize)
    **{op: (1,) for op in _REDUCTIONS},
}

__all__ = ["CONVERTERS", "DOMAIN_CONVERTERS", "IMPORT_TIME_INPUTS", "Converter", "OnnxNode",
           "Unsupported", "convert_node", "converter_of", "similar_ops"]
