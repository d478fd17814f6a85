"""Reading an ONNX file the one safe way: bounded, validated, every failure a KilnError.

    model = read_model("model.onnx")       # a ReadModel: the proto, its opset, its node order

What is refused, before any node is converted (each a KilnError naming the file or the node):
- the file: missing, not a regular file (a FIFO, a directory), larger than MAX_MODEL_BYTES
  (protobuf's own limit) or than memory (K0901);
- its bytes: not a protobuf ModelProto, truncated, or without a graph (K0902);
- the graph: a node reading a name nothing produces (dangling), two producers of one name, a
  cycle, an output nothing produces (K0903);
- external data: a location outside the model's directory, a symlink, a missing file, a file
  shorter than the tensor, a length that disagrees with the tensor's shape (K0904);
- the opset of the standard domain newer than onnx.defs.onnx_opset_version(), or older than
  13 where a node's op is another operator at that opset than at 13 and ONNX's version
  converter cannot convert the model to 13 (K0905). An older model whose every op is the
  same operator at 13 (the same schema, or one only extended since: Relu-6, ArgMax-12,
  Scan-11, ...) is read as opset 13; one with changed ops (Softmax-11, Squeeze-11) is
  converted to 13 by onnx.version_converter.
External data is read into the tensors (bounded by their declared shapes), so what follows
sees one self-contained proto.
"""

from __future__ import annotations

import math
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import helper

from ..errors import KilnError
from ..files import format_bytes, memory_bytes, open_regular, read_exactly, size_of

MIN_OPSET = 13
# protobuf cannot parse a message of 2 GiB or more: larger models keep weights in external data
MAX_MODEL_BYTES = 2**31 - 1
STANDARD_DOMAINS = ("", "ai.onnx")


@dataclass
class ReadModel:
    """A validated ONNX model: its proto (external data read in), where it came from, the
    opset of each domain it imports, and its top-level nodes' indices in an order where every
    node comes after what it reads."""

    proto: onnx.ModelProto
    path: str
    opsets: dict[str, int]
    order: list[int]

    @property
    def opset(self) -> int:
        """The opset of the standard domain."""
        return self.opsets[""]


def node_label(node: onnx.NodeProto, index: int) -> str:
    """How errors name a node: `node fc1/Gemm (#3, Gemm)` (its position when it has no name)."""
    name = node.name or f"#{index}"
    return f"node {name} (#{index}, {node.op_type})"


def read_model(path: str | os.PathLike) -> ReadModel:
    """The ONNX model in file `path`, read with bounds and validated (see the module's
    docstring); raises KilnError K0901-K0905."""
    path = os.fspath(path)

    def refuse(why: str) -> KilnError:
        return KilnError("K0901", f"cannot read the ONNX file {path}: {why}")

    limit = min(MAX_MODEL_BYTES, memory_bytes())
    with open_regular(path, refuse) as file:
        size = size_of(file)
        if size > limit:
            raise refuse(f"it is {format_bytes(size)}, larger than {format_bytes(limit)}",)
        data = bytes(read_exactly(file, size, refuse))
    proto = parse_model(data, path)
    return validate(proto, path, Path(path).parent)


def parse_model(data: bytes, name: str) -> onnx.ModelProto:
    """`data` as a ModelProto; anything else (malformed, truncated, not ONNX) is K0902."""
    proto = onnx.ModelProto()
    try:
        proto.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError):  # upb raises DecodeError, cpp others
        # protobuf's own words differ by implementation and say no more than this
        raise KilnError("K0902", f"{name} is not a valid ONNX file: its protobuf is malformed "
                        "or truncated",
                        hint="the file may be truncated or not an ONNX model") from None
    if proto.ir_version < 3 or not proto.opset_import or not proto.HasField("graph"):
        what = ("no graph" if not proto.HasField("graph") else
                "no opset imports" if not proto.opset_import else "no IR version")
        raise KilnError("K0902", f"{name} is not a valid ONNX model: it has {what}",
                        hint="the file may be truncated or not an ONNX model")
    return proto


