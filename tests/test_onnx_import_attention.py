"""PyTorch's export of multi-head attention (torch.onnx.export of nn.MultiheadAttention),
built here with onnx.helper so that no exporter is needed: its sequence-first layout, its
query/key/value picked from one projection by Gather, its heads merged with the batch
([L, B*H, D]) and its scale computed from a shape. The native pipeline reads all of it in
place: one attention kernel, no copies of the heads, the scale folded to a constant."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from _onnximport import make_model, run_ort, save
from onnx import TensorProto, helper

import kiln

L, E, H = 6, 8, 2
D = E // H
BIG = 9223372036854775807


def exported_attention(seed: int = 0, depth: str = "Slice"):
    """x: f32[B, L, E] -> self-attention -> f32[B, L, E], as PyTorch's exporter writes it;
    `depth`: how D is read from q's shape, a Slice of its last entry or a Gather of it."""
    rng = np.random.default_rng(seed)
    inits = {
        "in_proj": (rng.standard_normal((E, 3 * E)) / 3).astype(np.float32),
        "in_bias": rng.standard_normal(3 * E).astype(np.float32),
        "out_proj": (rng.standard_normal((E, E)) / 3).astype(np.float32),
        "out_bias": rng.standard_normal(E).astype(np.float32),
        "qkv_shape": np.array([1, L, -1, 3, E], np.int64),
        "heads_shape": np.array([L, -1, D], np.int64),
        "batch_shape": np.array([-1, H, L, D], np.int64),
        "scores_shape": np.array([-1, L, L], np.int64),
        "rows_shape": np.array([-1, E], np.int64),
        "seq_shape": np.array([L, -1, E], np.int64),
        # (not "squeeze_axes": onnxruntime's optimizer adds an initializer of that name, and
        # refuses a graph that has one already)
        "dropped_axis": np.array([3], np.int64),
        "last": np.array([-1], np.int64), "end": np.array([BIG], np.int64),
        **{f"i{i}": np.array(i, np.int64) for i in range(4)},
    }
    n = helper.make_node
    nodes = [
        n("Constant", [], ["one"], value=helper.make_tensor("one_value", TensorProto.FLOAT, [1], [1.0])),
        n("Transpose", ["x"], ["xt"], perm=[1, 0, 2]),
        n("MatMul", ["xt", "in_proj"], ["p"]), n("Add", ["p", "in_bias"], ["qkv"]),
        n("Reshape", ["qkv", "qkv_shape"], ["r5"]),
        n("Transpose", ["r5"], ["t5"], perm=[3, 1, 2, 0, 4]),
        n("Squeeze", ["t5", "dropped_axis"], ["s4"]),
        *(n("Gather", ["s4", f"i{i}"], [name], axis=0) for i, name in enumerate("qkv")),
        n("Reshape", ["q", "heads_shape"], ["q3"]), n("Transpose", ["q3"], ["qt"], perm=[1, 0, 2]),
        n("Reshape", ["qt", "batch_shape"], ["qh"]),
        n("Reshape", ["k", "heads_shape"], ["k3"]), n("Transpose", ["k3"], ["kt"], perm=[1, 0, 2]),
        n("Reshape", ["kt", "batch_shape"], ["kh"]),
        n("Transpose", ["kh"], ["khT"], perm=[0, 1, 3, 2]),
        # the scale: sqrt(1 / sqrt(D)) on each of q and k, D read from q's shape
        n("Shape", ["qh"], ["shape"]),
        n("Slice", ["shape", "last", "end"], ["depth"]) if depth == "Slice"
        else n("Gather", ["shape", "i3"], ["depth"], axis=0),
        n("Cast", ["depth"], ["depth_f"], to=TensorProto.FLOAT), n("Sqrt", ["depth_f"], ["root"]),
        n("Div", ["one", "root"], ["inv"]), n("Sqrt", ["inv"], ["scale"]),
        n("Mul", ["qh", "scale"], ["qs"]), n("Mul", ["khT", "scale"], ["ks"]),
        n("MatMul", ["qs", "ks"], ["scores"]), n("Softmax", ["scores"], ["weights"], axis=-1),
        n("Reshape", ["weights", "scores_shape"], ["w3"]),
        n("Reshape", ["v", "heads_shape"], ["v3"]), n("Transpose", ["v3"], ["vt"], perm=[1, 0, 2]),
        n("MatMul", ["w3", "vt"], ["o3"]), n("Transpose", ["o3"], ["ot"], perm=[1, 0, 2]),
        n("Reshape", ["ot", "rows_shape"], ["rows"]),
        n("MatMul", ["rows", "out_proj"], ["op"]), n("Add", ["op", "out_bias"], ["o2"]),
        n("Reshape", ["o2", "seq_shape"], ["os"]), n("Transpose", ["os"], ["y"], perm=[1, 0, 2]),
    ]
    return make_model(nodes, [("x", TensorProto.FLOAT, ["B", L, E])],
                      [("y", TensorProto.FLOAT, ["B", L, E])], inits)


@pytest.fixture(scope="module", params=["Slice", "Gather"])
def attention_file(request, tmp_path_factory):
    return save(exported_attention(depth=request.param),
                tmp_path_factory.mktemp("attention") / "mha.onnx")


def test_exported_attention_is_one_kernel(attention_file):
    """Natively: one attention kernel reading q, k and v where the projection wrote them, the
    scale a constant folded into it, and nothing left of the gathers, the heads' reshapes and
    transposes or the scale's arithmetic."""
    model = kiln.compile(attention_file, target="native")
    counts = Counter(model.lowered().graph.op(n) for n in model.lowered().graph.order())
    assert counts["attention_strided"] == 1
    for gone in ("gather", "matmul", "matmul_strided", "softmax", "sqrt", "cast", "mul", "div"):
        assert counts[gone] == 0, gone


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("threads", [1, 2])
def test_exported_attention_agrees_with_onnxruntime(attention_file, batch, threads):
    x = np.random.default_rng(batch).standard_normal((batch, L, E)).astype(np.float32)
    (want,) = run_ort(attention_file, {"x": x})
    native = kiln.compile(attention_file, target="native", threads=threads)
    np.testing.assert_allclose(native(x), want, rtol=1e-5, atol=1e-5)
    reference = kiln.compile(attention_file, target="reference")
    np.testing.assert_allclose(reference(x), want, rtol=1e-5, atol=1e-5)
