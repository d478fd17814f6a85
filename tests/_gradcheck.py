"""Gradient checks for op records: an op's `vjp` rule against central finite differences.

    check_vjp("mul", x, y)                      # every float input, float64, random cotangents
    check_vjp("sum", x, axis=1, keepdims=True)
    check_vjp("gather", x, idx, axis=0)         # integer inputs take no gradient

The forward node and its rule's backward nodes are built into one graph with the typed graph
builder and run with the graph interpreter (every op's numpy reference), so a rule is checked
exactly as the reverse pass will use it; the finite differences run the op's reference alone,
in float64. This needs no autodiff transform: it tests one rule at a time.
"""

from __future__ import annotations

import numpy as np
from _optest import RefEnv, bind

from kiln.compiler.builder import GraphBuilder
from kiln.compiler.evaluate import run_graph
from kiln.compiler.ir import Graph, Value
from kiln.compiler.ops import REGISTRY, VjpNode
from kiln.compiler.types import FLOAT_DTYPES, TensorType, dtype_of_numpy


def _type_of(x: np.ndarray) -> TensorType:
    return TensorType(dtype_of_numpy(x.dtype), x.shape)


def add_rule(graph: Graph, op: str, values: list[Value | None], attrs: dict,
             with_cotangent=None, prefix: str = "") -> tuple[list[Value], list[Value | None],
                                                             list[Value | None]]:
    """Add op `op` on `values` to `graph`, a cotangent input (named `<prefix>ct<i>`) for each
    float result that `with_cotangent(i)` accepts (default: every one), and the op's rule:
    (results, cotangent inputs or None, gradient per input slot or None), each gradient
    checked to have its input's type."""
    record = REGISTRY[op]
    assert record.vjp is not None, f"{op} has no gradient rule"
    outs = graph.add(op, values, attrs, list(record.infer(
        [None if v is None else v.type for v in values], attrs)))
    ct_values = [graph.add_input(f"{prefix}ct{i}", out.type, None)
                 if out.type.dtype in FLOAT_DTYPES and (with_cotangent is None or
                                                        with_cotangent(i)) else None
                 for i, out in enumerate(outs)]
    node = VjpNode(op, tuple(values), tuple(outs), dict(attrs))
    grads = record.vjp(GraphBuilder(graph), node, list(ct_values))
    assert len(grads) == len(values), f"{op}: the rule gave {len(grads)} gradients for " \
        f"{len(values)} input slots"
    for g, v in zip(grads, values, strict=True):
        if g is not None:
            assert v is not None, f"{op}: a gradient for an absent input"
            assert g.type == v.type, f"{op}: gradient type {g.type} for an input of {v.type}"
    return outs, ct_values, list(grads)


def backward(op: str, *args, cotangents: list[np.ndarray] | None = None, seed: int = 0,
             types: list[TensorType | None] | None = None, dims: dict[str, int] | None = None,
             **kwargs) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray | None]]:
    """Run op `op` and its rule on `args` (arrays for tensor arguments; a list of arrays for a
    `tensors` argument): (results, cotangents used, gradient per input slot or None).

    `types` gives the input slots types of their own (symbolic sizes: the graph is built for
    them, and run with the sizes `dims` binds); by default each array's type."""
    record, inputs, attrs = bind(op, args, kwargs)
    graph = Graph()
    types = types or [None if x is None else _type_of(x) for x in inputs]
    values = [None if x is None else graph.add_input(f"x{i}", t, None)
              for i, (x, t) in enumerate(zip(inputs, types, strict=True))]
    feeds = [x for x in inputs if x is not None]
    dims = dims or {}
    fwd = record.reference(RefEnv(dims), list(inputs), attrs)
    rng = np.random.default_rng(seed)
    if cotangents is None:
        cotangents = [rng.standard_normal(r.shape).astype(r.dtype)
                      if r.dtype.kind == "f" else None for r in fwd]
    _outs, _cts, grads = add_rule(graph, op, values, attrs,
                                  lambda i: cotangents[i] is not None)
    wanted = [g for g in grads if g is not None]
    results = run_graph(_graph_of(graph, wanted), feeds + [c for c in cotangents
                                                           if c is not None], {}, dims)
    it = iter(results)
    return fwd, cotangents, [None if g is None else next(it) for g in grads]


def _graph_of(graph: Graph, outputs) -> Graph:
    """`graph` with `outputs` as its results (the same nodes: run_graph only reads them)."""
    view = Graph(g=graph.g, inputs=list(graph.inputs), outputs=list(outputs))
    return view