def validate(proto: onnx.ModelProto, path: str, directory: Path | None) -> ReadModel:
    """Check the opsets and the graph, and read external data (relative to `directory`;
    None: a model given in memory may have none); a model of an opset below MIN_OPSET whose
    ops changed since is upgraded to MIN_OPSET (`upgraded`) once the graph is checked."""
    opsets = check_opsets(proto, path)
    read_external_data(proto.graph, path, directory)
    for tensor in tensors_of(proto.graph):
        check_tensor(tensor, path)
    order = node_order(proto.graph, path)
    if opsets[""] < MIN_OPSET:
        proto = upgraded(proto, path, opsets[""])
        opsets, order = check_opsets(proto, path), node_order(proto.graph, path)
    return ReadModel(proto, path, opsets, order)


def check_opsets(proto: onnx.ModelProto, path: str) -> dict[str, int]:
    """The opset of each imported domain ('' for the standard one), which must be at most the
    newest the installed onnx knows (K0905). Below MIN_OPSET, a model whose every standard
    op is the same operator at MIN_OPSET (`same_operator`) is read as MIN_OPSET; another
    keeps its opset, for `upgraded`."""
    opsets: dict[str, int] = {}
    for entry in proto.opset_import:
        domain = "" if entry.domain in STANDARD_DOMAINS else entry.domain
        opsets[domain] = int(entry.version)
    newest = onnx.defs.onnx_opset_version()
    version = opsets.get("")
    if version is None and not _any_standard_node(proto.graph):
        opsets[""] = MIN_OPSET  # (a model of other domains' ops only: no standard node reads it)
        return opsets
    if version is None:
        raise KilnError("K0905", f"{path} imports no opset of the standard ONNX domain",
                        hint=f"kiln imports opsets {MIN_OPSET} to {newest}")
    if version > newest or version < 1:
        raise KilnError("K0905", f"{path} uses ONNX opset {version}; kiln imports opsets "
                        f"{MIN_OPSET} to {newest}", hint=_CONVERT)
    if version < MIN_OPSET and not changed_since(proto.graph, version):
        opsets[""] = MIN_OPSET
    return opsets


def _any_standard_node(graph: onnx.GraphProto) -> bool:
    """Whether a node of the graph (or of its subgraphs) is of the standard domain."""
    return any(node.domain in STANDARD_DOMAINS or any(
        _any_standard_node(sub) for a in node.attribute
        for sub in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)))
        for node in graph.node)


_CONVERT = f"convert it first: onnx.version_converter.convert_version(model, {MIN_OPSET})"


def upgraded(proto: onnx.ModelProto, path: str, version: int) -> onnx.ModelProto:
    """The model of opset `version` (< MIN_OPSET) whose ops changed since, converted to
    MIN_OPSET by ONNX's own version converter (its adapters rewrite each changed op: an
    attribute become an input, Upsample a Resize, Scatter a ScatterElements); K0905 listing
    every changed node where it cannot."""
    changed = changed_since(proto.graph, version)
    try:
        from onnx import version_converter  # loaded only for an old model

        converted = version_converter.convert_version(proto, MIN_OPSET)
    except Exception as exc:  # its adapters raise their own kinds, with their reasons
        listed = "\n  ".join(changed[:MAX_CHANGED_LISTED])
        more = len(changed) - MAX_CHANGED_LISTED
        reason = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else repr(exc)
        raise KilnError("K0905", f"{path} uses ONNX opset {version}, where {len(changed)} "
                        f"node{'s' if len(changed) > 1 else ''} have ops defined otherwise "
                        f"than at opset {MIN_OPSET}, the oldest kiln imports, and ONNX's "
                        f"version converter cannot convert the model ({reason}):\n  {listed}"
                        + (f"\n  ... and {more} more" if more > 0 else ""),
                        hint=_CONVERT) from None
    for what in ("input", "output"):  # (Scan-8's adapter drops the batch axis of inputs)
        before, after = (_signature(getattr(m.graph, what)) for m in (proto, converted))
        if before != after:
            raise KilnError("K0905", f"{path} uses ONNX opset {version}, and ONNX's version "
                            f"converter changes its graph's {what}s converting it to opset "
                            f"{MIN_OPSET}:\n  " + "\n  ".join(changed[:MAX_CHANGED_LISTED]),
                            hint=_CONVERT)
    return converted


