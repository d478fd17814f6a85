"""Layout choices: how a backend may store an op's operands, recorded on the op.

`conv_layout` marks each f32 convolution and transposed convolution whose weight is known
before any call (a parameter or a constant) with `weight_layout = "packed"`: the native
backend then stores that weight once in the GEMM's own panel layout (a convolution's is the
GEMM's A, gemm.prepack_a: [groups, K/KC slices, O/groups, KC]; a transposed convolution's is
its B, gemm.prepack_b: [groups, N/NR panels, K, NR]), made when the weights are bound, instead
of repacking it on every call (for every sample, and every chunk of pixels); a Winograd
F(4, 3) convolution's is its transformed U (winograd.py: "winograd"; "winograd_or_packed", U
and the GEMM's panels, for a transposed convolution whose U pays only from some batch on;
"winograd_lazy_or_packed", the GEMM's panels and the weight channels-last, for a convolution
or transposed convolution whose U is too large to keep and is made during a call). A matmul
whose B is such a matrix (a linear layer's folded weight.T) gets it too, as B panels. Which
ops, and which GEMM operand their weight is, their records say (`packed_weight`). A weight
that is a model input, or computed at run time, keeps the plain layout, as does every
convolution at -O0. The attribute changes no result: the reference and the ONNX emitter
ignore it.
"""

from __future__ import annotations

from ...ir import Graph
from ...ops import lookup
from ...passes.manager import PassContext, graph_pass
from .packing import winograd_enabled
from .winograd import eligible as winograd_eligible
from .winograd import eligible_lazy, eligible_lazy_conv
from .winograd import eligible_transposed as winograd_transposed_eligible

PACKED = "packed"
WINOGRAD = "winograd"  # packed as Winograd F(4, 3)'s 36 B operands (winograd.py; a 4x4
# stride-2 transposed convolution's as its stride-1 3x3 form's)
# both, for a transposed convolution whose F(4, 3) pays only where a call's batch is large
# enough (winograd.eligible_transposed's None): each call picks
WINOGRAD_OR_PACKED = "winograd_or_packed"
# a stride-2 transposed convolution or a 3x3 convolution whose U is too large to keep
# (winograd.eligible_lazy, eligible_lazy_conv): the GEMM's panels, and the weight from which
# a call with enough samples makes U by blocks
WINOGRAD_LAZY_OR_PACKED = "winograd_lazy_or_packed"
# which ops may run as F(4, 3), and when (True, False, or None: WINOGRAD_OR_PACKED)
WINOGRAD_ELIGIBLE = {"conv": winograd_eligible, "conv_transpose": winograd_transposed_eligible}


@graph_pass("conv_layout")
def conv_layout(graph: Graph, ctx: PassContext) -> Graph:
    """conv(x, weight known before the call) -> the same conv, weight_layout = "packed" (and
    conv_transpose, and matmul with a 2-D such B, likewise: each op whose record has a
    `packed_weight`).

    Only f32 ops (the GEMM's dtype) whose weight operand is a `param` or `constant` node of
    this graph, or, in a scan body, a captured input whose outer value is one.
    """
    _mark(graph, ctx, frozenset())
    return graph


def captured_weights(graph: Graph, nid: int) -> dict[int, int]:
    """{body input: outer node} for the captured inputs of scan `nid`'s body whose value is a
    `param` or `constant` node of `graph` (a weight known before the call, such as an RNN's
    hoisted, folded W_hh.T): what a body op may read packed, as a weight of the graph itself."""
    a, body = graph.node(nid)["attrs"], graph.node(nid)["attrs"]["body"]
    outer = graph.operands(nid)[a["n_carry"] + a["n_seq"]:]
    inner = body.inputs[a["n_carry"] + a["n_seq"] + (1 if a["has_index"] else 0):]
    return {b: v.node for b, v in zip(inner, outer, strict=True)
            if v is not None and graph.op(v.node) in ("param", "constant")}


def _mark(graph: Graph, ctx: PassContext, known: frozenset[int]) -> None:
    """conv_layout on `graph`, whose input nodes `known` hold weights known before the call;
    then on each scan body, with the body's captured weights (`captured_weights`): a scan
    step's h @ W_hh.T reads W_hh.T packed instead of packing it again at every step."""
    for nid in graph.order():
        node = graph.node(nid)
        if node["op"] == "scan":
            _mark(node["attrs"]["body"], ctx, frozenset(captured_weights(graph, nid)))
            continue
        record = lookup(node["op"])
        if record is None or record.packed_weight is None or node["types"][0].dtype != "f32":
            continue
        a, weight = graph.operands(nid)[:2]
        if (graph.op(weight.node) not in ("param", "constant") and weight.node not in known) \
                or weight.type.dtype != "f32":
            continue
        # matmul by name: unlike a convolution's, its weight may be a batch of matrices, and
        # its operands need not share a dtype with the result
        if node["op"] == "matmul" and (weight.type.rank != 2 or a.type.dtype != "f32"):
            continue  # a product of matrices with a batch of weights, or of other dtypes
        layout = PACKED
        eligible = WINOGRAD_ELIGIBLE.get(node["op"])
        if eligible is not None and winograd_enabled():
            layout = {True: WINOGRAD, None: WINOGRAD_OR_PACKED, False: PACKED}[eligible(
                a.type, weight.type, node["types"][0], node["attrs"])]
            lazy = eligible_lazy if node["op"] == "conv_transpose" else eligible_lazy_conv
            if layout == PACKED and lazy(a.type, weight.type, node["types"][0], node["attrs"]):
                layout = WINOGRAD_LAZY_OR_PACKED
        if node["attrs"].get("weight_layout") != layout:
            node["attrs"] = {**node["attrs"], "weight_layout": layout}
            ctx.count(layout)
