"""The import graph of the installed `kiln` package: no cycles, and each stage imports only
the stages before it (docs/architecture.md).

Imports are read from the source with `ast`, everywhere in a module (inside functions too: a
lazy import is still a dependency; not under `if TYPE_CHECKING:`, which never runs), so the
test sees what the code may import, not only what one run happened to. An edge goes to the module named: `from .registry import X` is an edge
to `ops.registry`, `from . import control` to `ops.control`, `from ..ops import REGISTRY` to
the package `ops` (its `__init__`).
"""

from __future__ import annotations

import ast
import importlib.util
import pkgutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import networkx as nx

# the stages that must not know a backend's emitter, its module builder or the runtime
MIDDLE = ("kiln.compiler.ops", "kiln.compiler.passes")
BACKEND_ONLY = ("kiln.compiler.codegen.onnx", "kiln.compiler.codegen.llvm.module",
                "kiln.runtime")
# the native backend's own walk over a graph; every other module of codegen.llvm is the
# kernel library (gemm, conv, pool, kernel, threads and their helpers), which never asks the
# op registry: a record calls the kernel library, not the other way round
NATIVE_DRIVER = frozenset({"kiln.compiler.codegen.llvm." + name for name in
                           ("__init__", "module", "fused", "plan", "pipeline", "fuse", "layout", "calling",
                            "machine", "cache", "graphcache", "share")})
NATIVE = "kiln.compiler.codegen.llvm"


