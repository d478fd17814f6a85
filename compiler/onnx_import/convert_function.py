"""Ops the ONNX standard defines as functions of other ops (Attention, SoftmaxCrossEntropyLoss,
NegativeLogLikelihoodLoss, CenterCropPad, the window functions, ...): converted by expanding
the function body the installed onnx gives for the node's opset, and converting its nodes.

The body is the operator's definition, so where every op in it converts, the result is the
op's; where one does not, the refusal names the op inside the function.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx
from onnx import FunctionProto, NodeProto, TypeProto, helper, numpy_helper

from ..builder import GraphBuilder
from .convert_base import KILN_DTYPES, Converter, OnnxNode, Unsupported
from .convert_control import NodeWithSubgraphs

_SUBGRAPH_ATTRS = (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
_ONNX_TYPE_OF = {kiln: onnx_type for onnx_type, kiln in KILN_DTYPES.items()}


def function_ops(domains: tuple[str, ...] = ("", "ai.onnx")) -> list[str]:
    """The op types of `domains` some opset of the installed onnx defines as a function."""
    names = set()
    for schema in onnx.defs.get_all_schemas_with_history():
        if schema.domain in domains and (
                schema.has_function or schema.has_context_dependent_function):
            names.add(schema.name)
    return sorted(names)


def function_converter(convert: Converter, known: Mapping[str, Converter]) -> Converter:
    """The converter that expands a function op and converts each node of its body with
    `convert` (convert.py `convert_node`); `known`: the op types convert takes (convert.py's
    CONVERTERS, passed in so that neither module imports the other)."""

    def expand(gb: GraphBuilder, node: OnnxNode) -> list:
        try:
            schema = onnx.defs.get_schema(node.op_type, node.opset, node.domain or "")
        except onnx.defs.SchemaError:
            raise Unsupported(f"{node.op_type} is not defined at opset {node.opset}") from None
        attributes = _attributes(node, schema)
        body = _body(schema, node, attributes)
        if body is None:
            raise Unsupported(f"no converter for {node.op_type}, and ONNX defines it as a "
                              f"function of other ops only in other opsets than {node.opset}")
        return _convert_body(gb, node, body, attributes, convert, known)

    return expand


def _attributes(node: OnnxNode, schema) -> dict[str, onnx.AttributeProto]:
    """The node's attributes as protos, with the schema's defaults for the absent ones."""
    out = {}
    for name, value in node.attrs.items():
        if isinstance(value, np.ndarray):
            value = numpy_helper.from_array(value)
        out[name] = helper.make_attribute(name, value)
    for name, spec in schema.attributes.items():
        if name not in out and spec.default_value.name:
            out[name] = spec.default_value
    return out


def _body(schema, node: OnnxNode, attributes: dict) -> FunctionProto | None:
    """The function body for the node's opset (the latest defined at or before it)."""
    plain = [v for v in schema.function_opset_versions if v <= node.opset]
    dependent = [v for v in schema.context_dependent_function_opset_versions if v <= node.opset]
    if not plain and not dependent:
        return None
    body = FunctionProto()
    if dependent and (not plain or max(dependent) >= max(plain)):
        proto = NodeProto(op_type=node.op_type, domain=node.domain,
                          input=[f"in{i}" if v is not None else "" for i, v in
                                 enumerate(node.inputs)],
                          output=node.outputs, attribute=list(attributes.values()))
        types = [_type_proto(v) for v in node.inputs]
        body.ParseFromString(schema.get_context_dependent_function_with_opset_version(
            max(dependent), proto.SerializeToString(), [t.SerializeToString() for t in types]))
    else:
        body.ParseFromString(schema.get_function_with_opset_version(max(plain)))
    return body


def _type_proto(value) -> TypeProto:
    """An ONNX tensor type of a kiln Value (empty for an absent input)."""
    if value is None:
        return TypeProto()
    shape = [d.value if d.is_const else str(d) for d in value.type.shape]
    return helper.make_tensor_type_proto(_ONNX_TYPE_OF[value.type.dtype], shape)


def _convert_body(gb: GraphBuilder, node: OnnxNode, body: FunctionProto, attributes: dict,
                  convert: Converter, known: Mapping[str, Converter]) -> list:
    """Convert the body's nodes in order, its formal inputs bound to the node's."""
    values = {name: node.inputs[i] if i < len(node.inputs) else None
              for i, name in enumerate(body.input)}
    consts = {name: node.consts[i] if i < len(node.consts) else None
              for i, name in enumerate(body.input)}
    opsets = {o.domain or "": o.version for o in body.opset_import}
    for inner in body.node:
        domain = inner.domain or ""
        if domain not in ("", "ai.onnx") or inner.op_type not in known:
            raise Unsupported(f"{node.op_type} is a function of {inner.op_type}, which kiln "
                              "does not convert")
        inner_attrs = {}
        for a in inner.attribute:
            if a.ref_attr_name:
                if a.ref_attr_name in attributes:
                    inner_attrs[a.name] = decode_attribute(attributes[a.ref_attr_name])
            else:
                inner_attrs[a.name] = decode_attribute(a)
        scope = getattr(node, "scope", None)
        nested = scope is not None and any(a.type in _SUBGRAPH_ATTRS for a in inner.attribute)
        converted = NodeWithSubgraphs(
            subgraph=scope(values, consts) if nested else None, scope=scope,
            name=f"{node.name}/{inner.op_type}", op_type=inner.op_type, domain=domain,
            index=node.index, opset=opsets.get(domain, node.opset), attrs=inner_attrs,
            inputs=[values.get(n) if n else None for n in inner.input],
            consts=[consts.get(n) if n else None for n in inner.input],
            outputs=list(inner.output))
        outs = convert(gb, converted)
        for name, value in zip(inner.output, outs, strict=False):
            if name:
                values[name] = value
    results = []
    for i, name in enumerate(body.output):
        wanted = i < len(node.outputs) and node.outputs[i]
        results.append(values.get(name) if wanted else None)
    return results


def decode_attribute(a: onnx.AttributeProto):
    """An attribute's value as converters see it: tensors as numpy arrays, strings as str."""
    value = helper.get_attribute_value(a)
    if isinstance(value, onnx.TensorProto):
        return numpy_helper.to_array(value)
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, list) and value and isinstance(value[0], bytes):
        return [v.decode() for v in value]
    return value

