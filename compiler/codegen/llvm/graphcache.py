"""Object code by the optimized graph, so that a warm compile builds no LLVM IR at all.

The compile cache (cache.py) keys object code by its LLVM IR text, which takes as long to
build as a large model's code takes to load (ResNet-18: ~1 s of llvmlite). This table sits in
front of it: the key is the graph's fingerprint (every node's op, attributes, types and
operands, nested bodies included; of a constant, its type and which nodes share its array,
not its values: the code reads constants as data, as it reads weights), the model's symbols,
the CPU, its features, the build's options, kiln's version and a digest of the compiler's
source (a changed code generator never finds code the old one built). An entry holds the object code
and the ModuleLayout built with it, written as references into the graph (a constant or a
failure's source by the position of its node in `walk` order), so it is rebuilt from the
graph at hand and never holds a weight.

An attribute of a kind the fingerprint does not know makes the graph uncacheable here (it
goes the long way, through the IR); a damaged entry is rebuilt (cache.py's checksum), and a
layout that does not fit the graph is ignored.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ...dims import Dim
from ...ir import Graph
from ...types import TensorType
from ...version import __version__
from . import cache
from .calling import ModuleLayout
from .packing import winograd_enabled

FORMAT = "kiln-graph-object-1"


class Uncacheable(Exception):
    """A graph holds an attribute value the fingerprint cannot spell."""


def walk(graph: Graph) -> Iterator[tuple[Graph, int]]:
    """Every node of `graph` in order, each followed by the nodes of the bodies it holds
    (attributes in name order): the positions an entry's references count."""
    for nid in graph.order():
        yield graph, nid
        attrs = graph.node(nid)["attrs"]
        for name in sorted(attrs):
            if isinstance(attrs[name], Graph):
                yield from walk(attrs[name])


def _frozen(value: Any, data: bool = False) -> Any:
    """A JSON-able spelling of an attribute value that differs wherever the value does."""
    if value is None or isinstance(value, (bool, int, str)):
        return [type(value).__name__, value]
    if isinstance(value, float):
        return ["float", value.hex()]
    if isinstance(value, (Dim, TensorType)):
        return [type(value).__name__, str(value)]
    if isinstance(value, np.generic):
        return ["np", value.dtype.str, value.tobytes().hex()]
    if isinstance(value, np.ndarray):
        if data:  # a constant's, read as data: its values are not part of the code
            return ["data", value.dtype.str, list(value.shape)]
        return ["array", value.dtype.str, list(value.shape),
                hashlib.sha256(np.ascontiguousarray(value).tobytes()).hexdigest()]
    if isinstance(value, (list, tuple)):
        return [type(value).__name__, [_frozen(v) for v in value]]
    if isinstance(value, dict):
        return ["dict", [[str(k), _frozen(v, data)] for k, v in sorted(value.items())]]
    if isinstance(value, Graph):
        return ["graph", _graph_text(value)]
    raise Uncacheable(f"an attribute of type {type(value).__name__}")


def _graph_text(graph: Graph) -> list:
    position = {nid: i for i, nid in enumerate(graph.order())}
    nodes = []
    first_of_value: dict[int, int] = {}
    for nid in graph.order():
        node = graph.node(nid)
        operands = [None if v is None else [position[v.node], v.index]
                    for v in graph.operands(nid)]
        # a constant's values are data to the code (it reads them as an array, as a weight's;
        # codegen never sees them): only their type counts, and which nodes share one array
        # (the layout lists a shared array once)
        data = node["op"] == "constant"
        text = [node["op"], [str(t) for t in node["types"]], operands,
                _frozen(node["attrs"], data)]
        if data:
            text.append(first_of_value.setdefault(id(node["attrs"]["value"]), position[nid]))
        nodes.append(text)
    return [nodes, [position[n] for n in graph.inputs],
            [[position[o.node], o.index] for o in graph.outputs],
            [[c.op, str(c.lhs), str(c.rhs)] for c in graph.constraints]]


@functools.lru_cache(maxsize=1)
def compiler_digest() -> str:
    """A digest of the compiler's own source (every .py file of the package): code built by
    another kiln, even one with the same version number, is never found by graph (the IR-keyed
    cache behind this one sees such changes by itself, in the IR)."""
    root = Path(__file__).resolve().parents[2]  # the compiler package
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def key(model, target, options: dict) -> str | None:
    """The entry name of `model`'s object code for `target` with these build options, or
    None when the graph cannot be fingerprinted."""
    try:
        text = json.dumps([FORMAT, __version__, compiler_digest(), target.cpu, target.features,
                           target.vector_width, sorted(options.items()), list(model.symbols),
                           winograd_enabled(),  # KILN_WINOGRAD changes the code
                           _graph_text(model.graph)], separators=(",", ":"))
    except Uncacheable:
        return None
    return "g" + hashlib.sha256(text.encode()).hexdigest()


