"""Initializers: PyTorch's statistics, determinism across calls and processes, argument errors."""

import hashlib
import math
import os
import statistics
import subprocess
import sys

import numpy as np
import pytest

from kiln.compiler import initializers
from kiln.compiler.initializers import (
    INITIALIZER_NAMES,
    InitError,
    calculate_fans,
    calculate_gain,
    initializer_spec,
    make_initializer,
    normal_quantile,
)
from kiln.compiler.types import NUMPY_DTYPES


def gen(name, shape, *args, dtype="f32", seed=0, path="w", **kwargs):
    return make_initializer(name, list(args), kwargs).generate(shape, dtype, seed, path)


def assert_uniform_bound(w, bound):
    """All of |w| <= bound, and a large sample comes close to it."""
    assert np.abs(w).max() <= np.float32(bound)
    assert np.abs(w).max() > 0.99 * bound
    assert abs(w.mean()) < 0.02 * bound


def test_constants():
    assert np.array_equal(gen("zeros", (2, 3)), np.zeros((2, 3), np.float32))
    assert np.array_equal(gen("ones", (4,), dtype="i64"), np.ones(4, np.int64))
    assert gen("ones", (), dtype="bool").dtype == np.bool_
    assert gen("constant", (2,), True, dtype="f32").tolist() == [1.0, 1.0]
    assert np.array_equal(gen("constant", (3,), 7, dtype="i32"), np.full(3, 7, np.int32))
    assert np.array_equal(gen("constant", (2,), val=0.5, dtype="bf16").astype(np.float32), [0.5, 0.5])


@pytest.mark.parametrize("dtype", ["f32", "f16", "bf16"])
def test_dtypes_and_shapes(dtype):
    w = gen("normal", (3, 5), dtype=dtype)
    assert w.shape == (3, 5) and w.dtype == NUMPY_DTYPES[dtype]
    assert gen("uniform", (), dtype=dtype).shape == ()
    assert gen("kaiming_uniform", (0, 4), dtype=dtype).shape == (0, 4)


def test_uniform_and_normal():
    u = gen("uniform", (200_000,), -3.0, b=5.0)
    assert u.min() >= -3 and u.max() < 5 and u.max() > 4.99 and u.min() < -2.99
    n = gen("normal", (200_000,), mean=1.5, std=0.02)
    assert abs(n.mean() - 1.5) < 0.001 and n.std() == pytest.approx(0.02, rel=0.02)


def test_normal_quantile_matches_reference():
    p = np.linspace(1e-9, 1 - 1e-9, 2001)
    reference = [statistics.NormalDist().inv_cdf(x) for x in p]
    assert np.allclose(normal_quantile(p), reference, rtol=1e-8, atol=1e-9)