def numeric_grads(op: str, args: tuple, kwargs: dict, cotangents: list,
                  dims: dict[str, int] | None = None, eps: float = 1e-6
                  ) -> list[np.ndarray | None]:
    """Central differences of sum(op(args) * cotangents) for every float input, in float64
    (symbolic sizes in attributes bound by `dims`)."""
    record, inputs, attrs = bind(op, args, kwargs)
    env = RefEnv(dims)

    def objective(xs: list) -> float:
        outs = record.reference(env, xs, attrs)
        return sum(float(np.sum(np.asarray(o, np.float64) * c))
                   for o, c in zip(outs, cotangents, strict=True) if c is not None)

    grads: list[np.ndarray | None] = []
    for i, x in enumerate(inputs):
        if x is None or dtype_of_numpy(x.dtype) not in FLOAT_DTYPES:
            grads.append(None)
            continue
        g = np.zeros(x.shape, np.float64)
        for j in np.ndindex(x.shape):
            xs = [None if a is None else a.copy() for a in inputs]
            xs[i][j] = x[j] + eps
            up = objective(xs)
            xs[i][j] = x[j] - eps
            g[j] = (up - objective(xs)) / (2 * eps)
        grads.append(g)
    return grads


def check_vjp(op: str, *args, rtol: float = 1e-5, atol: float = 1e-7, seed: int = 0,
              types: list[TensorType | None] | None = None, dims: dict[str, int] | None = None,
              **kwargs) -> None:
    """Assert that op `op`'s rule gives the finite-difference gradient of every float input.

    Float inputs should be float64 (the differences need its precision). An input whose rule
    returns None must have a zero numeric gradient, or be an integer/bool input. `types` and
    `dims` build the rule for symbolic sizes (as in `backward`); the differences run the
    arrays as they are."""
    _fwd, cts, grads = backward(op, *args, seed=seed, types=types, dims=dims, **kwargs)
    numeric = numeric_grads(op, args, kwargs, cts, dims)
    for slot, (g, n) in enumerate(zip(grads, numeric, strict=True)):
        if n is None:
            assert g is None, f"{op}: a gradient for non-float input slot {slot}"
        elif g is None:
            np.testing.assert_allclose(n, 0, atol=atol, err_msg=f"{op}: the rule says input "
                                       f"slot {slot} takes no gradient, but it does")
        else:
            np.testing.assert_allclose(g, n, rtol=rtol, atol=atol,
                                       err_msg=f"{op}: gradient of input slot {slot}")




def rules_graph(cases: list[tuple], seed: int = 7, dims: dict[str, int] | None = None
                ) -> tuple[Graph, list, dict, list[str]]:
    """Ops and their rules in one graph whose outputs are every gradient, to run on a backend
    against the reference: `cases` are (op, args, attrs) with float32 arrays, or (op, args,
    attrs, types) where `types` (or None) gives the input slots types of their own (symbolic
    sizes, which `dims` binds); returns (graph, its input ports, an array per port name, a
    name per output)."""
    from kiln.compiler.elaborate.elaborator import Port

    graph, ports, feeds, names = Graph(), [], {}, []
    rng = np.random.default_rng(seed)
    for c, (op, args, attrs, *given) in enumerate(cases):
        _record, inputs, attrs = bind(op, tuple(args), dict(attrs))
        types = (given and given[0]) or [None if x is None else _type_of(x) for x in inputs]
        values = []
        for i, (x, t) in enumerate(zip(inputs, types, strict=True)):
            if x is None:
                values.append(None)
                continue
            ports.append(Port(f"c{c}x{i}", t))
            values.append(graph.add_input(ports[-1].name, t, None))
            feeds[ports[-1].name] = x
        _outs, cts, grads = add_rule(graph, op, values, attrs, prefix=f"c{c}")
        for ct in cts:
            if ct is not None:
                name = graph.node(ct.node)["attrs"]["name"]
                ports.append(Port(name, ct.type))
                feeds[name] = rng.standard_normal(
                    ct.type.concrete_shape(dims or {})).astype(np.float32)
        for slot, g in enumerate(grads):
            if g is not None:
                graph.outputs.append(g)
                names.append(f"{op} (case {c}) input {slot}")
    return graph, ports, feeds, names


__all__ = ["add_rule", "backward", "check_vjp", "numeric_grads", "rules_graph"]
