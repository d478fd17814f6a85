"""Test helpers for native lowerings: compile many one-op cases (tests/_cases.py's Case) into one
native model, run it, and compare each op's outputs with its numpy reference on the same
inputs within tests/_tolerance.py's tolerance for the op.
"""

from __future__ import annotations

import numpy as np
from _cases import Case
from _optest import RefEnv, T, bind, type_of
from _tolerance import assert_agree

from kiln.compiler.driver import Compilation
from kiln.compiler.elaborate.elaborator import ElaboratedModel, Port
from kiln.compiler.ir import Graph
from kiln.runtime.native import NativeModel


def check(table: list[Case], envs: list[dict] = ({},)) -> None:
    """Compile every case into one native model, run it at each binding in `envs`, and compare
    each op's outputs with its reference on the same inputs. A symbolic case's tensor arguments
    are functions of the binding; None is an absent optional input."""
    graph, ports, bound = Graph(), [], []
    for c, cs in enumerate(table):
        record, inputs, attrs = bind(cs.op, cs.args, dict(cs.kwargs))
        types = cs.types or [None if x is None else type_of(x) for x in inputs]
        values = []
        for i, t in enumerate(types):
            if t is None:
                values.append(None)
                continue
            ports.append(Port(f"in{c}_{i}", t))
            values.append(graph.add_input(ports[-1].name, t, None))
        outs = graph.add(cs.op, values, attrs, record.infer(types, attrs))
        graph.outputs += outs
        bound.append((cs, record, inputs, attrs, len(outs)))
    symbols = sorted({s for env in envs for s in env})
    if symbols:  # sizes only attributes use (arange(T)) are bound through an unused input
        ports.append(Port("anchor", T(symbols)))
        graph.add_input("anchor", ports[-1].type, None)
    native = native_model(graph, ports, symbols)
    for env in envs:
        arrays = {"anchor": np.zeros([env[s] for s in symbols], np.float32)} if symbols else {}
        for c, (cs, _, inputs, _, _) in enumerate(bound):
            for i, x in enumerate(inputs):
                if x is not None:
                    arrays[f"in{c}_{i}"] = x(env) if cs.types else x
        got = native(**arrays)
        got = iter(got if isinstance(got, tuple) else (got,))
        for c, (cs, record, inputs, attrs, count) in enumerate(bound):
            ins = [arrays.get(f"in{c}_{i}") for i in range(len(inputs))]
            with np.errstate(all="ignore"):  # NaN and inf inputs are the point
                want = record.reference(RefEnv(env), ins, attrs)
            for k in range(count):
                assert_agree(next(got), want[k], cs.op, f"{cs.id} (case {c}, output {k}, {env})")


def check_native_only(cases: list[Case]) -> list[np.ndarray]:
    """The native outputs of cases whose reference refuses the inputs (raises)."""
    graph, ports, arrays = Graph(), [], {}
    for c, cs in enumerate(cases):
        record, inputs, attrs = bind(cs.op, cs.args, dict(cs.kwargs))
        values = []
        for i, x in enumerate(inputs):
            ports.append(Port(f"in{c}_{i}", type_of(x)))
            arrays[ports[-1].name] = x
            values.append(graph.add_input(ports[-1].name, ports[-1].type, None))
        types = [type_of(x) for x in inputs]
        graph.outputs += graph.add(cs.op, values, attrs, record.infer(types, attrs))
    got = native_model(graph, ports, [])(**arrays)
    return list(got) if isinstance(got, tuple) else [got]


def native_model(graph: Graph, ports: list[Port], symbols: list[str]) -> NativeModel:
    """The graph (whose outputs are set) compiled as a native model."""
    outputs = [Port(f"out{i}", v.type) for i, v in enumerate(graph.outputs)]
    graph.output_names = [p.name for p in outputs]
    model = ElaboratedModel("ops", {}, graph, ports, outputs, {}, {}, symbols, frozenset())
    return NativeModel(Compilation(model), {})



def assembly(src: str, cpu: str) -> str:
    """The assembly of kiln model `src`'s native module for the named `cpu`, optimised by the
    compiler's own pipeline (parts.optimised)."""
    import llvmlite.binding as llvm

    import kiln
    from kiln.compiler.codegen.llvm import target as targets
    from kiln.compiler.codegen.llvm.module import build_module, ir_text
    from kiln.compiler.codegen.llvm.parts import optimised

    target = targets.named(cpu)
    machine = target.machine()
    module, _ = build_module(kiln.load(src).elaborate(), llvm.get_process_triple(),
                             str(machine.target_data))
    return machine.emit_assembly(optimised(ir_text(module, target.vector_width), machine))