def _under(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


@cache
def _package_modules(package: str) -> tuple[dict[str, Path], tuple[str, ...]]:
    """{module name: source file} of a package's own directory, and its subpackages."""
    spec = _spec(package)
    assert spec is not None and spec.submodule_search_locations, package
    modules: dict[str, Path] = {package: Path(spec.origin)}
    subpackages = []
    for info in pkgutil.iter_modules(spec.submodule_search_locations):
        name = f"{package}.{info.name}"
        if info.ispkg:
            subpackages.append(name)
        else:
            modules[name] = Path(info.module_finder.path) / f"{info.name}.py"
    return modules, tuple(subpackages)


def _imports(name: str, path: Path) -> set[str]:
    """The kiln modules module `name` (source `path`) imports, anywhere in its body but under
    `if TYPE_CHECKING:` (names for annotations only, never imported when the code runs: how
    a part of a class refers back to the class that holds it)."""
    is_package = path.name == "__init__.py"
    base = name.split(".") if is_package else name.split(".")[:-1]
    found = set()
    for node in _runtime_nodes(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            parts = base[:len(base) - node.level + 1] if node.level else []
            source = ".".join(parts + ([node.module] if node.module else []))
            for alias in node.names:
                sub = f"{source}.{alias.name}"
                # a submodule by name, or a name the module (a package's __init__) defines
                found.add(sub if _spec(sub) is not None else source)
    return {m for m in found if _under(m, "kiln")}


def _runtime_nodes(tree: ast.AST) -> Iterator[ast.AST]:
    """Every node of `tree` but those of `if TYPE_CHECKING:` bodies (their `else` counts)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack += node.orelse
        else:
            stack += ast.iter_child_nodes(node)


def _is_type_checking(test: ast.expr) -> bool:
    """`TYPE_CHECKING` or `typing.TYPE_CHECKING`."""
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


@cache
def _spec(name: str):
    """The module spec of `name`, or None when no module has that name."""
    try:
        return importlib.util.find_spec(name)
    except ModuleNotFoundError:  # a name inside a module that is no package
        return None


def _is_package(name: str) -> bool:
    spec = _spec(name)
    return spec is not None and spec.submodule_search_locations is not None


@cache
def import_graph() -> nx.DiGraph:
    """Every module of the installed kiln package (packages as `pkg`, not `pkg.__init__`),
    with an edge from each to each kiln module it imports."""
    pending, listed = ["kiln", "kiln.compiler", "kiln.runtime"], set()
    graph = nx.DiGraph()
    while pending:
        package = pending.pop()
        if package in listed:
            continue
        listed.add(package)
        modules, subpackages = _package_modules(package)
        pending += subpackages
        for name, path in modules.items():
            graph.add_node(name)
            for target in _imports(name, path):
                graph.add_edge(name, target)
                if _is_package(target):  # a package reached only by import: list it too
                    pending.append(target)
    return graph


def test_the_graph_covers_the_package():
    graph = import_graph()
    for module in ("kiln.api", "kiln.cli", "kiln.compiler.ops.control", "kiln.compiler.evaluate",
                   "kiln.compiler.codegen.onnx", "kiln.compiler.codegen.llvm.module",
                   "kiln.compiler.codegen.llvm.gemm", "kiln.compiler.passes.pipeline",
                   "kiln.runtime.native"):
        assert module in graph, module
    assert graph.has_edge("kiln.compiler.codegen.onnx", "kiln.compiler.ops")
    # an import inside a function counts: ops/linalg.py's lazy import of the GEMM
    assert graph.has_edge("kiln.compiler.ops.linalg", "kiln.compiler.codegen.llvm.gemm")


def test_no_import_cycles():
    graph = import_graph()
    cycles = []
    for component in nx.strongly_connected_components(graph):
        if len(component) > 1:
            cycle = nx.find_cycle(graph.subgraph(component))
            cycles.append(" -> ".join([u for u, _ in cycle] + [cycle[0][0]])
                          + f"\n    (one of the cycles among {', '.join(sorted(component))})")
    assert not cycles, "import cycles:\n  " + "\n  ".join(sorted(cycles))


def _path(graph: nx.DiGraph, source: str, targets: tuple[str, ...]) -> list[str] | None:
    """The shortest import path from `source` to a module under one of `targets`."""
    for target in graph.nodes:
        if any(_under(target, t) for t in targets) and nx.has_path(graph, source, target):
            return nx.shortest_path(graph, source, target)
    return None


def _violations(sources: list[str], targets: tuple[str, ...]) -> list[str]:
    graph = import_graph()
    bad = []
    for source in sources:
        path = _path(graph, source, targets)
        if path is not None:
            bad.append(" -> ".join(path))
    return bad


def test_ops_and_passes_never_reach_a_backend_emitter_or_the_runtime():
    """Ops and passes come before code generation: they never import (directly or through
    another module) the ONNX emitter, the native module builder or the runtime."""
    graph = import_graph()
    sources = [m for m in graph if any(_under(m, p) for p in MIDDLE)]
    assert len(sources) > 10
    bad = _violations(sources, BACKEND_ONLY)
    assert not bad, "imports of a later stage:\n  " + "\n  ".join(bad)


def test_kernels_never_import_the_op_registry():
    """The native kernel library is below the op records: a record's lowering calls it."""
    graph = import_graph()
    kernels = [m for m in graph if _under(m, NATIVE) and m != NATIVE and m not in NATIVE_DRIVER]
    assert {f"{NATIVE}.gemm", f"{NATIVE}.kernel", f"{NATIVE}.threads"} <= set(kernels)
    bad = _violations(kernels, ("kiln.compiler.ops",))
    assert not bad, "kernel modules importing the op registry:\n  " + "\n  ".join(bad)


def test_type_checking_imports_are_not_dependencies():
    tree = ast.parse("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import kiln.a\n"
                     "else:\n    import kiln.b\ndef f():\n    import kiln.c\n")
    imported = {alias.name for node in _runtime_nodes(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    assert imported == {"kiln.b", "kiln.c"}


def test_a_kiln_model_compiles_and_runs_without_onnx_or_ml_dtypes():
    """Importing ml_dtypes (and onnx, which imports it) takes longer than numpy: a kiln file
    that uses no bf16 compiles, runs and loads weights without either."""
    root = Path(__file__).resolve().parent.parent
    code = ("import sys, numpy as np, kiln\n"
            f"m = kiln.compile({str(root / 'examples' / 'mlp.kiln')!r}, args={{'hidden': 8}})\n"
            "m(np.zeros((2, 784), np.float32))\n"
            "m.save_weights('w.safetensors'); m.load_weights('w.safetensors')\n"
            "bad = [n for n in ('onnx', 'ml_dtypes') if n in sys.modules]\n"
            "assert not bad, f'imported {bad}'\n")
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              cwd=tmp)
    assert proc.returncode == 0, proc.stderr[-2000:]
