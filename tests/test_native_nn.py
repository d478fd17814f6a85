"""The linalg and nn ops on the native target against the numpy reference: the packed GEMM at
sizes around its tiles, convolution through it (every stride, dilation, padding and groups
variant), pooling, normalization, resize, and ResNet-18 end to end.

Ops are grouped into a few models (one compile each) whose inputs are named in a table; every
model runs at two values of its symbolic batch.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from _cases import BINDINGS, SYMBOLIC, cases
from _nativetest import check as check_cases
from _tolerance import assert_agree

import kiln
from kiln.compiler.dims import Dim
from kiln.compiler.types import NUMPY_DTYPES

RNG = np.random.default_rng(11)


def both(src: str, **kw):
    return kiln.compile(src, target="native", **kw), kiln.compile(src, **kw, target="reference")


def source(inputs: dict[str, str], calls: list[str]) -> str:
    """A model taking `inputs` (name -> type) and returning each call's result.

    bf16 tensors cross the model's boundary as f32, cast inside: the runtime does not take or
    return bf16 arrays yet (ctypes cannot view their buffer)."""
    params, casts = [], []
    for name, t in inputs.items():
        if t.startswith("bf16"):
            params.append(f"{name}_f32: f32{t[4:]}")
            casts.append(f'    {name} = cast({name}_f32, "bf16")\n')
        else:
            params.append(f"{name}: {t}")
    results = [f'cast({c}, "f32")' if _reads_bf16(inputs, c) else c for c in calls]
    return (f"model Ops {{\n  forward({', '.join(params)}) {{\n{''.join(casts)}"
            f"    return {', '.join(results)}\n  }}\n}}\n")


def _op_of(call: str) -> str:
    """The op a call of the test's table applies: its name, or matmul for `a @ b`."""
    return "matmul" if "@" in call else call.split("(")[0]


def _reads_bf16(inputs: dict[str, str], call: str) -> bool:
    return any(t.startswith("bf16") and re.search(rf"\b{name}\b", call)
               for name, t in inputs.items())


def array(name: str, t: str, sizes: dict[str, int]) -> np.ndarray:
    """Random values of type `t` ("f32[B, 3]"), symbolic sizes from `sizes`; the inputs named
    var* (running variances) are positive. bf16 values are rounded to bf16 and given as f32."""
    dtype, dims = re.fullmatch(r"(\w+)\[(.*)\]", t).groups()
    shape = [sizes[d] if d in sizes else int(d) for d in dims.replace(" ", "").split(",") if d]
    values = RNG.standard_normal(shape) * 2
    if name.startswith("var"):
        values = np.abs(values) + 0.5
    if dtype == "bf16":
        return values.astype(NUMPY_DTYPES["bf16"]).astype(np.float32)
    return values.astype(NUMPY_DTYPES[dtype])


def check(inputs: dict[str, str], calls: list[str], runs=({"B": 1}, {"B": 3}), scale=1.0):
    """Every call, natively and by the reference, at each binding of the symbolic sizes;
    `scale` widens the tolerances (long sums)."""
    native, ref = both(source(inputs, calls))
    for sizes in runs:
        args = [array(name, t, sizes) for name, t in inputs.items()]
        got, want = native(*args), ref(*args)
        got, want = (got, want) if isinstance(got, tuple) else ((got,), (want,))
        for call, g, w in zip(calls, got, want, strict=True):
            dtype = "bf16" if _reads_bf16(inputs, call) else None
            assert_agree(g, w, _op_of(call), call, dtype=dtype, scale=scale)


# matmul -------------------------------------------------------------------------------------
def test_matmul_at_sizes_around_the_tiles():
    """Symbolic M, K, N: one compiled GEMM at sampled sizes 1..70 (remainders of every tile
    height and of the NR columns), a K beyond one KC slice and N beyond one NC block."""
    native, ref = both("model Mat { forward(a: f32[M, K], b: f32[K, N]) { return a @ b } }")
    edges = [1, 2, 5, 11, 12, 13, 16, 31, 32, 33, 47, 64, 65, 70]
    sizes = [tuple(RNG.choice(edges, 3)) for _ in range(12)]
    sizes += [tuple(RNG.integers(1, 71, 3)) for _ in range(12)]
    sizes += [(300, 500, 257), (3, 600, 530), (97, 7, 1), (4, 0, 5), (0, 3, 4)]
    for m, k, n in sizes:
        a = RNG.standard_normal((m, k)).astype(np.float32)
        b = RNG.standard_normal((k, n)).astype(np.float32)
        np.testing.assert_allclose(native(a, b), ref(a, b), rtol=1e-5, atol=1e-5 * np.sqrt(k),
                                   err_msg=f"{m}x{k}x{n}")


def test_products_whose_rows_are_one_slice_apart_read_a_in_place():
    """An A whose rows are KC floats apart (a sum exactly KC deep: 256 on AVX-512, 384 on
    AVX2) is read where it is, not copied (gemm._Gemm._a_block): heights around the tiles
    and across MC rows, a weight as B panels and as a matrix, and a slice of such an A (a
    shallower sum over rows KC apart)."""
    from kiln.compiler.codegen.llvm.microkernels import tiling

    kc = tiling().kc
    src = (f"model Mat {{ param w: f32[{kc}, 70]\n"
           f"  forward(a: f32[M, {kc}], b: f32[{kc}, N]) {{"
           " return a @ b, a @ w, a[:, 3:100] @ b[3:100] } }")
    native, ref = both(src, seed=2)
    for m, n in ((1, 5), (2, 33), (13, 64), (97, 40), (200, 70)):
        a = RNG.standard_normal((m, kc)).astype(np.float32)
        b = RNG.standard_normal((kc, n)).astype(np.float32)
        for got, want in zip(native(a, b), ref(a, b), strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.sqrt(kc),
                                       err_msg=f"{m} x {n}")


def test_products_by_a_transposed_matrix_pack_its_rows():
    """a @ w^T with w not known before the call (a training step's weight): matmul_bt packs
    the GEMM's panels from w's rows, 8 x 8 blocks transposed in registers and the edges
    element by element, zero past N. Sizes around the blocks, the panels and a KC slice; one
    or two rows (no streamed path for it); a batch of a's rows; empty sizes."""
    native, ref = both("model Mbt { forward(a: f32[M, K], w: f32[N, K]) "
                       "{ return a @ transpose(w, 0, 1) } }")
    assert {s.name: s.changes for s in native.pass_stats}["transposed_operands"] == {
        "matmul(x, w^T) -> matmul_bt(x, w)": 1}
    edges = [1, 2, 7, 8, 9, 15, 16, 17, 31, 32, 33, 64, 65]
    sizes = [tuple(RNG.choice(edges, 3)) for _ in range(14)]
    sizes += [(1, 300, 70), (2, 8, 8), (64, 784, 512), (5, 600, 33), (4, 0, 5), (0, 3, 4)]
    for m, k, n in sizes:
        a = RNG.standard_normal((m, k)).astype(np.float32)
        w = RNG.standard_normal((n, k)).astype(np.float32)
        np.testing.assert_allclose(native(a, w), ref(a, w), rtol=1e-5, atol=1e-5 * np.sqrt(k),
                                   err_msg=f"{m}x{k}x{n}")
    native3, ref3 = both("model Mbt3 { forward(a: f32[S, M, K], w: f32[N, K]) "
                         "{ return a @ transpose(w, 0, 1) } }")
    a, w = (RNG.standard_normal(s).astype(np.float32) for s in ((3, 5, 40), (19, 40)))
    np.testing.assert_allclose(native3(a, w), ref3(a, w), rtol=1e-5, atol=1e-4)


