"""examples/*.kiln: each checks, runs at two batch sizes, gives the unoptimized reference's
results on the optimized targets, and the MLP and LeNet-5 match numpy."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from _crosscheck import check_opt_levels, random_inputs
from _sizes import symbol_sizes

import kiln

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
FILES = sorted(EXAMPLES.glob("*.kiln"))
BATCHES = [1, 4]
RTOL = ATOL = 1e-5  # f32 against a float64 reference


def cli(*args: str) -> subprocess.CompletedProcess:
    # the timeout guards against a hang only: a cold LLVM build of the U-Net on two busy cores
    # took 48 s of the 60 once allowed
    return subprocess.run([sys.executable, "-m", "kiln.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=300)


def test_there_are_examples():
    assert {"mlp.kiln", "lenet.kiln"} <= {f.name for f in FILES}


@pytest.mark.parametrize("path", FILES, ids=[f.name for f in FILES])
def test_example_checks(path):
    result = cli("check", path)
    assert result.returncode == 0, result.stderr
    assert ": ok" in result.stdout


@pytest.mark.parametrize("path", FILES, ids=[f.name for f in FILES])
def test_example_runs_at_two_batch_sizes(path):
    m = kiln.compile(path, target="reference")
    for size in BATCHES:
        outputs = m(*random_inputs(m, size, np.random.default_rng(size)))
        outputs = outputs if isinstance(outputs, tuple) else (outputs,)
        assert len(outputs) == len(m.outputs)
        env = symbol_sizes(m, {}, size)
        for y, port in zip(outputs, m.outputs, strict=False):
            assert y.shape == tuple(d.evaluate(env) for d in port.type.shape)
            assert np.all(np.isfinite(y))


def readme_command(path: Path) -> list[str]:
    """The `kiln run ...` command examples/README.md gives for this example."""
    readme = (EXAMPLES / "README.md").read_text()
    match = re.search(rf"`kiln run examples/{re.escape(path.name)}([^`]*)`", readme)
    assert match, f"examples/README.md has no `kiln run examples/{path.name} ...` command"
    return match.group(1).split()


def test_readme_lists_every_example():
    for f in FILES:
        assert "--random-inputs" in readme_command(f)


@pytest.mark.parametrize("path", FILES, ids=[f.name for f in FILES])
def test_readme_command_runs(path):
    result = cli("run", path, *readme_command(path))
    assert result.returncode == 0, result.stderr
    shown = re.findall(r"^(\w+): ", result.stdout, re.MULTILINE)
    assert shown == [p.name for p in kiln.load(path).elaborate().outputs]


# After the README commands, which leave most examples' native code in the compile cache.
@pytest.mark.parametrize("path", FILES, ids=[f.name for f in FILES])
def test_example_optimized_targets_match_the_unoptimized_reference(path):
    check_opt_levels(path)


# ---------------------------------------------------------------------------- numpy forwards
def linear(x, p, name):
    return x @ p[f"{name}.weight"].T + p[f"{name}.bias"]


def conv2d(x, w, b, padding):
    """Stride-1 cross-correlation with zero padding, as torch.nn.functional.conv2d."""
    x = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    k = w.shape[-1]
    H, W = x.shape[2] - k + 1, x.shape[3] - k + 1
    out = np.zeros((x.shape[0], w.shape[0], H, W))
    for i in range(k):
        for j in range(k):
            out += np.einsum("nchw,oc->nohw", x[:, :, i:i + H, j:j + W], w[:, :, i, j])
    return out + b.reshape(1, -1, 1, 1)


def avg_pool2(x):
    n, c, h, w = x.shape
    return x[:, :, :h // 2 * 2, :w // 2 * 2].reshape(n, c, h // 2, 2, w // 2, 2).mean(axis=(3, 5))


def as64(m):
    return {k: v.astype(np.float64) for k, v in m.params.items()}


def test_mlp_matches_numpy():
    m = kiln.compile(EXAMPLES / "mlp.kiln", target="reference")
    p = as64(m)
    for size in BATCHES:
        x = np.random.default_rng(size).standard_normal((size, 784)).astype(np.float32)
        h = np.maximum(linear(x.astype(np.float64), p, "0"), 0)
        h = np.maximum(linear(h, p, "2"), 0)
        want = linear(h, p, "4")
        y = m(x)
        assert y.dtype == np.float32 and y.shape == (size, 10)
        np.testing.assert_allclose(y, want, rtol=RTOL, atol=ATOL)


def test_mlp_hidden_argument():
    m = kiln.compile(EXAMPLES / "mlp.kiln", args={"hidden": 32}, target="reference")
    assert {k: v.shape for k, v in m.params.items()} == {
        "0.weight": (32, 784), "0.bias": (32,), "2.weight": (32, 32), "2.bias": (32,),
        "4.weight": (10, 32), "4.bias": (10,),
    }


def test_lenet_matches_numpy():
    m = kiln.compile(EXAMPLES / "lenet.kiln", target="reference")
    p = as64(m)
    for size in BATCHES:
        x = np.random.default_rng(size).standard_normal((size, 1, 28, 28)).astype(np.float32)
        h = conv2d(x.astype(np.float64), p["features.0.weight"], p["features.0.bias"], 2)
        h = avg_pool2(np.tanh(h))                                    # [B, 6, 14, 14]
        h = conv2d(h, p["features.3.weight"], p["features.3.bias"], 0)
        h = avg_pool2(np.tanh(h)).reshape(size, -1)                  # [B, 16 * 5 * 5]
        h = np.tanh(linear(h, p, "classifier.0"))
        h = np.tanh(linear(h, p, "classifier.2"))
        want = linear(h, p, "classifier.4")
        y = m(x)
        assert y.dtype == np.float32 and y.shape == (size, 10)
        np.testing.assert_allclose(y, want, rtol=RTOL, atol=ATOL)


# ---------------------------------------------------------------------------- kiln params
def listed_params(path, *args) -> tuple[list[tuple[str, str]], str]:
    result = cli("params", path, *args)
    assert result.returncode == 0, result.stderr
    rows = re.findall(r"^(\S+)\s+(?:param|buffer)\s+\S+\s+(\[[^\]]*\])", result.stdout,
                      re.MULTILINE)
    total = re.search(r"^total parameters: ([\d,]+)", result.stdout, re.MULTILINE)
    assert total, result.stdout
    return rows, total.group(1)


def test_lenet_params():
    rows, total = listed_params(EXAMPLES / "lenet.kiln")
    assert rows == [
        ("features.0.weight", "[6, 1, 5, 5]"), ("features.0.bias", "[6]"),
        ("features.3.weight", "[16, 6, 5, 5]"), ("features.3.bias", "[16]"),
        ("classifier.0.weight", "[120, 400]"), ("classifier.0.bias", "[120]"),
        ("classifier.2.weight", "[84, 120]"), ("classifier.2.bias", "[84]"),
        ("classifier.4.weight", "[10, 84]"), ("classifier.4.bias", "[10]"),
    ]
    # conv 1*6*25 + 6, conv 6*16*25 + 16, fc 400*120 + 120, 120*84 + 84, 84*10 + 10
    by_hand = (150 + 6) + (2400 + 16) + (48000 + 120) + (10080 + 84) + (840 + 10)
    assert by_hand == 61706
    assert total == f"{by_hand:,}"


def test_mlp_params():
    rows, total = listed_params(EXAMPLES / "mlp.kiln")
    assert rows == [("0.weight", "[512, 784]"), ("0.bias", "[512]"), ("2.weight", "[512, 512]"),
                    ("2.bias", "[512]"), ("4.weight", "[10, 512]"), ("4.bias", "[10]")]
    assert total == f"{784 * 512 + 512 + 512 * 512 + 512 + 512 * 10 + 10:,}"  # 669,706
    _, total = listed_params(EXAMPLES / "mlp.kiln", "--arg", "hidden=256")
    assert total == f"{784 * 256 + 256 + 256 * 256 + 256 + 256 * 10 + 10:,}"