def _signature(values) -> list[bytes]:
    """Graph inputs or outputs as comparable values: each one's name and type."""
    return [v.name.encode() + v.type.SerializeToString() for v in values]


# how many nodes of an old opset's changed ops K0905 lists by name (the rest are counted)
MAX_CHANGED_LISTED = 50


def changed_since(graph: onnx.GraphProto, version: int) -> list[str]:
    """Each node of the standard domain (subgraphs' too) whose op is not the same operator at
    opset `version` as at MIN_OPSET (`same_operator`), labelled with both schema versions."""
    out = []
    for index, node in enumerate(graph.node):
        # Constant's older schemas only lack value attributes; the importer reads them all
        if node.domain in STANDARD_DOMAINS and node.op_type != "Constant":
            old, new = (_schema(node.op_type, v) for v in (version, MIN_OPSET))
            if old is None or new is None or not same_operator(old, new):
                defined = f"{node.op_type}-{old.since_version}" if old else "not defined"
                now = f"{node.op_type}-{new.since_version}" if new else "not defined"
                out.append(f"{node_label(node, index)}: {defined} at opset {version}, "
                           f"{now} at {MIN_OPSET}")
        for a in node.attribute:
            for sub in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
                out.extend(changed_since(sub, version))
    return out


def same_operator(old, new) -> bool:
    """Whether a node written for schema `old` means the same under schema `new`: the same
    inputs and outputs (names, optionality, type parameters), each type parameter allowing
    at least the old types, each old attribute with the same type, default and necessity,
    and every new one optional (its default the old behaviour: ONNX adds attributes so). A
    schema that is only extended to new element types is the same operator; one whose
    default or signature changed (Softmax-13's axis, Squeeze-13's axes input) is not."""
    if old.since_version == new.since_version:
        return True
    if new.deprecated:
        return False

    def formal(params) -> list[tuple]:
        return [(p.name, p.option, p.type_str) for p in params]

    if formal(old.inputs) != formal(new.inputs) or formal(old.outputs) != formal(new.outputs):
        return False
    allowed = {c.type_param_str: set(c.allowed_type_strs) for c in new.type_constraints}
    if any(not set(c.allowed_type_strs) <= allowed.get(c.type_param_str, set())
           for c in old.type_constraints):
        return False
    for name, spec in new.attributes.items():
        before = old.attributes.get(name)
        if before is None:
            if spec.required:
                return False
        elif (before.type, before.required, before.default_value.SerializeToString()) != \
                (spec.type, spec.required, spec.default_value.SerializeToString()):
            return False
    return set(old.attributes) <= set(new.attributes)


def _schema(op_type: str, version: int):
    """The schema of `op_type` in force at opset `version` (None: none)."""
    try:
        return onnx.defs.get_schema(op_type, version, "")
    except onnx.defs.SchemaError:
        return None


# ---------------------------------------------------------------------------- the graph
def node_order(graph: onnx.GraphProto, path: str, outer: frozenset[str] = frozenset()
               ) -> list[int]:
    """The indices of the graph's nodes, each after every node it reads from (a node holding
    a subgraph reads the outer names its subgraph uses; a subgraph may read `outer`, the names
    of the graphs around it); K0903 for a dangling input, a name produced twice, a cycle, or
    a graph output nothing produces."""
    given = {v.name for v in graph.input} | {t.name for t in graph.initializer} | set(outer)
    given |= {t.values.name for t in graph.sparse_initializer}
    producer: dict[str, int] = {}
    for i, node in enumerate(graph.node):
        for name in node.output:
            if not name:
                continue
            if name in producer or (name in given and name not in outer):
                first = ("a graph input or initializer" if name in given else
                         node_label(graph.node[producer[name]], producer[name]))
                raise KilnError("K0903", f"{path}: {node_label(node, i)} writes {name!r}, "
                                f"which {first} already defines",
                                hint="every name in an ONNX graph has one producer")
            producer[name] = i
    reads: list[set[int]] = []
    for i, node in enumerate(graph.node):
        deps = set()
        for name in node_reads(node):
            if name in producer:
                deps.add(producer[name])
            elif name not in given:
                raise KilnError("K0903", f"{path}: {node_label(node, i)} reads {name!r}, "
                                "which no node, input or initializer of the graph defines",
                                hint="the graph is incomplete (a dangling input)")
        reads.append(deps)
    for out in graph.output:
        if out.name not in producer and out.name not in given:
            raise KilnError("K0903", f"{path}: the graph output {out.name!r} is defined by no "
                            "node, input or initializer")
    return topological(graph, reads, path)


