"""std.gnn against numpy written from PyTorch Geometric's formulas, in dense adjacency form.

The edge list view (gather at the sources, scatter at the targets) that std.gnn uses is
checked against the matrix view of the same definitions: A[i, j] counts (or sums the weights
of) the edges j -> i, so duplicate edges add up, a node with no incoming edge aggregates
nothing, and self-loops of the input are handled as PyG does (GCNConv and GATConv drop them and
add one loop per node; SAGEConv keeps them as ordinary edges). The graphs have isolated nodes,
duplicate edges and self-loops. Each conv block is compiled on its own, so its parameter names
are PyG 2.5's state_dict keys.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
from _crosscheck import OPTIMIZED, REFERENCE, check_opt_levels, oracle
from _stdlibtest import close

import kiln

ROOT = Path(__file__).resolve().parent.parent
GNN_FILE = ROOT / "stdlib" / "gnn.kiln"
EXAMPLE = ROOT / "examples" / "gcn.kiln"

F_IN, F_OUT = 5, 4


# ---------------------------------------------------------------------------- helpers
@functools.cache
def program():
    return kiln.load(GNN_FILE)


def compile_block(name: str, target: str = "reference", **args):
    return kiln.compile(program(), model=name, target=target,
                        args={"in_channels": F_IN, "out_channels": F_OUT, **args})


def randomize(m, rng) -> dict[str, np.ndarray]:
    """Random values everywhere (PyG's zero biases would hide the bias term)."""
    weights = {k: (0.5 * rng.standard_normal(v.shape)).astype(np.float32)
               for k, v in m.params.items()}
    m.load_weights(weights)
    return {k: v.astype(np.float64) for k, v in weights.items()}


def without_bias(kw):
    """The block's arguments less `bias` (the references see the bias in the parameters)."""
    return {k: v for k, v in kw.items() if k not in ("bias", "root_weight")}


def random_graph(rng, n: int, e: int, isolated: int = 2):
    """e edges among the first n - isolated nodes, with duplicates and self-loops forced in."""
    live = n - isolated
    src = rng.integers(0, live, e)
    dst = rng.integers(0, live, e)
    src[1], dst[1] = src[0], dst[0]          # a duplicate edge
    src[3], dst[3] = 2, 2                    # a self-loop, twice
    src[4], dst[4] = 2, 2
    src[5], dst[5] = 1, 1                    # a single self-loop
    perm = rng.permutation(e)
    edge_index = np.stack([src[perm], dst[perm]]).astype(np.int64)
    x = rng.standard_normal((n, F_IN)).astype(np.float32)
    return x, edge_index


GRAPHS = [(7, 16), (12, 30)]  # (N, E)
GRAPH_IDS = [f"N{n}-E{e}" for n, e in GRAPHS]


def graph(size, seed=0):
    n, e = size
    return random_graph(np.random.default_rng(seed + n), n, e)


def adjacency(edge_index, n, weight=None):
    """A[i, j] = the summed weight of the edges j -> i (1 per edge without weights)."""
    a = np.zeros((n, n))
    w = np.ones(edge_index.shape[1]) if weight is None else weight.astype(np.float64)
    np.add.at(a, (edge_index[1], edge_index[0]), w)
    return a


# ---------------------------------------------------------------------------- references
def gcn_matrix(edge_index, n, weight=None, add_self_loops=True, normalize=True,
               improved=False):
    """GCNConv's propagation matrix D^-1/2 (A + fill I) D^-1/2, D the row sums (in-degrees)."""
    a = adjacency(edge_index, n, weight)
    if normalize:
        if add_self_loops:  # add_remaining_self_loops: a node's own loop weight, else fill
            loops = edge_index[0] == edge_index[1]
            w = np.ones(edge_index.shape[1]) if weight is None else weight.astype(np.float64)
            total, count = np.zeros(n), np.zeros(n)
            np.add.at(total, edge_index[1][loops], w[loops])
            np.add.at(count, edge_index[1][loops], 1)
            diag = np.where(count > 0, total / np.maximum(count, 1), 2.0 if improved else 1.0)
            a = a - np.diag(np.diag(a)) + np.diag(diag)
        deg = a.sum(axis=1)
        dis = np.where(deg > 0, 1 / np.sqrt(np.where(deg > 0, deg, 1)), 0.0)
        a = dis[:, None] * a * dis[None, :]
    return a


def ref_gcn(x, edge_index, p, weight=None, **kw):
    """GCNConv: D^-1/2 (A + fill I) D^-1/2 X W^T + b (gcn_matrix's keywords)."""
    out = gcn_matrix(edge_index, x.shape[0], weight, **kw) @ (x.astype(np.float64)
                                                              @ p["lin.weight"].T)
    return out + p["bias"] if "bias" in p else out


def ref_sage(x, edge_index, p, aggr="mean", normalize=False):
    n = x.shape[0]
    a = adjacency(edge_index, n)
    x = x.astype(np.float64)
    if aggr in ("mean", "sum"):
        agg = a @ x
        if aggr == "mean":
            agg = agg / np.maximum(a.sum(axis=1, keepdims=True), 1)
    else:
        pick = np.max if aggr == "max" else np.min
        agg = np.array([pick(x[a[i] > 0], axis=0) if a[i].any() else np.zeros(x.shape[1])
                        for i in range(n)])
    out = agg @ p["lin_l.weight"].T
    if "lin_l.bias" in p:
        out = out + p["lin_l.bias"]
    if "lin_r.weight" in p:
        out = out + x @ p["lin_r.weight"].T
    if normalize:
        out = out / np.maximum(np.linalg.norm(out, axis=-1, keepdims=True), 1e-12)
    return out


def gat_multiplicity(edge_index, n, add_self_loops=True):
    """m[i, j]: how many edges j -> i GATConv attends over (the input's self-loops replaced by
    one per node with add_self_loops)."""
    m = adjacency(edge_index, n)
    return m - np.diag(np.diag(m)) + np.eye(n) if add_self_loops else m


def ref_gat(x, edge_index, p, heads=1, concat=True, negative_slope=0.2, add_self_loops=True):
    """GATConv: alpha_ij = softmax_j over i's incoming edges (with multiplicity) of
    leaky_relu(att_src . h_j + att_dst . h_i); out_i = sum_j alpha_ij h_j."""
    n = x.shape[0]
    m = gat_multiplicity(edge_index, n, add_self_loops)
    h = (x.astype(np.float64) @ p["lin.weight"].T).reshape(n, heads, -1)
    a_src = (h * p["att_src"]).sum(-1)        # [n, heads]
    a_dst = (h * p["att_dst"]).sum(-1)
    out = np.zeros_like(h)
    for k in range(heads):
        e = a_dst[:, k][:, None] + a_src[:, k][None, :]          # e[i, j]
        e = np.where(e > 0, e, negative_slope * e)
        e = np.where(m > 0, e, -np.inf)
        top = np.where(m.any(axis=1), e.max(axis=1), 0.0)
        w = m * np.exp(np.where(m > 0, e - top[:, None], -np.inf))
        alpha = w / (w.sum(axis=1, keepdims=True) + 1e-16)
        out[:, k] = alpha @ h[:, k]
    out = out.reshape(n, -1) if concat else out.mean(axis=1)
    return out + p["bias"] if "bias" in p else out


# ---------------------------------------------------------------------------- structure
def test_parameter_names_are_pygs():
    def keys(name, **kw):
        return {k: v.shape for k, v in compile_block(name, **kw).params.items()}

    assert keys("GCNConv") == {"bias": (F_OUT,), "lin.weight": (F_OUT, F_IN)}
    assert keys("GCNConv", bias=False) == {"lin.weight": (F_OUT, F_IN)}
    assert keys("SAGEConv") == {"lin_l.weight": (F_OUT, F_IN), "lin_l.bias": (F_OUT,),
                                "lin_r.weight": (F_OUT, F_IN)}
    assert keys("SAGEConv", root_weight=False, bias=False) == {"lin_l.weight": (F_OUT, F_IN)}
    assert keys("GATConv", heads=3) == {"att_src": (1, 3, F_OUT), "att_dst": (1, 3, F_OUT),
                                        "bias": (3 * F_OUT,), "lin.weight": (3 * F_OUT, F_IN)}
    assert keys("GATConv", heads=3, concat=False)["bias"] == (F_OUT,)


def test_initial_values_follow_pyg():
    gcn = compile_block("GCNConv", in_channels=30, out_channels=20)
    glorot = np.sqrt(6 / 50)
    w = gcn.params["lin.weight"]
    assert np.abs(w).max() <= glorot and np.abs(w).max() > 0.9 * glorot
    assert not gcn.params["bias"].any()
    gat = compile_block("GATConv", in_channels=30, out_channels=20, heads=4)
    att = np.sqrt(6 / (4 + 20))  # PyG's glorot on [1, heads, out] uses the last two sizes
    for name in ("att_src", "att_dst"):
        assert np.abs(gat.params[name]).max() <= att
        assert np.abs(gat.params[name]).max() > 0.9 * att
    assert np.abs(gat.params["lin.weight"]).max() <= np.sqrt(6 / (30 + 80))


# ---------------------------------------------------------------------------- convolutions
GCN_CASES = [{}, {"bias": False}, {"improved": True}, {"add_self_loops": False},
             {"normalize": False}]


@pytest.mark.parametrize("size", GRAPHS, ids=GRAPH_IDS)
@pytest.mark.parametrize("kw", GCN_CASES, ids=lambda kw: "-".join(kw) or "default")
def test_gcn_conv(kw, size):
    m = compile_block("GCNConv", **kw)
    p = randomize(m, np.random.default_rng(1))
    x, ei = graph(size)
    close(m(x, ei), ref_gcn(x, ei, p, **without_bias(kw)))


@pytest.mark.parametrize("size", GRAPHS, ids=GRAPH_IDS)
@pytest.mark.parametrize("kw", [{}, {"improved": True}, {"normalize": False}],
                         ids=["default", "improved", "normalize"])
def test_gcn_conv_edge_weight(kw, size):
    m = compile_block("GCNConv", **kw)
    p = randomize(m, np.random.default_rng(2))
    rng = np.random.default_rng(3)
    x, ei = random_graph(rng, *size)
    ew = rng.uniform(0.5, 2.0, ei.shape[1]).astype(np.float32)
    # one self-loop per node, as PyG's add_remaining_self_loops reads an explicit loop weight
    ei[:, ei[0] == ei[1]] = np.array([[0, 1]]).T
    ei[:, 0] = [3, 3]
    close(m(x, ei, ew), ref_gcn(x, ei, p, weight=ew, **kw))
    close(m(x, ei, None), ref_gcn(x, ei, p, **kw))  # optional: left out means all ones


SAGE_CASES = [{}, {"aggr": "sum"}, {"aggr": "max"}, {"aggr": "min"}, {"normalize": True},
              {"root_weight": False, "bias": False}]


@pytest.mark.parametrize("size", GRAPHS, ids=GRAPH_IDS)
@pytest.mark.parametrize("kw", SAGE_CASES, ids=lambda kw: "-".join(f"{k}{v}" for k, v in kw.items())
                         or "default")
def test_sage_conv(kw, size):
    m = compile_block("SAGEConv", **kw)
    p = randomize(m, np.random.default_rng(4))
    x, ei = graph(size)
    close(m(x, ei), ref_sage(x, ei, p, **without_bias(kw)))


GAT_CASES = [{}, {"heads": 3}, {"heads": 3, "concat": False}, {"heads": 2, "add_self_loops": False},
             {"negative_slope": 0.5, "bias": False}]


@pytest.mark.parametrize("size", GRAPHS, ids=GRAPH_IDS)
@pytest.mark.parametrize("kw", GAT_CASES, ids=lambda kw: "-".join(f"{k}{v}" for k, v in kw.items())
                         or "default")
def test_gat_conv(kw, size):
    m = compile_block("GATConv", **kw)
    p = randomize(m, np.random.default_rng(5))
    x, ei = graph(size)
    close(m(x, ei), ref_gat(x, ei, p, **without_bias(kw)))


def test_gat_softmax_is_stable():
    """Large logits (exp would overflow in f32) still give a convex combination of neighbours."""
    m = compile_block("GATConv", heads=2)
    p = randomize(m, np.random.default_rng(6))
    p["att_src"] = p["att_src"] * 400
    p["att_dst"] = p["att_dst"] * 400
    m.load_weights({k: v.astype(np.float32) for k, v in p.items()})
    x, ei = graph(GRAPHS[0])
    got = m(x, ei)
    assert np.all(np.isfinite(got))
    close(got, ref_gat(x, ei, p, heads=2).astype(np.float32))


def test_edges_beyond_the_nodes_are_a_runtime_error():
    m = compile_block("GCNConv")
    x, ei = graph(GRAPHS[0])
    ei[1, 0] = x.shape[0]
    with pytest.raises(kiln.KilnError):
        m(x, ei)


@pytest.mark.parametrize("target", ["reference", "native", "onnx"])
@pytest.mark.parametrize("name, row", [("GCNConv", 0), ("GCNConv", 1), ("SAGEConv", 0),
                                       ("SAGEConv", 1), ("GATConv", 0), ("GATConv", 1)])
def test_negative_node_ids_are_a_runtime_error(name, row, target):
    """The docs say ids lie in [0, N): -1 is refused, not read as the last node (numpy)."""
    m = compile_block(name, target)
    x, ei = graph(GRAPHS[0])
    ei[row, 2] = -1
    with pytest.raises(kiln.KilnError) as info:
        m(x, ei)
    assert info.value.code == "K0505"


# ---------------------------------------------------------------------------- pooling
POOLS = """
import std.gnn
model Pools(F: int = 3) {
  forward(x: f32[N, F], batch: i64[N]) -> (f32[4, F], f32[4, F], f32[4, F]) {
    return gnn.global_add_pool(x, batch, 4), gnn.global_mean_pool(x, batch, 4), gnn.global_max_pool(x, batch, 4)
  }
}
"""


@pytest.mark.parametrize("n", [5, 9])
def test_global_pools(n):
    rng = np.random.default_rng(n)
    x = rng.standard_normal((n, 3)).astype(np.float32)
    batch = np.sort(rng.choice([0, 1, 3], n))  # graph 2 is empty: 0, as PyG
    batch[:3] = [0, 1, 3]
    batch.sort()
    add, mean, top = kiln.compile(POOLS, target="reference")(x, batch)
    for g in range(4):
        rows = x[batch == g].astype(np.float64)
        has = len(rows) > 0
        close(add[g], rows.sum(axis=0) if has else np.zeros(3))
        close(mean[g], rows.mean(axis=0) if has else np.zeros(3))
        close(top[g], rows.max(axis=0) if has else np.zeros(3))


@pytest.mark.parametrize("target", ["reference", "native", "onnx"])
def test_negative_graph_ids_in_pools_are_a_runtime_error(target):
    x = np.ones((5, 3), np.float32)
    with pytest.raises(kiln.KilnError) as info:
        kiln.compile(POOLS, target=target)(x, np.array([0, 0, 1, -1, 3]))
    assert info.value.code == "K0505"


# ---------------------------------------------------------------------------- the example
EXAMPLE_ARGS = {"num_features": F_IN, "hidden_channels": 6, "num_classes": 3}


@functools.cache
def example(target="reference"):
    return kiln.compile(EXAMPLE, args=EXAMPLE_ARGS, target=target)


def test_example_signature():
    m = example()
    assert m.signature() == "GCN(x: f32[N, 5], edge_index: i64[2, E]) -> f32[N, 3]"
    assert set(m.params) == {"conv1.bias", "conv1.lin.weight", "conv2.bias", "conv2.lin.weight"}


@pytest.mark.parametrize("size", GRAPHS, ids=GRAPH_IDS)
def test_example_matches_numpy(size):
    m = kiln.compile(EXAMPLE, args=EXAMPLE_ARGS, target="reference")
    p = randomize(m, np.random.default_rng(8))
    x, ei = graph(size, seed=1)

    def sub(prefix):
        return {k.removeprefix(prefix): v for k, v in p.items() if k.startswith(prefix)}

    h = np.maximum(ref_gcn(x, ei, sub("conv1.")), 0)
    z = ref_gcn(h, ei, sub("conv2."))
    z = z - z.max(axis=-1, keepdims=True)
    close(m(x, ei), z - np.log(np.exp(z).sum(axis=-1, keepdims=True)))


# ---------------------------------------------------------------------------- the ONNX target
@pytest.mark.parametrize("size", GRAPHS, ids=GRAPH_IDS)
def test_example_onnx_target_matches_reference(size):
    x, ei = graph(size, seed=2)
    close(example("onnx")(x, ei), oracle(EXAMPLE, args=EXAMPLE_ARGS)(x, ei))


@pytest.mark.parametrize("name, kw", [
    ("GCNConv", {}), ("GCNConv", {"normalize": False}), ("SAGEConv", {"aggr": "max"}),
    ("GATConv", {"heads": 2}),
], ids=["gcn", "gcn-plain", "sage-max", "gat"])
def test_onnx_target_matches_reference(name, kw):
    ref = oracle(program(), model=name, args={"in_channels": F_IN, "out_channels": F_OUT, **kw})
    onnx_m = compile_block(name, target="onnx", **kw)
    onnx_m.load_weights(randomize(ref, np.random.default_rng(9)))
    x, ei = graph(GRAPHS[1], seed=3)
    close(onnx_m(x, ei), ref(x, ei))


# ---------------------------------------------------------------------------- -O0 vs -O1
# (the examples' sweep runs GCNConv and SAGEConv on native code)
@pytest.mark.parametrize("name, kw, targets", [
    ("GCNConv", {"normalize": False}, REFERENCE), ("SAGEConv", {"aggr": "max"}, REFERENCE),
    ("GATConv", {"heads": 2}, OPTIMIZED),
], ids=["gcn-plain", "sage-max", "gat"])
def test_optimized_targets_match_the_unoptimized_reference(name, kw, targets):
    check_opt_levels(program(), name, args={"in_channels": F_IN, "out_channels": F_OUT, **kw},
                     sizes={"N": 6, "E": 9}, targets=targets)