def store(name: str, model, layout: ModuleLayout, objects: tuple[bytes, ...]) -> None:
    """Keep the object files and their layout under `name` (a cache that cannot be written is
    not used)."""
    nodes = list(walk(model.graph))
    index_of_value = {id(g.node(n)["attrs"].get("value")): i for i, (g, n) in enumerate(nodes)
                      if g.node(n)["op"] == "constant"}
    index_of_span = {}
    for i, (g, n) in enumerate(nodes):
        index_of_span.setdefault(id(g.node(n)["span"]), i)
    top = model.graph.order()
    top_index = {nid: i for i, (g, nid) in enumerate(nodes) if g is model.graph}
    at = {(id(g), nid): i for i, (g, nid) in enumerate(nodes)}
    try:
        slots = []
        for t, born, dies in layout.slots:
            nid = top[born]
            slots.append([top_index[nid], model.graph.node(nid)["types"].index(t), born, dies])
        entry = {
            "symbols": layout.symbols, "params": layout.params,
            "constants": {k: index_of_value[id(v)] for k, v in layout.constants.items()},
            "slots": slots,
            "failures": [[message, None if span is None else index_of_span[id(span)]]
                         for message, span in layout.failures],
            "folded": sorted(layout.folded),
            "profiled": [_path_indices(model.graph, path, at) for path in layout.profiled],
        }
    except (KeyError, ValueError, IndexError):  # a layout not made of this graph's nodes
        return
    head = json.dumps(entry, separators=(",", ":")).encode()
    cache.store(name, len(head).to_bytes(8, "little") + head + cache.pack_objects(objects))


def load(name: str, model) -> tuple[tuple[bytes, ...], ModuleLayout] | None:
    """The object files and layout stored under `name`, remade for this graph; None if
    absent, damaged or not fitting."""
    payload = cache.load(name)
    if payload is None or len(payload) < 8:
        return None
    size = int.from_bytes(payload[:8], "little")
    try:
        entry = json.loads(payload[8:8 + size])
        nodes = [g.node(n) for g, n in walk(model.graph)]
        top = model.graph.order()
        layout = ModuleLayout(symbols=list(entry["symbols"]), params=list(entry["params"]))
        layout.constants = {k: nodes[i]["attrs"]["value"] for k, i in entry["constants"].items()}
        layout.slots = [(nodes[i]["types"][j], born, dies) for i, j, born, dies in entry["slots"]]
        if any(nodes[i] is not model.graph.node(top[born]) for i, _j, born, _d in entry["slots"]):
            return None
        layout.failures = [(message, None if i is None else nodes[i]["span"])
                           for message, i in entry["failures"]]
        layout.folded = set(entry["folded"])
        pairs = list(walk(model.graph))
        layout.profiled = [_path_of(model.graph, pairs, indices)
                           for indices in entry["profiled"]]
    except (ValueError, KeyError, IndexError, TypeError):
        return None
    objects = cache.unpack_objects(payload[8 + size:])
    return None if objects is None else (objects, layout)


def _path_indices(graph: Graph, path: tuple[int, ...], at: dict) -> list[int]:
    """A profiled kernel's path (scan nodes, then the node) as positions in `walk` order."""
    indices = []
    for k, nid in enumerate(path):
        indices.append(at[(id(graph), nid)])
        if k < len(path) - 1:
            graph = graph.node(nid)["attrs"]["body"]
    return indices


def _path_of(graph: Graph, pairs: list, indices: list[int]) -> tuple[int, ...]:
    """`_path_indices` read back: a KeyError unless each position is a node of the graph
    its path leads to."""
    path = []
    for k, i in enumerate(indices):
        held, nid = pairs[i]
        if held is not graph:
            raise KeyError(i)
        path.append(nid)
        if k < len(indices) - 1:
            graph = graph.node(nid)["attrs"]["body"]
    return tuple(path)


def frozen(value: Any) -> Any:
    """A JSON-able spelling of an op's attribute value (a dict of them, a body graph) that
    differs wherever the value does, but for a constant's values in a body (see `key`);
    Uncacheable when it holds a value of a kind it cannot spell."""
    return _frozen(value)


__all__ = ["frozen", "key", "load", "store", "walk", "Uncacheable"]