def topological(graph: onnx.GraphProto, reads: list[set[int]], path: str) -> list[int]:
    """The nodes in the graph's own order where it is topological, else in one that is (ONNX
    requires it, but a reordered graph means the same); K0903 naming a cycle's nodes."""
    readers: list[list[int]] = [[] for _ in reads]
    waiting = [len(deps) for deps in reads]
    for i, deps in enumerate(reads):
        for d in deps:
            readers[d].append(i)
    ready = [i for i, n in enumerate(waiting) if n == 0]
    ready.reverse()  # a stack popped from the end: ties go in the file's order
    order: list[int] = []
    while ready:
        i = ready.pop()
        order.append(i)
        for r in sorted(readers[i], reverse=True):
            waiting[r] -= 1
            if waiting[r] == 0:
                ready.append(r)
    if len(order) < len(reads):
        stuck = [i for i, n in enumerate(waiting) if n > 0]
        shown = ", ".join(node_label(graph.node[i], i) for i in stuck[:5])
        more = f" and {len(stuck) - 5} more" if len(stuck) > 5 else ""
        raise KilnError("K0903", f"{path}: the graph has a cycle through {shown}{more}",
                        hint="an ONNX graph is acyclic: loops are Loop or Scan nodes")
    return order


def node_reads(node: onnx.NodeProto) -> list[str]:
    """The outer names a node reads: its inputs, and the names its subgraphs use without
    defining them (an If's branches read the enclosing graph's values)."""
    names = [n for n in node.input if n]
    for attr in node.attribute:
        for sub in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else
                    list(attr.graphs) if attr.type == onnx.AttributeProto.GRAPHS else []):
            names.extend(sorted(free_names(sub)))
    return names


def free_names(graph: onnx.GraphProto) -> set[str]:
    """The names a subgraph reads that neither it nor its nested subgraphs define."""
    defined = {v.name for v in graph.input} | {t.name for t in graph.initializer}
    used: set[str] = set()
    for node in graph.node:
        defined.update(n for n in node.output if n)
        used.update(node_reads(node))
    used.update(v.name for v in graph.output)
    return used - defined


# ---------------------------------------------------------------------------- external data
def read_external_data(graph: onnx.GraphProto, path: str, directory: Path | None) -> None:
    """Read every initializer stored in an external file into the tensor itself (and those of
    subgraphs); each file inside `directory`, a regular file and no symlink, at least as long
    as the tensor's declared shape needs; all of them together within memory (K0904)."""
    budget = [memory_bytes()]
    for tensor in tensors_of(graph):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            load_external(tensor, path, directory, budget)