def test_samplers_agree_across_their_chunks():
    """The samplers work a chunk at a time: a sample several chunks long, of a shape that is
    no multiple of one, is elementwise the reference quantile of the same uniforms, and the
    uniforms are the 53-bit ones of the raw stream."""
    n = 7 * (initializers._CHUNK // 2 + 3)  # 3.5 chunks and a bit, 7 columns
    u = initializers._uniform01(np.random.PCG64(4), (n // 7, 7))
    raw = np.random.PCG64(4).random_raw(n).reshape(n // 7, 7)
    np.testing.assert_array_equal(u, ((raw >> np.uint64(11)) + 0.5) * 2.0**-53)
    z = normal_quantile(u)
    assert z.shape == u.shape
    pick = np.random.default_rng(0).choice(n, 400, replace=False)
    pick = np.concatenate([pick, [0, initializers._CHUNK - 1, initializers._CHUNK, n - 1]])
    reference = [statistics.NormalDist().inv_cdf(float(x)) for x in u.reshape(-1)[pick]]
    np.testing.assert_allclose(z.reshape(-1)[pick], reference, rtol=1e-8, atol=1e-9)


def test_trunc_normal():
    w = gen("trunc_normal", (200_000,), std=0.02)  # the bounds ±2 are far out: a plain normal
    assert w.std() == pytest.approx(0.02, rel=0.02)
    w = gen("trunc_normal", (200_000,), 0.0, 1.0, -1.0, 0.5)
    assert w.min() >= -1 and w.max() <= 0.5 and w.min() < -0.999 and w.max() > 0.499
    tail = gen("trunc_normal", (10_000,), a=6.0, b=math.inf)  # far tail, sampled exactly
    assert tail.min() >= 6 and np.isfinite(tail).all() and tail.mean() == pytest.approx(6.16, 0.01)


def test_fans_and_gains():
    assert calculate_fans((64, 32)) == (32, 64)
    assert calculate_fans((16, 3, 5, 7)) == (3 * 35, 16 * 35)
    assert calculate_gain("relu") == math.sqrt(2)
    assert calculate_gain("tanh") == 5 / 3
    assert calculate_gain("leaky_relu") == math.sqrt(2 / (1 + 0.01**2))
    assert calculate_gain("leaky_relu", math.sqrt(5)) == pytest.approx(math.sqrt(1 / 3))
    assert calculate_gain("conv2d") == calculate_gain("sigmoid") == 1
    assert calculate_gain("selu") == 0.75


def test_kaiming_uniform_default_linear_bound():
    # PyTorch's nn.Linear weight init: kaiming_uniform(a=√5) is U(±1/√in)
    w = gen("kaiming_uniform", (512, 300), a=math.sqrt(5))
    assert_uniform_bound(w, 1 / math.sqrt(300))


def test_kaiming_conv_fans_and_modes():
    shape = (64, 16, 3, 3)
    w = gen("kaiming_uniform", shape, nonlinearity="relu")
    assert_uniform_bound(w, math.sqrt(2) * math.sqrt(3 / (16 * 9)))
    w = gen("kaiming_normal", shape, mode="fan_out", nonlinearity="relu")
    assert w.std() == pytest.approx(math.sqrt(2 / (64 * 9)), rel=0.03)
    w = gen("uniform_fan_in", (100_000,), fan=16 * 9)
    assert_uniform_bound(w, 1 / 12)


def test_xavier():
    w = gen("xavier_uniform", (300, 500), gain=2.0)
    assert_uniform_bound(w, 2.0 * math.sqrt(6 / 800))
    assert np.array_equal(gen("glorot_uniform", (30, 50)), gen("xavier_uniform", (30, 50)))
    w = gen("xavier_normal", (300, 500), gain=calculate_gain("tanh"))
    assert w.std() == pytest.approx(5 / 3 * math.sqrt(2 / 800), rel=0.02)


@pytest.mark.parametrize("shape", [(6, 10), (10, 6), (8, 8), (4, 3, 2, 2)])
def test_orthogonal(shape):
    w = gen("orthogonal", shape, gain=1.5, dtype="f32").astype(np.float64)
    flat = w.reshape(shape[0], -1) / 1.5
    small = flat @ flat.T if flat.shape[0] <= flat.shape[1] else flat.T @ flat
    assert np.allclose(small, np.eye(len(small)), atol=1e-5)


def test_determinism():
    a = gen("kaiming_uniform", (7, 9), seed=3, path="layer1.weight")
    assert np.array_equal(a, gen("kaiming_uniform", (7, 9), seed=3, path="layer1.weight"))
    assert not np.array_equal(a, gen("kaiming_uniform", (7, 9), seed=3, path="layer2.weight"))
    assert not np.array_equal(a, gen("kaiming_uniform", (7, 9), seed=4, path="layer1.weight"))


CROSS_PROCESS = """
import hashlib
from kiln.compiler.initializers import make_initializer
for name, shape in [("normal", (5, 7)), ("trunc_normal", (9,)), ("orthogonal", (4, 6)),
                    ("kaiming_uniform", (3, 2, 3, 3))]:
    w = make_initializer(name, [], {}).generate(shape, "f32", 42, "block.0." + name)
    print(hashlib.sha256(w.tobytes()).hexdigest())
"""


def test_same_values_in_another_process():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p),
           "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", CROSS_PROCESS], env=env, check=True,
                         capture_output=True, text=True).stdout.split()
    here = [
        hashlib.sha256(gen(name, shape, seed=42, path="block.0." + name).tobytes()).hexdigest()
        for name, shape in [("normal", (5, 7)), ("trunc_normal", (9,)), ("orthogonal", (4, 6)),
                            ("kaiming_uniform", (3, 2, 3, 3))]
    ]
    assert out == here


def test_initializer_is_hashable_and_complete():
    a = make_initializer("kaiming_uniform", [math.sqrt(5)], {})
    b = make_initializer("kaiming_uniform", [], {"a": math.sqrt(5), "mode": "fan_in"})
    assert a == b and hash(a) == hash(b)
    assert dict(a.params) == {"a": math.sqrt(5), "mode": "fan_in", "nonlinearity": "leaky_relu"}
    assert make_initializer("normal", [0], {}) == make_initializer("normal", [0.0], {})
    numpy_args = make_initializer("uniform", [np.int64(-1), np.float64(2.0)], {})
    assert numpy_args == make_initializer("uniform", [-1.0, 2.0], {})
    assert dict(make_initializer("constant", [np.int64(3)], {}).params) == {"val": 3}
    assert make_initializer("glorot_uniform", [], {}).name == "xavier_uniform"


def test_table_documents_every_name():
    assert set(INITIALIZER_NAMES) >= {"zeros", "trunc_normal", "orthogonal", "glorot_uniform"}
    for name in INITIALIZER_NAMES:
        spec = initializer_spec(name)
        assert spec.doc and spec.signature().startswith(spec.name + "(")
    sig = initializer_spec("kaiming_normal").signature()
    assert sig == "kaiming_normal(a = 0.0, mode = 'fan_in', nonlinearity = 'leaky_relu')"


@pytest.mark.parametrize(
    "name, args, kwargs, arg, words",
    [
        ("kaiming_unifrom", [], {}, None, "did you mean `kaiming_uniform`"),
        ("normal", [], {"sd": 1.0}, "sd", "no argument `sd`"),
        ("normal", [0.0, 1.0, 2.0], {}, None, "at most 2"),
        ("normal", [0.0], {"mean": 1.0}, "mean", "two values"),
        ("constant", [], {}, "val", "needs argument `val`"),
        ("kaiming_uniform", [], {"mode": "fan_avg"}, "mode", "fan_in"),
        ("kaiming_normal", [], {"nonlinearity": "swish"}, "nonlinearity", "swish"),
        ("normal", [], {"std": -1.0}, "std", ">= 0"),
        ("normal", ["0"], {}, "mean", "number"),
        ("normal", [True], {}, "mean", "number"),
        ("normal", [math.nan], {}, "mean", "finite"),
        ("uniform", [1.0, 0.0], {}, "b", "a < b"),
        ("trunc_normal", [], {"a": 2.0, "b": -2.0}, "b", "a < b"),
        ("uniform_fan_in", [0], {}, "fan", "> 0"),
        ("constant", [2**70], {}, "val", "64 bits"),
    ],
)
def test_argument_errors(name, args, kwargs, arg, words):
    with pytest.raises(InitError) as err:
        make_initializer(name, args, kwargs)
    assert err.value.arg == arg and words in err.value.message


@pytest.mark.parametrize("name", ["kaiming_uniform", "kaiming_normal", "xavier_uniform", "orthogonal"])
def test_fewer_than_two_dims(name):
    with pytest.raises(InitError, match="2"):
        gen(name, (10,))


def test_dtype_errors():
    with pytest.raises(InitError, match="i32"):
        gen("normal", (3,), dtype="i32")
    with pytest.raises(InitError, match="i32 values"):
        gen("constant", (3,), 0.5, dtype="i32")
    with pytest.raises(InitError, match="i32 values"):
        gen("constant", (3,), 2**40, dtype="i32")
    with pytest.raises(InitError, match="bool values"):
        gen("constant", (3,), 2, dtype="bool")
    assert gen("constant", (2,), 2**62, dtype="i64").tolist() == [2**62, 2**62]


def test_matches_torch():
    torch = pytest.importorskip("torch")
    init = torch.nn.init
    for shape in [(64, 32), (16, 3, 5, 5), (8, 4, 3)]:
        assert calculate_fans(shape) == init._calculate_fan_in_and_fan_out(torch.empty(shape))
    for name in ["linear", "conv2d", "sigmoid", "tanh", "relu", "selu"]:
        assert calculate_gain(name) == pytest.approx(init.calculate_gain(name))
    assert calculate_gain("leaky_relu", 0.2) == pytest.approx(init.calculate_gain("leaky_relu", 0.2))
    cases = [
        ("kaiming_uniform", {"a": math.sqrt(5)}, (256, 128, 3)),
        ("kaiming_normal", {"mode": "fan_out", "nonlinearity": "relu"}, (256, 128, 3)),
        ("xavier_uniform", {"gain": 0.5}, (300, 200)),
        ("xavier_normal", {}, (300, 200)),
        ("trunc_normal", {"std": 0.5, "a": -0.3, "b": 1.0}, (300, 200)),
    ]
    for name, kwargs, shape in cases:
        ours = gen(name, shape, **kwargs).astype(np.float64)
        theirs = getattr(init, name + "_")(torch.empty(shape, dtype=torch.float64), **kwargs).numpy()
        assert ours.std() == pytest.approx(theirs.std(), rel=0.03), name
        assert ours.mean() == pytest.approx(theirs.mean(), abs=0.03 * theirs.std()), name
        if "normal" not in name or name == "trunc_normal":  # bounded: compare the bounds
            assert np.abs(ours).max() == pytest.approx(np.abs(theirs).max(), rel=0.01), name
