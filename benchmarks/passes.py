"""What each optimizer pass does to a model: nodes, kernels and tensor bytes after every pass.

    python benchmarks/passes.py [--models resnet18 transformer] [--bind B=1 T=128 H=224 W=224]

For each model, one row for the elaborated graph and one after each pass of the pipeline (run
cumulatively, with the model's initial parameters, so BatchNorm folding runs). Columns are the
COLUMNS list: a column is a header and a function (graph, sizes, model) -> value; "nodes" counts
every node, inputs, parameters and constants included (a fused node counts as its body's ops),
"kernels" the kernels a backend runs (ops only; a fused node is one, a scan's body counts);
"planned MB" is the native backend's workspace (liveness-based reuse) next to the sum of
all intermediates.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import kiln
from kiln.compiler.codegen.llvm.pipeline import NATIVE_PIPELINE
from kiln.compiler.ir import STRUCTURAL_OPS, Graph
from kiln.compiler.passes import count_nodes, run_passes
from kiln.compiler.passes.edit import count_kernels

ROOT = Path(__file__).resolve().parents[1]
MODELS = {  # name -> (source, model name)
    "resnet18": ("import std.cnn\n", "cnn.ResNet18"),
    "transformer": ((ROOT / "examples" / "transformer_classifier.kiln").read_text(), None),
}
SIZES = {"B": 1, "T": 128, "H": 224, "W": 224}


def tensor_bytes(graph: Graph, sizes: dict[str, int], ops: Callable[[str], bool]) -> int:
    """Bytes of every output of the top-level nodes whose op `ops` accepts, at `sizes` (a scan
    counts its stacked outputs; its body's per-step values are not counted)."""
    total = 0
    for _, node in graph.g.nodes(data=True):
        if ops(node["op"]):
            for t in node["types"]:
                n = 1
                for size in t.concrete_shape(sizes):
                    n *= size
                total += n * t.np_dtype.itemsize
    return total


def megabytes(n: int) -> str:
    return f"{n / 2**20:.2f}"


def planned_bytes(graph: Graph, sizes: dict[str, int], model) -> int:
    """The native backend's workspace for this graph: intermediates in one arena, a tensor's
    bytes reused once it is dead (liveness by op order, first fit)."""
    import dataclasses

    import llvmlite.binding as llvm

    from kiln.compiler.codegen.llvm.module import build_module, plan_memory

    _module, layout = build_module(dataclasses.replace(model, graph=graph),
                                   llvm.get_process_triple(), "")
    return plan_memory(layout, sizes)[1]


COLUMNS: list[tuple[str, Callable[[Graph, dict, object], object]]] = [
    ("nodes", lambda g, sizes, m: count_nodes(g)),
    ("kernels", lambda g, sizes, m: count_kernels(g)),
    ("intermediates MB",
     lambda g, sizes, m: megabytes(tensor_bytes(g, sizes, lambda op: op not in STRUCTURAL_OPS))),
    ("planned MB", lambda g, sizes, m: megabytes(planned_bytes(g, sizes, m))),
    ("constants MB", lambda g, sizes, m: megabytes(tensor_bytes(g, sizes, "constant".__eq__))),
]


def rows(name: str, sizes: dict[str, int]) -> list[list[str]]:
    """[step, column values..., ms, changes] for the elaborated graph and after each pass."""
    source, model = MODELS[name]
    program = kiln.load(source)
    elaborated = program.elaborate(model)
    params = dict(kiln.compile(program, model=model, target="reference").params)
    graph = elaborated.graph
    sizes = {k: v for k, v in sizes.items() if k in elaborated.symbols}
    print(f"\n{name} ({', '.join(f'{k}={v}' for k, v in sizes.items())})")
    out = [["elaborated", *(str(f(graph, sizes, elaborated)) for _, f in COLUMNS), "", ""]]
    for p in NATIVE_PIPELINE:
        graph, (stats,) = run_passes(graph, [p], params)
        changes = stats.skipped or ", ".join(f"{k} {v}" for k, v in stats.changes.items())
        out.append([p.name, *(str(f(graph, sizes, elaborated)) for _, f in COLUMNS),
                    f"{stats.seconds * 1e3:.1f}", changes])
    return out


def table(header: list[str], body: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header) - 1)]
    lines = []
    for r in [header, *body]:
        cells = [c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))]
        lines.append("  ".join([*cells, r[-1]]))
    return "\n".join(lines)


def bind_sizes(defaults: dict[str, int], items: list[str]) -> dict[str, int]:
    """`defaults` with each NAME=SIZE of `items` (the --bind option's values) set."""
    sizes = dict(defaults)
    for item in items:
        key, value = item.split("=")
        sizes[key] = int(value)
    return sizes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--bind", nargs="*", default=[], metavar="NAME=SIZE",
                        help="symbolic sizes (default " +
                        " ".join(f"{k}={v}" for k, v in SIZES.items()) + ")")
    args = parser.parse_args()
    sizes = bind_sizes(SIZES, args.bind)
    header = ["step", *(h for h, _ in COLUMNS), "ms", "changes"]
    for name in args.models:
        print(table(header, rows(name, sizes)))


if __name__ == "__main__":
    main()