def tensors_of(graph: onnx.GraphProto):
    """The graph's initializers and Constant tensors, its subgraphs' included."""
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR:
                yield attr.t
            elif attr.type == onnx.AttributeProto.GRAPH:
                yield from tensors_of(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    yield from tensors_of(sub)


def load_external(tensor: onnx.TensorProto, path: str, directory: Path | None,
                  budget: list[int]) -> None:
    """Read one tensor's external data into its raw_data (see read_external_data)."""
    def refuse(why: str) -> KilnError:
        return KilnError("K0904", f"{path}: the external data of initializer {tensor.name!r} "
                         f"{why}", hint="keep the data files beside the model, as "
                         "onnx.save_model(..., save_as_external_data=True) writes them")

    entries = {e.key: e.value for e in tensor.external_data}
    location = entries.get("location", "")
    try:
        offset = int(entries.get("offset", "0"))
        length = int(entries["length"]) if "length" in entries else None
    except ValueError:
        raise refuse("has an offset or length that is not a number") from None
    expected = tensor_bytes(tensor, refuse)
    if offset < 0 or (length is not None and length != expected):
        raise refuse(f"declares {length} bytes at offset {offset}; its shape needs "
                     f"{expected}")
    if directory is None:
        raise refuse(f"is in a file ({location!r}), but the model was not read from a file")
    if not location or os.path.isabs(location) or ".." in Path(location).parts:
        raise refuse(f"names {location!r}, which is not a file beside the model")
    file_path = directory / location
    real_dir = os.path.realpath(directory)
    if os.path.commonpath([os.path.realpath(file_path), real_dir]) != real_dir:
        raise refuse(f"names {location!r}, which leads outside the model's directory")
    try:
        mode = os.lstat(file_path).st_mode
    except OSError:
        raise refuse(f"is in {location!r}, which does not exist") from None
    if stat.S_ISLNK(mode):
        raise refuse(f"is in {location!r}, which is a symbolic link (refused)")
    if expected > budget[0]:
        raise refuse(f"needs {format_bytes(expected)}, more than this machine's memory left "
                     "for the model")
    budget[0] -= expected
    with open_regular(file_path, lambda why: refuse(f"is in {location!r}: {why}")) as file:
        if size_of(file) < offset + expected:
            raise refuse(f"needs bytes {offset}..{offset + expected} of {location!r}, which "
                         f"has {size_of(file)}")
        file.seek(offset)
        data = read_exactly(file, expected, lambda why: refuse(f"in {location!r}: {why}"))
    tensor.raw_data = bytes(data)
    del tensor.external_data[:]
    tensor.data_location = onnx.TensorProto.DEFAULT


def tensor_bytes(tensor: onnx.TensorProto, refuse) -> int:
    """The bytes a tensor's declared shape and element type take."""
    try:
        itemsize = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize
    except (KeyError, TypeError, ValueError):
        raise refuse(f"has an element type ({tensor.data_type}) kiln cannot read") from None
    if tensor.data_type == onnx.TensorProto.STRING or any(d < 0 for d in tensor.dims):
        raise refuse("has a string type or a negative size")
    return itemsize * math.prod(tensor.dims)


# element types whose values ONNX packs two to a byte (4-bit): not checked by count here
_PACKED = {getattr(onnx.TensorProto, n) for n in ("INT4", "UINT4", "FLOAT4E2M1")
           if hasattr(onnx.TensorProto, n)}


def check_tensor(tensor: onnx.TensorProto, path: str) -> None:
    """A tensor holds exactly the values its element type and shape declare (K0902): sizes
    not negative, raw bytes or typed values of the right count, a known element type."""
    def refuse(why: str) -> KilnError:
        return KilnError("K0902", f"{path} is not a valid ONNX file: tensor {tensor.name!r} "
                         f"{why}", hint="the file may be truncated or corrupted")

    if any(d < 0 for d in tensor.dims):
        raise refuse(f"has a negative size in its shape {list(tensor.dims)}")
    try:
        itemsize = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize
        field = helper.tensor_dtype_to_field(tensor.data_type)
    except (KeyError, TypeError, ValueError):
        raise refuse(f"has an unknown element type ({tensor.data_type})") from None
    count = math.prod(tensor.dims)
    if tensor.data_type in _PACKED or tensor.data_location == onnx.TensorProto.EXTERNAL:
        return
    if tensor.HasField("raw_data"):
        if tensor.data_type == onnx.TensorProto.STRING or len(tensor.raw_data) != \
                count * itemsize:
            raise refuse(f"holds {len(tensor.raw_data)} bytes; its shape "
                         f"{list(tensor.dims)} needs {count * itemsize}")
        return
    per_value = 2 if tensor.data_type in (onnx.TensorProto.COMPLEX64,
                                          onnx.TensorProto.COMPLEX128) else 1
    held = len(getattr(tensor, field))
    if held != count * per_value:
        raise refuse(f"holds {held} values; its shape {list(tensor.dims)} needs "
                     f"{count * per_value}")