def test_thin_products_stream_b_row_by_row():
    """C one or two rows high (a matrix-vector product; a linear layer at batch 1): B is read
    in place row by row by the widest row kernel that fits the columns left, the last one
    masked. Column counts around every kernel width, k = 0, a product large enough to split
    across threads; a transposed A (conv_transpose of one or two pixels) and C += A @ B (a 1x1
    convolution with a bias and one or two output channels)."""
    native, ref = both("model Mat { forward(a: f32[M, K], b: f32[K, N]) { return a @ b } }")
    for m in (1, 2):
        for n in (1, 7, 16, 17, 33, 255, 257, 385, 700):
            for k in (0, 1, 13, 400):
                a = RNG.standard_normal((m, k)).astype(np.float32)
                b = RNG.standard_normal((k, n)).astype(np.float32)
                np.testing.assert_allclose(native(a, b), ref(a, b), rtol=1e-5,
                                           atol=1e-5 * np.sqrt(k + 1), err_msg=f"{m}x{k}x{n}")
    check({"x": "f32[B, 3, 1, 2]", "x1": "f32[B, 3, 1, 1]", "w": "f32[3, 5, 2, 2]",
           "y": "f32[B, 40, 9, 11]", "v": "f32[2, 40, 1, 1]", "c": "f32[2]",
           "v1": "f32[1, 40, 1, 1]", "c1": "f32[1]"},
          ["conv_transpose(x, w, stride = 2)", "conv_transpose(x1, w)", "conv(y, v, c)",
           "conv(y, v1, c1)"])
    # a weight known before the call is stored prepacked (KC-deep slices): the tiles read it
    native, ref = both("import std.nn\nmodel Head { forward(y: f32[B, 300, 5, 7]) {\n"
                       "  return y |> nn.Conv2d(300, 2, 1), y |> nn.Conv2d(300, 1, 1) } }")
    y = RNG.standard_normal((2, 300, 5, 7)).astype(np.float32)
    for got, want in zip(native(y), ref(y), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("threads", [2, 3])
def test_gemm_split_across_threads_by_columns_and_by_rows(threads):
    """Large enough to start threads: C wider than tall splits by columns (blocks of NR, the
    last one short), taller than wide by rows; every element is written exactly once."""
    native = kiln.compile("model Mat { forward(a: f32[M, K], b: f32[K, N]) { return a @ b } }",
                          threads=threads)
    for m, k, n in [(30, 700, 1111), (13, 1500, 901), (64, 576, 1000), (500, 300, 200),
                    (97, 400, 97)]:
        a = RNG.standard_normal((m, k)).astype(np.float32)
        b = RNG.standard_normal((k, n)).astype(np.float32)
        want = (a.astype(np.float64) @ b).astype(np.float32)
        np.testing.assert_allclose(native(a, b), want, rtol=1e-5, atol=1e-5 * np.sqrt(k),
                                   err_msg=f"{m}x{k}x{n}")


CONV_SPLIT = """
import std.nn
model C(c: int, o: int, k: int, s: int, g: int) {
  forward(x: f32[B, c, H, W]) {
    return relu(x |> nn.Conv2d(c, o, k, stride = s, padding = k // 2, groups = g))
  }
}
"""


@pytest.mark.parametrize("c, o, k, s, g, size", [
    (32, 40, 3, 1, 1, (60, 61)),   # N = 3660 pixels > M = 40: columns; K = 288 > KC (AVX-512)
    (64, 24, 3, 1, 2, (50, 47)),   # two groups, each K = 288: prepacked weights per group
    (3, 64, 7, 2, 1, (90, 90)),    # a stem: K = 147
    (96, 200, 3, 1, 1, (9, 11)),   # N = 99 < M = 200: rows
])
def test_conv_with_prepacked_weights_on_threads(c, o, k, s, g, size):
    """Convolution weights are packed for the GEMM once (gemm.prepack_a), and one image's
    GEMM is split across threads by columns (pixels) or rows (channels)."""
    args = {"c": c, "o": o, "k": k, "s": s, "g": g}
    native = kiln.compile(CONV_SPLIT, args=args, threads=2, seed=5)
    alone = kiln.compile(CONV_SPLIT, args=args, threads=1, seed=5)
    ref = kiln.compile(CONV_SPLIT, args=args, target="reference", seed=5)
    assert any(name.startswith("prepack_a(") for name in native.native_arrays())
    for batch in (1, 2):
        x = RNG.standard_normal((batch, c, *size)).astype(np.float32)
        np.testing.assert_allclose(native(x), ref(x), rtol=1e-4, atol=1e-4)
        # blocks of columns start on a panel (the last one may be short): each sum is the
        # same whatever the threads
        np.testing.assert_array_equal(native(x), alone(x))


PACKED_AND_PLAIN = """
import std.nn
model P(plain: bool) {
  conv = nn.Conv2d(8, 12, 3, padding = 1)
  fc = nn.Linear(12, 5)
  forward(x: f32[B, 8, 9, 9]) {
    y = relu(x |> conv) |> mean(axis = [2, 3]) |> fc
    return (y + sum(conv.weight)) if plain else y
  }
}
"""


@pytest.mark.parametrize("plain", [False, True])
def test_a_weight_read_only_packed_is_bound_only_packed(plain):
    """A weight that every kernel reads packed (the conv's A panels, the linear layer's B
    panels) is not an array of the compiled model: only its packed form is made and kept
    when the weights are bound. One that a kernel also reads as it is (`sum(conv.weight)`)
    is bound both ways. Either way the results are the reference's."""
    native = kiln.compile(PACKED_AND_PLAIN, args={"plain": plain}, seed=3)
    ref = kiln.compile(PACKED_AND_PLAIN, args={"plain": plain}, target="reference", seed=3)
    names = native.native_arrays()
    assert any(n.startswith("prepack_a(") and "conv.weight" in n for n in names), names
    assert any(n.startswith("prepack_b(") and "fc.weight" in n for n in names), names
    assert ("conv.weight" in names) == plain, names
    assert not any(n == "fc.weight" or n.startswith("permute(") for n in names), names
    x = RNG.standard_normal((3, 8, 9, 9)).astype(np.float32)
    np.testing.assert_allclose(native(x), ref(x), rtol=1e-4, atol=1e-4)
    new = {k: RNG.standard_normal(v.shape).astype(np.float32) for k, v in native.params.items()}
    native.load_weights(new)  # the packed arrays remade from the new weights alone
    ref.load_weights(new)
    np.testing.assert_allclose(native(x), ref(x), rtol=1e-4, atol=1e-4)


def test_matmul_with_constant_sizes_batches_and_1d_operands():
    check({"a": "f32[B, 3, 13, 7]", "b": "f32[7, 33]", "c": "f32[3, 7, 6]", "v": "f32[7]",
           "u": "f32[13]", "p": "f32[B, 1, 5, 7]", "q": "f32[2, 7, 70]", "s": "f32[13, 37]",
           "t": "f32[37, 65]"},
          ["a @ b", "a @ c", "a @ v", "u @ a", "v @ b", "v @ v", "p @ q", "s @ t"])


def test_matmul_of_integers_and_half_floats_takes_the_loops():
    check({"i": "i32[B, 5, 4]", "j": "i32[4, 3]", "k": "i64[3, 6]", "l": "i64[B, 6, 2]",
           "h": "bf16[B, 9, 17]", "g": "bf16[17, 5]"},
          ["i @ j", "k @ l", "h @ g"])


# convolution --------------------------------------------------------------------------------
X = {"x": "f32[B, 6, 11, 13]"}
CONV_INPUTS = {
    **X, "w1": "f32[5, 6, 3, 3]", "b1": "f32[5]", "w2": "f32[4, 3, 2, 3]", "w3": "f32[6, 1, 3, 3]",
     "w4": "f32[13, 6, 1, 1]", "b4": "f32[13]", "x1": "f32[B, 4, 17]", "w5": "f32[7, 4, 3]",
     "w6": "f32[8, 2, 4]", "x2": "f32[B, 3, 23, 29]", "w7": "f32[29, 3, 5, 4]",
     "x3": "f32[B, 64, 6, 6]", "w8": "f32[12, 64, 3, 3]", "x4": "f32[B, 2, 30, 40]",
     "w9": "f32[3, 2, 3, 3]", "b9": "f32[3]", "x5": "f32[B, 4, 19, 35]",
     "w10": "f32[6, 2, 3, 5]", "x6": "f32[B, 2, 9, 75]"}
CONV_CALLS = [
    "conv(x, w1, b1, stride = 2, padding = 1)",
    'conv(x, w2, stride = [1, 2], dilation = [2, 1], groups = 2, padding = "valid")',
    'conv(x, w3, padding = "same", groups = 6)',  # depthwise
    "conv(x, w4, b4)",  # 1x1: x itself is B
    "conv(x, w4, stride = 2)",
    "conv(x1, w5, stride = 2, padding = 2, dilation = 2)",
    'conv(x1, w6, groups = 2, padding = "same")',  # an even kernel: the extra pad goes after
    "conv(x2, w7, stride = [3, 2], padding = [2, 1])",  # 29 rows: full tiles, then smaller
    "conv(x3, w8, padding = 1)",  # 576 deep: more than one KC slice
    "conv(x4, w9, b9, padding = 1)",  # 1200 columns: three NC blocks
    # rows of 37 pixels, stride 1 across: B's vectors by row loads (a vector ends one output
    # row and starts the next, stride 2 down), padding on both sides masked
    "conv(x5, w10, stride = [2, 1], dilation = [3, 1], padding = [2, 3], groups = 2)",
    # stride 1: B read from a zero-bordered copy of x over a grid Wp = OW + dw*(kw-1) wide
    "conv(x5, w10, dilation = [2, 3], padding = [1, 4], groups = 2)",
    # stride 2 across, rows of 40: a vector in one row is the even lanes of two loads (the
    # padding masked at both ends), one across two rows a gather
    "conv(x6, w9, b9, stride = [1, 2], padding = [1, 3], dilation = [2, 1])",
]


def test_conv_variants():
    # outputs of magnitude ~100 from sums of up to 576 terms: rounding of the partial sums in
    # another order reaches 1e-4 (a wrong tap or pixel is off by 1 or more)
    check(CONV_INPUTS, CONV_CALLS, scale=10)


def test_conv_transpose_variants():
    check({**X, "w1": "f32[6, 3, 3, 3]", "b1": "f32[3]", "w2": "f32[6, 2, 2, 3]",
           "x1": "f32[B, 2, 5]", "w3": "f32[2, 3, 3]", "x2": "f32[B, 3, 7, 5]",
           "w4": "f32[3, 1000, 2, 2]", "x3": "f32[B, 400, 3, 2]", "w5": "f32[400, 4, 2, 2]",
           "x4": "f32[B, 3, 8, 7]", "w6": "f32[3, 5, 4, 4]", "w7": "f32[3, 2, 9, 9]",
           "w8": "f32[3, 2, 3, 2]", "x5": "f32[B, 5, 1, 1]", "w9": "f32[5, 4, 4, 3]",
           "b9": "f32[4]"},
          ["conv_transpose(x, w1, b1, stride = 2, padding = 1, output_padding = 1)",
           "conv_transpose(x, w2, stride = [1, 2], dilation = [2, 1], groups = 3)",
           "conv_transpose(x1, w3, stride = 2, padding = 1, output_padding = 1)",
           "conv_transpose(x2, w4, stride = 2)",  # 4000 columns: 35 pixels in chunks of 16
           "conv_transpose(x3, w5, padding = 1)",  # 400 deep: more than one KC slice
           # DCGAN's upsampling: the inner pixels' taps all land (added unchecked), the
           # border's not; 81 taps (taken one at a time, checked); dilated and strided
           "conv_transpose(x4, w6, stride = 2, padding = 1)",
           "conv_transpose(x4, w7, padding = 3)",
           "conv_transpose(x4, w8, stride = [3, 2], padding = [2, 1], dilation = [2, 3])",
           # 1x1 inputs: the output is the kernel's footprint (one GEMM onto the bias, every
           # sample), or, padded, a scatter of it
           "conv_transpose(x5, w9, b9)", "conv_transpose(x5, w9, b9, padding = 1)"],
          scale=3)


def test_conv_transpose_at_odd_geometries():
    """Rows of 1100 and 2000 pixels (the GEMM's pixel chunks end inside a row), strides of 3
    with padding past the kernel's reach (the first taps land nowhere), dilation with groups,
    and output padding on a 1-D convolution."""
    check({"x": "f32[B, 2, 3, 1100]", "w": "f32[2, 4, 4, 4]", "b": "f32[4]",
           "x1": "f32[B, 3, 2000]", "w1": "f32[3, 2, 5]", "x2": "f32[B, 4, 6, 5]",
           "w2": "f32[4, 3, 3, 5]", "w3": "f32[4, 1, 2, 2]"},
          ["conv_transpose(x, w, b, stride = [1, 2], padding = [1, 3])",
           "conv_transpose(x1, w1, stride = 3, padding = 4, output_padding = 2)",
           "conv_transpose(x2, w2, stride = [3, 2], padding = [2, 5], dilation = [1, 2])",
           "conv_transpose(x2, w3, stride = 3, padding = 1, groups = 2)",
           "conv_transpose(x2, w3, stride = 2, padding = 2, dilation = 3, groups = 4)"],
          scale=3)


def test_linear_layers_read_their_weights_as_prepacked_panels():
    """A matmul whose B is a weight known before the call (a Linear's folded weight.T) reads
    it as B panels made once (prepack_b): one or two rows streamed panel by panel, more
    rows through the tiles; widths no multiple of a panel, a batch of rows (x[B, T, K]) and
    products large enough to split across threads."""
    src = ("import std.nn\nmodel Lin { forward(x: f32[B, 37], s: f32[B, T, 300]) {\n"
           "  return x |> nn.Linear(37, 45), x |> nn.Linear(37, 3, bias = false),"
           " s |> nn.Linear(300, 700) |> relu } }")
    native, ref = both(src)
    assert sum("prepack_b" in name for name in native.native_arrays()) == 3
    for batch, steps in [(1, 1), (2, 1), (1, 2), (13, 3)]:
        x = RNG.standard_normal((batch, 37)).astype(np.float32)
        s = RNG.standard_normal((batch, steps, 300)).astype(np.float32)
        for got, want in zip(native(x, s), ref(x, s), strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
    # new weights: the panels are made again from them
    weights = {k: RNG.standard_normal(v.shape).astype(np.float32)
               for k, v in native.params.items()}
    native.load_weights(weights)
    ref.load_weights(weights)
    for got, want in zip(native(x, s), ref(x, s), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-3)


def test_transposed_convolutions_with_weights_read_prepacked_panels():
    """A weight known before the call is stored once as the GEMM's B panels (prepack_b): in
    groups, with a row of taps (40 x 5 x 5 = 1000) no multiple of the panel width and chunks
    of 65 input pixels (81 of them), over a batch split across threads, and with weights
    loaded after compiling."""
    src = ("import std.nn\nmodel Up { forward(x: f32[B, 4, 9, 9]) {\n"
           "  return x |> nn.ConvTranspose2d(4, 80, 5, stride = 2, padding = 1, groups = 2),"
           " x |> nn.ConvTranspose2d(4, 3, 2, bias = false) } }")
    native, ref = both(src)
    x = RNG.standard_normal((3, 4, 9, 9)).astype(np.float32)
    for got, want in zip(native(x), ref(x), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    weights = {k: RNG.standard_normal(v.shape).astype(np.float32) for k, v in
               native.params.items()}
    native.load_weights(weights)
    ref.load_weights(weights)
    for got, want in zip(native(x[:1]), ref(x[:1]), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("block_bytes", [None, 4096])
def test_transposed_convolutions_compute_their_columns_a_block_at_a_time(
        block_bytes, monkeypatch, tmp_path):
    """conv_transpose's GEMM runs over a block of columns (whole output channels and whole
    panels: conv._column_block) for every sample before the next block. DCGAN-deep (512 input
    channels: blocks of 256 of its 512 columns), and with blocks forced small (4 KiB: one
    unit each): 5x5 taps in two groups (units of 800 columns, the last block 200), 3x3 taps
    (units of 288), dilation and padding; weights as prepacked parameters and as inputs."""
    from kiln.compiler.codegen.llvm import conv

    monkeypatch.setenv("KILN_CACHE_DIR", str(tmp_path))  # the code depends on BLOCK_BYTES
    if block_bytes is not None:
        monkeypatch.setattr(conv, "BLOCK_BYTES", block_bytes)
    assert conv._column_block(512, 16, Dim.of(512), 1, 32) == (32 if block_bytes else 256)
    src = ("import std.nn\nmodel Up {\n"
           "  deep = nn.ConvTranspose2d(512, 32, 4, stride = 2, padding = 1)\n"
           "  wide = nn.ConvTranspose2d(6, 80, 5, stride = 2, padding = 2, groups = 2)\n"
           "  forward(x: f32[B, 512, 3, 2], v: f32[B, 6, 4, 5], w: f32[6, 40, 3, 3]) {\n"
           "    return deep(x), wide(v),"
           " conv_transpose(v, w, stride = 2, padding = 1, dilation = 2) } }")
    native, ref = both(src)
    for batch in (1, 3):
        x = (RNG.standard_normal((batch, 512, 3, 2)) * 0.1).astype(np.float32)
        v = RNG.standard_normal((batch, 6, 4, 5)).astype(np.float32)
        w = RNG.standard_normal((6, 40, 3, 3)).astype(np.float32)
        for got, want in zip(native(x, v, w), ref(x, v, w), strict=True):
            assert got.shape == want.shape
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_transposed_convolutions_share_their_column_blocks_among_threads(threads):
    """With at least twice as many column blocks as threads, the threads take whole blocks
    (conv._column_blocks through by_channel), each with its product, bias and scatter; with
    fewer (3 threads on 4 blocks) the blocks go in turn, each product shared. Blocks of 288
    columns (9 taps, 32-column panels): 512 channels deep, 4 blocks with a bias; two groups
    of 4 blocks, dilated; and a weight given at run time, 5 blocks (the last of 2 output
    channels), with padding on one axis. At batch 1 (one sample: the blocks are what the
    threads share) and 2 (a batch split by sample: each block on its thread's samples)."""
    from kiln.compiler.codegen.llvm import conv
    from kiln.compiler.codegen.llvm.microkernels import tiling

    nr = tiling().nr
    for row, depth, least in ((1152, 512, 4), (1170, 300, 5)):
        assert -(-row // conv._column_block(row, 9, Dim.of(depth), 1, nr)) >= least
    src = ("import std.nn\nmodel Up {\n"
           "  deep = nn.ConvTranspose2d(512, 128, 3, stride = 2, padding = 1,"
           " output_padding = 1)\n"
           "  grouped = nn.ConvTranspose2d(1024, 256, 3, stride = 2, dilation = 2, groups = 2,"
           " bias = false)\n"
           "  forward(x: f32[B, 512, 3, 2], u: f32[B, 1024, 2, 3], v: f32[B, 300, 4, 3],"
           " w: f32[300, 130, 3, 3]) {\n"
           "    return deep(x), grouped(u), conv_transpose(v, w, stride = [2, 1],"
           " padding = [0, 1]) } }")
    native, ref = both(src, threads=threads, seed=3)
    w = (RNG.standard_normal((300, 130, 3, 3)) * 0.1).astype(np.float32)
    for batch in (1, 2):
        x = RNG.standard_normal((batch, 512, 3, 2)).astype(np.float32)
        u = RNG.standard_normal((batch, 1024, 2, 3)).astype(np.float32)
        v = RNG.standard_normal((batch, 300, 4, 3)).astype(np.float32)
        _close(native, ref, x, u, v, w)


def _close(native, ref, *inputs) -> None:
    """Each output of `native` on `inputs` has the reference's shape and values within
    1e-5 relative, 1e-4 absolute (sums of a few thousand products)."""
    for got, want in zip(native(*inputs), ref(*inputs), strict=True):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_strided_convolutions_add_their_bias_on_every_thread(threads):
    """A convolution through im2col adds its bias to each block of columns the GEMM
    finishes, on the thread that computed it (finish.py): planes whose floats are not
    a whole number of vectors (18 x 17), two groups (each group's bias from its first
    channel on), a stride-2 7x7 stem with a bias, a run-time weight and bias; each output
    over 65,536 floats, so that the threads share it. At batch 1 and 2, against the
    reference."""
    src = ("import std.nn\nmodel Strided {\n"
           "  grouped = nn.Conv2d(64, 256, 3, stride = 2, padding = 1, groups = 2)\n"
           "  stem = nn.Conv2d(3, 40, 7, stride = 2, padding = 3)\n"
           "  forward(x: f32[B, 64, 36, 34], s: f32[B, 3, 96, 70], w: f32[256, 64, 3, 3],"
           " c: f32[256]) {\n"
           "    return grouped(x), relu(stem(s)), conv(x, w, c, stride = [2, 2]) } }")
    native, ref = both(src, threads=threads, seed=4)
    w = (RNG.standard_normal((256, 64, 3, 3)) * 0.1).astype(np.float32)
    c = RNG.standard_normal(256).astype(np.float32)
    for batch in (1, 2):
        x = RNG.standard_normal((batch, 64, 36, 34)).astype(np.float32)
        s = RNG.standard_normal((batch, 3, 96, 70)).astype(np.float32)
        _close(native, ref, x, s, w, c)


def test_strided_convolutions_apply_a_fused_epilogue_to_each_finished_block():
    """A fused node headed by an im2col convolution (stride 2) runs its epilogue inside the
    GEMM, on each block of columns once all its sums are done (finish.py), reading the
    epilogue's other inputs at the element's own index: a residual add and relu over a sum
    576 deep (three slices of the sum before a block is done), a grouped one, one without a
    bias, 520 channels of 9 pixels (the threads take rows, not columns), a 1-D one, and an
    epilogue with a per-channel operand (broadcast: the node's own loop, after the GEMM).
    On 1, 2 and 3 threads at batch 1 and 3: against the reference, and each thread count's
    result bit-equal to one thread's."""
    src = ("import std.nn\nmodel Epilogues {\n"
           "  deep = nn.Conv2d(64, 96, 3, stride = 2, padding = 1)\n"
           "  grouped = nn.Conv2d(64, 96, 3, stride = 2, padding = 1, groups = 4)\n"
           "  plain = nn.Conv2d(64, 96, 3, stride = 2, padding = 1, bias = false)\n"
           "  tall = nn.Conv2d(64, 520, 3, stride = 2)\n"
           "  line = nn.Conv1d(5, 24, 4, stride = 3, padding = 2)\n"
           "  forward(x: f32[B, 64, 36, 34], r: f32[B, 96, 18, 17], t: f32[B, 520, 3, 3],"
           " v: f32[B, 5, 130], q: f32[96, 1, 1]) {\n"
           "    s = x |> nn.AvgPool2d(4)\n"
           "    return relu(deep(x) + r), relu(grouped(x) + r) * 0.5, tanh(plain(x)) - r,"
           " relu(tall(s[:, :, :7, :7]) + t), sigmoid(line(v)), relu(deep(x) * q) } }")
    rng = np.random.default_rng(8)
    ref = kiln.compile(src, target="reference", seed=6)
    builds = {t: kiln.compile(src, target="native", threads=t, seed=6) for t in (1, 2, 3)}
    for batch in (1, 3):
        inputs = [rng.standard_normal(shape).astype(np.float32) for shape in (
            (batch, 64, 36, 34), (batch, 96, 18, 17), (batch, 520, 3, 3), (batch, 5, 130),
            (96, 1, 1))]
        want = ref(*inputs)
        first = None
        for threads, native in builds.items():
            got = native(*inputs)
            for g, w in zip(got, want, strict=True):
                assert g.shape == w.shape
                np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-4)
            if first is None:
                first = got
            for g, f in zip(got, first, strict=True):
                assert np.array_equal(g, f), f"{threads} threads differ from one"


@pytest.mark.parametrize("threads", [1, 2])
def test_stride_2_panels_inside_the_input_pack_without_masks(threads):
    """At stride 2 along the width, the im2col panel's vectors whose every tap lands inside
    x (one output row each) pack from two plain loads (im2col.Im2col.pack's `clear`): a 7x7
    stem 96 outputs wide (whole panels inside, and borders that are not), the same with
    dilation 2 down the height, a 3x3 without padding whose last vector's odd lane would
    read one float past its row, and a 1x1 (a strided shortcut); at batch 1 and 2."""
    src = ("import std.nn\nmodel Stems {\n"
           "  forward(x: f32[B, 3, 20, 192], s: f32[B, 16, 9, 129], w: f32[8, 3, 7, 7],"
           " v: f32[24, 16, 3, 3], u: f32[24, 16, 1, 1]) {\n"
           "    return relu(conv(x, w, stride = 2, padding = 3)),"
           " conv(x, w, stride = 2, padding = [6, 3], dilation = [2, 1]),"
           " conv(s, v, stride = 2), conv(s, u, stride = 2) } }")
    native, ref = both(src, threads=threads, seed=4)
    w = RNG.standard_normal((8, 3, 7, 7)).astype(np.float32)
    v = RNG.standard_normal((24, 16, 3, 3)).astype(np.float32)
    u = RNG.standard_normal((24, 16, 1, 1)).astype(np.float32)
    for batch in (1, 2):
        x = RNG.standard_normal((batch, 3, 20, 192)).astype(np.float32)
        s = RNG.standard_normal((batch, 16, 9, 129)).astype(np.float32)
        _close(native, ref, x, s, w, v, u)


def test_transposed_convolutions_of_one_pixel_run_samples_as_rows():
    """A 1x1 (or 1-pixel 1-D) input, one group: a chunk of samples is one GEMM, rows of
    [B, C] (37 x 300 x 4 x 4 = 4800 taps a row: 13 samples a chunk, so 20 is 13 + 7), each
    row scattered into its sample; with a prepacked weight and bias, a weight given at run
    time, padding that drops taps, stride and 1-D; batches of 1 to 20."""
    src = ("import std.nn\nmodel Up { forward(x: f32[B, 37, 1, 1], w: f32[37, 5, 3, 3],"
           " v: f32[B, 6, 1], u: f32[6, 4, 5]) {\n"
           "  return x |> nn.ConvTranspose2d(37, 300, 4), relu(x |> nn.ConvTranspose2d("
           "37, 8, 4, stride = 2, padding = 1, bias = false)),"
           " conv_transpose(x, w, padding = 1), conv_transpose(v, u, stride = 3) } }")
    native, ref = both(src, seed=5)
    w = RNG.standard_normal((37, 5, 3, 3)).astype(np.float32)
    u = RNG.standard_normal((6, 4, 5)).astype(np.float32)
    for batch in (1, 7, 13, 20):
        x = RNG.standard_normal((batch, 37, 1, 1)).astype(np.float32)
        v = RNG.standard_normal((batch, 6, 1)).astype(np.float32)
        for got, want in zip(native(x, w, v, u), ref(x, w, v, u), strict=True):
            assert got.shape == want.shape
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_convolutions_in_half_precision_run_in_f32():
    check({"x": "f16[B, 4, 7, 6]", "w": "f16[6, 2, 3, 3]", "b": "f16[6]",
           "y": "bf16[B, 4, 5]", "v": "bf16[4, 3, 2]"},
          ["conv(x, w, b, padding = 1, groups = 2)",
           "conv_transpose(y, v, stride = 2)"])


# pooling ------------------------------------------------------------------------------------
def test_pooling_and_run_time_spatial_sizes():
    check({**X, "x1": "f32[B, 2, 17]", "i": "i32[B, 2, 9, 8]", "h": "bf16[B, 2, 7, 7]",
           "s": "f32[B, 3, H, W]", "w": "f32[4, 3, 3, 2]"},
          ["conv(s, w, stride = 2, padding = [1, 0])",  # sizes known at run time only
           "conv(s, w, padding = [2, 5])",  # stride 1: the padded grid sized at run time
           "max_pool(s, kernel_size = 3, stride = 2, padding = 1, ceil_mode = true)",
           "avg_pool(s, kernel_size = 2, stride = 2, ceil_mode = true, count_include_pad = false)",
           "max_pool(x, kernel_size = 3, stride = 2, padding = 1)",
           "max_pool(x, kernel_size = [2, 3], stride = [2, 1], dilation = 2, ceil_mode = true)",
           "max_pool(x1, kernel_size = 4, stride = 3, padding = 2, ceil_mode = true)",
           "max_pool(i, kernel_size = 3, stride = 2, padding = 1)",
           "max_pool(h, kernel_size = 2, ceil_mode = true)",
           "avg_pool(x, kernel_size = 3, stride = 2, padding = 1)",
           "avg_pool(x, kernel_size = 3, stride = 2, padding = 1, count_include_pad = false)",
           "avg_pool(x, kernel_size = [3, 2], stride = 2, padding = 1, ceil_mode = true)",
           "avg_pool(x1, kernel_size = 4, stride = 3, padding = 2, ceil_mode = true, "
           "count_include_pad = false)",
           "avg_pool(h, kernel_size = 3, stride = 2)",
           "global_avg_pool(x)", "global_avg_pool(x1)", "global_avg_pool(h)", "global_avg_pool(s)"],
          runs=({"B": 1, "H": 11, "W": 8}, {"B": 3, "H": 6, "W": 13}))


MAX_POOL_WINDOWS = [  # kernel, stride, padding, dilation, ceil_mode
    ((3, 3), (2, 2), (1, 1), (1, 1), False),  # ResNet's stem
    ((3, 3), (2, 2), (1, 1), (1, 1), True),
    ((2, 2), (2, 2), (0, 0), (1, 1), True),
    ((3, 2), (1, 1), (1, 1), (1, 1), False),  # stride 1: a load per column tap
    ((2, 3), (1, 2), (1, 1), (2, 2), True),  # dilated columns
    ((3, 3), (3, 3), (1, 1), (1, 1), True),  # stride 3: LLVM's strided loop
    ((1, 9), (1, 2), (0, 4), (1, 1), False),  # more column taps than are written out
    ((2, 2), (2, 2), (1, 1), (3, 3), True),  # at H = 2, a window wholly in the padding
]


@pytest.mark.parametrize("window", MAX_POOL_WINDOWS)
def test_max_pool_rows_of_every_width_and_special_value_agree_exactly(window):
    """max_pool folds a window's rows into a padded row, then its columns (f32 at stride 1 or
    2 as explicit vectors, a masked last vector): output rows of every width about the
    vector width (16 lanes or 8), with NaN, +-inf and whole rows of -inf in the input,
    exactly as the reference (numpy's max: NaN wins, padding never does unless the whole
    window is padding); f32, f16 and i32 (the scalar loops), 2-D and 1-D; f32 planes shared
    by two threads (the last, 40 planes of 14 x 66)."""
    (kh, kw), (sh, sw), (ph, pw), (dh, dw), ceil = window
    attrs = (f"kernel_size = [{kh}, {kw}], stride = [{sh}, {sw}], padding = [{ph}, {pw}], "
             f"dilation = [{dh}, {dw}], ceil_mode = {str(ceil).lower()}")
    line = (f"kernel_size = {kw}, stride = {sw}, padding = {pw}, dilation = {dw}, "
            f"ceil_mode = {str(ceil).lower()}")
    src = ("model P { forward(x: f32[B, C, H, W], l: f32[B, C, W], h: f16[B, C, H, W], "
           "i: i32[B, C, H, W]) {\n"
           f"  return max_pool(x, {attrs}), max_pool(l, {line}), max_pool(h, {attrs}), "
           f"max_pool(i, {attrs})\n}} }}")
    native, ref = both(src, threads=2)
    for width, c in [*((w, 3) for w in (3, 9, 16, 17, 31, 33, 40, 66)), (66, 40)]:
        b, h = 2, 2 if width in (3, 17) else 7 + width % 3  # 2: rows all padding
        if c == 40:  # one sample (two would be split by samples) of 40 planes of 14 x 66
            b, h = 1, 14
        x = RNG.uniform(-50, 50, (b, c, h, width)).astype(np.float32)
        flat = x.reshape(-1)
        for value in (np.nan, np.inf, -np.inf):
            flat[RNG.integers(flat.size, size=max(1, flat.size // 50))] = value
        x[0, 1, h - 1, :] = -np.inf
        x[b - 1, 2, :, width // 2] = np.nan
        args = [x, x[:, :, 0].copy(), x.astype(np.float16),
                np.nan_to_num(x, posinf=2**30, neginf=-2**30).astype(np.int32)]
        for got, want in zip(native(*args), ref(*args), strict=True):
            assert got.dtype == want.dtype and got.shape == want.shape, f"W={width}"
            np.testing.assert_array_equal(got, want, err_msg=f"W={width}")


AVG_POOL_WINDOWS = [  # kernel, stride, ceil_mode (no padding: pool._vector_windows)
    ((2, 2), (2, 2), False),  # LeNet's
    ((3, 3), (1, 1), False),
    ((3, 2), (2, 1), False),
    ((1, 5), (1, 2), False),
    ((2, 2), (2, 2), True),  # an odd size's last window overhangs: the row-by-row kernel
    ((3, 3), (3, 3), False),  # stride 3: the row-by-row kernel
]


def _avg_pool64(x: np.ndarray, kernel, stride, ceil: bool) -> np.ndarray:
    """avg_pool without padding in float64, windows by index (ceil mode's last window cut at
    the edge and divided by the cells inside, as PyTorch)."""
    (kh, kw), (sh, sw) = kernel, stride
    *lead, h, w = x.shape

    def count(size, k, s):
        n = -(-(size - k) // s) + 1 if ceil else (size - k) // s + 1
        return n - 1 if ceil and (n - 1) * s >= size else n

    oh, ow = count(h, kh, sh), count(w, kw, sw)
    y = np.empty((*lead, oh, ow))
    for i in range(oh):
        for j in range(ow):
            y[..., i, j] = x[..., i * sh:i * sh + kh, j * sw:j * sw + kw].astype(np.float64).mean(
                axis=(-2, -1))
    return y


@pytest.mark.parametrize("cpu", [None, "x86-64-v3"])
@pytest.mark.parametrize("window", AVG_POOL_WINDOWS)
def test_avg_pool_rows_of_every_width_against_float64(window, cpu):
    """avg_pool without padding sums each window a vector of outputs at a time (the last one
    masked, loads masked to the row) and divides by its cells: rows of every width about the
    vector width (16 lanes, or 8 in code for AVX2), 2-D and 1-D, planes shared by two
    threads, against float64 sums; a window past the edge (ceil mode) takes the row-by-row
    kernel, with fewer cells."""
    import llvmlite.binding as llvm  # noqa: F401

    from kiln.compiler.codegen.llvm import target as targets
    from kiln.compiler.driver import Compilation
    from kiln.runtime.native import NativeModel

    (kh, kw), (sh, sw), ceil = window
    mode = str(ceil).lower()
    src = ("model P { forward(x: f32[B, C, H, W], l: f32[B, C, W]) {\n"
           f"  return avg_pool(x, kernel_size = [{kh}, {kw}], stride = [{sh}, {sw}], "
           f"ceil_mode = {mode}), avg_pool(l, kernel_size = {kw}, stride = {sw}, "
           f"ceil_mode = {mode})\n}} }}")
    target = targets.named(cpu) if cpu else targets.host()
    if target.missing_on(targets.host()):
        pytest.skip(f"this CPU cannot run code for {cpu}")
    native = NativeModel(Compilation.of(kiln.load(src), cpu=target), {}, threads=2)
    for width, c in [*((w, 3) for w in (5, 9, 16, 17, 31, 33, 40, 67)), (66, 40)]:
        b, h = (1, 14) if c == 40 else (2, 6 + width % 3)
        x = RNG.uniform(-50, 50, (b, c, h, width)).astype(np.float32)
        line = x[:, :, 0].copy()
        got, got_line = native(x, line)
        want = _avg_pool64(x, (kh, kw), (sh, sw), ceil)
        want_line = _avg_pool64(line[:, :, None], (1, kw), (1, sw), ceil)[:, :, 0]
        assert got.shape == want.shape and got_line.shape == want_line.shape, f"W={width}"
        np.testing.assert_allclose(got, want, rtol=2e-6, atol=2e-5, err_msg=f"W={width}")
        np.testing.assert_allclose(got_line, want_line, rtol=2e-6, atol=2e-5,
                                   err_msg=f"W={width}")


def test_max_pool_propagates_nan_as_numpy():
    native, ref = both("model P { forward(x: f32[1, 1, 4, 4]) { return max_pool(x, kernel_size = 2) } }")
    x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    x[0, 0, 1, 1] = np.nan
    np.testing.assert_array_equal(native(x), ref(x))


# normalization, dropout ---------------------------------------------------------------------
def test_normalization_and_dropout():
    check({"x": "f32[B, 6, 5, 3]", "w": "f32[6]", "b": "f32[6]", "mean": "f32[6]",
           "var": "f32[6]", "l": "f32[B, 7, 12]", "lw": "f32[7, 12]", "lb": "f32[7, 12]",
           "y": "f32[B, 4, 9]", "h": "f16[B, 4, 10]", "hw": "f16[10]", "hm": "f16[4]",
           "varh": "f16[4]"},
          ["layer_norm(l, [12])", "layer_norm(l, [7, 12], lw, lb, eps = 0.1)",
           "group_norm(x, 3, w, b)", "group_norm(x, 6)", "group_norm(x, 1, w)",
           "instance_norm(x, w, b)", "instance_norm(y, eps = 0.001)",
           "batch_norm(x, mean, var, w, b)", "batch_norm(x, mean, var, eps = 0.5)",
           "batch_norm(h, hm, varh)", "layer_norm(h, [10], hw, hw)", "dropout(x, p = 0.3)"])


BN_FOLDED = """
import std.nn
model Folded {
  conv = nn.Conv2d(3, 4, 3, padding = 1)
  bn = nn.BatchNorm2d(4, eps = 1e-3)
  deconv = nn.ConvTranspose2d(3, 4, 2, stride = 2, groups = 1)
  bn_t = nn.BatchNorm2d(4, eps = 1e-3)
  fc = nn.Linear(6, 5, bias = false)
  bn_1d = nn.BatchNorm1d(5, eps = 1e-3)
  forward(x: f32[B, 3, 6, 6], v: f32[B, 6]) { return bn(conv(x)), bn_t(deconv(x)), bn_1d(fc(v)) }
}
"""


def test_batch_norm_folded_into_its_layer_keeps_eps():
    """-O1 folds each BatchNorm into the layer before it (s = gamma / sqrt(var + eps)); with
    running variances of the order of eps, a dropped or misplaced eps changes the outputs by
    tens of percent. Against the unoptimized reference, where batch_norm runs as itself."""
    native = kiln.compile(BN_FOLDED, target="native")
    ref = kiln.compile(BN_FOLDED, target="reference", opt_level=0)
    assert not any(native.lowered().graph.op(n) == "batch_norm"
                   for n in native.lowered().graph.order())
    weights = {}
    for path, value in native.params.items():
        if path.endswith("running_var"):  # 1e-3 .. 1e-2, beside eps = 1e-3
            weights[path] = RNG.uniform(1e-3, 1e-2, value.shape).astype(np.float32)
        elif value.dtype == np.float32:
            weights[path] = RNG.uniform(-1, 1, value.shape).astype(np.float32)
    native.load_weights(weights, strict=False)
    ref.load_weights(weights, strict=False)
    x = RNG.standard_normal((2, 3, 6, 6)).astype(np.float32)
    v = RNG.standard_normal((2, 6)).astype(np.float32)
    for op, got, want in zip(("conv", "conv_transpose", "matmul"), native(x, v), ref(x, v),
                             strict=True):
        assert_agree(got, want, op, f"{op} with a folded batch norm")


# resize -------------------------------------------------------------------------------------
def test_resize_nearest_and_bilinear():
    check({"x": "f32[B, 2, 5, 7]", "y": "f32[B, 3, 6]", "s": "f32[B, 2, H, W]",
           "h": "f16[B, 1, 4, 4]"},
          ['resize(x, scale_factor = 2, mode = "nearest")',
           'resize(x, size = [3, 11], mode = "nearest")',
           'resize(x, size = [7, 5], mode = "bilinear")',
           'resize(x, size = [7, 5], mode = "bilinear", align_corners = true)',
           'resize(x, scale_factor = 1.5, mode = "bilinear")',
           'resize(x, scale_factor = [0.5, 2.5], mode = "bilinear")',
           'resize(y, size = 13, mode = "bilinear")',
           'resize(y, scale_factor = 3, mode = "nearest")',
           'resize(s, size = [4, 9], mode = "bilinear")',  # ratios of run-time sizes
           'resize(s, size = [4, 9], mode = "bilinear", align_corners = true)',
           'resize(s, scale_factor = 2, mode = "bilinear")',
           'resize(h, size = [2, 3], mode = "bilinear")',
           'resize(x, size = [3, 11], mode = "nearest-exact")',
           'resize(s, size = [4, 9], mode = "nearest-exact")',  # ratios of run-time sizes
           'resize(s, scale_factor = 3, mode = "nearest-exact")',
           'resize(x, size = [3, 11], mode = "bicubic")',
           'resize(x, scale_factor = 1.5, mode = "bicubic", align_corners = true)',
           'resize(s, size = [4, 9], mode = "bicubic")',  # ratios of run-time sizes
           'resize(s, scale_factor = 2, mode = "bicubic")'],
          runs=({"B": 1, "H": 5, "W": 3}, {"B": 2, "H": 9, "W": 1}))


# the op-case table -------------------------------------------------------------------------
def test_table():
    """tests/_cases.py's nn group as one-op nodes (weights as inputs, nothing prepacked)."""
    check_cases(cases("native", "nn"))


def test_table_on_symbolic_sizes():
    check_cases(cases("native", "nn", SYMBOLIC), BINDINGS)


# ResNet-18 ----------------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_resnet18_native_agrees_with_the_reference():
    native, ref = both("import std.cnn\n", model="cnn.ResNet18")
    x = RNG.standard_normal((1, 3, 64, 64)).astype(np.float32)
    np.testing.assert_allclose(native(x), ref(x), rtol=1e-4, atol=1e-4)


# depthwise convolutions (codegen/llvm/depthwise.py) ----------------------------------------
DEPTHWISE_INPUTS = {
    "x": "f32[B, 5, 15, 21]", "w3": "f32[5, 1, 3, 3]", "w4": "f32[5, 1, 4, 4]",
    "w5": "f32[5, 1, 5, 5]", "b5": "f32[5]", "w7": "f32[5, 1, 7, 7]", "wm": "f32[10, 1, 3, 3]",
    "bm": "f32[10]", "xw": "f32[B, 3, 9, 70]", "v7": "f32[3, 1, 7, 7]", "x1": "f32[B, 4, 37]",
    "u5": "f32[4, 1, 5]"}
DEPTHWISE_CALLS = [
    "conv(x, w3, padding = 1, groups = 5)",  # 15 rows: blocks of 8, 4, 2 and 1 (AVX-512)
    "conv(x, w3, groups = 5)",  # no padding
    "conv(x, w5, b5, stride = 2, padding = 2, groups = 5)",  # even lanes of two loads
    "conv(x, w7, padding = 3, groups = 5)",
    'conv(x, w4, groups = 5, padding = "same")',  # an even kernel: the extra pad after
    "conv(x, w3, stride = [2, 1], dilation = [1, 2], padding = [0, 2], groups = 5)",
    "conv(x, w5, stride = [1, 2], dilation = 2, padding = [3, 1], groups = 5)",
    "conv(x, w5, stride = [3, 1], padding = [6, 0], groups = 5)",  # rows of padding only
    'conv(x, wm, bm, padding = "same", groups = 5)',  # two filters a channel
    "conv(xw, v7, padding = 3, groups = 3)",  # rows of five vectors, the last masked
    "conv(xw, v7, stride = 2, padding = [1, 5], groups = 3)",
    "conv(x1, u5, stride = 2, padding = 2, groups = 4)",  # 1-D
]


@pytest.mark.parametrize("cpu", [None, "x86-64-v3"])
def test_depthwise_convolutions_run_the_direct_kernel(cpu):
    """Every geometry of a depthwise convolution (kernels 3 to 7, strides, dilations,
    asymmetric and large padding, a channel multiplier, 1-D) against the reference, at batch
    sizes 1, 3 and 0, in code for this CPU and for AVX2 (blocks of 4 rows, 8 lanes)."""
    import llvmlite.binding as llvm

    from kiln.compiler.codegen.llvm import target as targets
    from kiln.compiler.codegen.llvm.module import build_module
    from kiln.compiler.driver import Compilation
    from kiln.runtime.native import NativeModel

    src = source(DEPTHWISE_INPUTS, DEPTHWISE_CALLS)
    target = targets.named(cpu) if cpu else targets.host()
    if target.missing_on(targets.host()):
        pytest.skip(f"this CPU cannot run code for {cpu}")
    module, _ = build_module(kiln.load(src).elaborate(), llvm.get_process_triple(),
                             str(target.machine().target_data), vector_width=target.vector_width)
    kernels = {f.name for f in module.functions if f.name.startswith("kiln_depthwise_")}
    width = target.vector_width
    assert {f"kiln_depthwise_3x3_s1x1_d1x1_4x13_v{width}",
            f"kiln_depthwise_1x5_s1x2_d1x1_3x13_v{width}"} <= kernels, kernels
    native = NativeModel(Compilation.of(kiln.load(src), cpu=target), {}, threads=2)
    ref = kiln.compile(src, target="reference")
    for sizes in ({"B": 1}, {"B": 3}, {"B": 0}):
        args = [array(name, t, sizes) for name, t in DEPTHWISE_INPUTS.items()]
        for call, got, want in zip(DEPTHWISE_CALLS, native(*args), ref(*args), strict=True):
            assert got.shape == want.shape, call
            # atol scaled by the call's largest output: a 7x7 tap sum of terms near 50 that
            # cancels to 0.03 differs by 1.3e-5 between two summation orders
            atol = 1e-5 * max(1.0, float(np.abs(want).max(initial=0.0)))
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=atol, err_msg=call)


DEPTHWISE_LAYERS = """
import std.nn
model D(k: int, s: int, h: int, w: int) {
  dw = nn.Conv2d(24, 24, k, stride = s, padding = k // 2, groups = 24)
  forward(x: f32[B, 24, h, w]) { return relu(x |> dw) }
}
"""


@pytest.mark.parametrize("k, s, h, w", [
    (3, 1, 30, 33),    # prepacked weights, planes split across threads
    (5, 2, 29, 40),
    (3, 1, 300, 250),  # a plane past the stack buffer: the GEMM path, chosen at run time
])
def test_depthwise_layers_with_prepacked_weights_on_threads(k, s, h, w):
    args = {"k": k, "s": s, "h": h, "w": w}
    native = kiln.compile(DEPTHWISE_LAYERS, args=args, threads=2, seed=3)
    alone = kiln.compile(DEPTHWISE_LAYERS, args=args, threads=1, seed=3)
    ref = kiln.compile(DEPTHWISE_LAYERS, args=args, target="reference", seed=3)
    assert any(name.startswith("prepack_a(") for name in native.native_arrays())
    for batch in (1, 2):
        x = RNG.standard_normal((batch, 24, h, w)).astype(np.float32)
        np.testing.assert_allclose(native(x), ref(x), rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(native(x), alone(x))  # a plane's sums: one thread's
