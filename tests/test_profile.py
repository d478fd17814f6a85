"""`model.profile(...)` and `kiln profile`: native kernels timed, tied to the model's lines."""

from __future__ import annotations

import numpy as np
import pytest
from _clitest import run

import kiln
from kiln.compiler.errors import KilnError

SRC = """\
import std.nn as nn

model Net {
  fc1 = nn.Linear(16, 32)
  fc2 = nn.Linear(32, 4)
  forward(x: f32[B, 16]) -> f32[B, 4] {
    h = relu(fc1(x))
    return softmax(fc2(h), axis = -1)
  }
}
"""


def test_a_profile_times_every_kernel_and_ties_it_to_source_lines(tmp_path):
    path = tmp_path / "net.kiln"
    path.write_text(SRC)
    model = kiln.compile(path, seed=0)
    x = np.random.default_rng(0).standard_normal((8, 16)).astype(np.float32)
    before = model(x)
    prof = model.profile(x, repeat=3)
    kernels = model.lowered().graph
    ops = [n for n in kernels.order() if kernels.op(n) not in ("input", "param", "constant")]
    assert len(prof.kernels) == len(ops) and [k.index for k in prof.kernels] == list(
        range(1, len(ops) + 1))
    assert all(k.seconds > 0 for k in prof.kernels) and prof.wall > 0
    assert prof.sizes == {"B": 8} and prof.calls == 3
    # the two GEMMs: their multiply-adds, and the user's lines (not the standard library's)
    gemms = [k for k in prof.kernels if k.macs]
    assert sorted(k.macs for k in gemms) == [8 * 32 * 4, 8 * 16 * 32]
    lines = {s for k in prof.kernels for s in k.sources}
    assert "net.kiln:7" in lines and "net.kiln:8" in lines
    assert not any("<std>" in s for s in lines)
    table = str(prof)
    assert "total (kernels)" in table and "net.kiln:7" in table and "GFLOP/s" in table
    np.testing.assert_array_equal(model(x), before)  # the timed build is a build of its own


def test_profile_refuses_what_it_cannot_time(tmp_path):
    model = kiln.compile(SRC, seed=0)
    x = np.zeros((2, 16), np.float32)
    with pytest.raises(KilnError) as info:
        model.profile(x, repeat=0)
    assert info.value.code == "K0602"
    with pytest.raises(KilnError) as info:
        model.profile(np.zeros((2, 15), np.float32))  # inputs are checked as for a call
    assert info.value.code.startswith("K05")


def test_kiln_profile_prints_the_table(tmp_path, capsys):
    path = tmp_path / "net.kiln"
    path.write_text(SRC)
    code, out, err = run(capsys, "profile", path, "--bind", "B=4", "--repeat", 2, "--top", 2)
    assert code == 0, err
    rows = [line for line in out.splitlines() if line[:4].strip().isdigit()]
    assert len(rows) == 2  # --top 2
    assert "Net (B=4)" in out and "whole call" in out
    code, _out, err = run(capsys, "profile", path, "--repeat", 0)
    assert code == 1 and "K0602" in err


RNN = """\
import std.rnn
model R {
  gru = rnn.GRU(12, 20)
  forward(x: f32[T, B, 12]) -> f32[T, B, 20] {
    y, h = gru(x)
    return relu(y)
  }
}
"""


def test_a_scans_body_kernels_are_timed_under_it(tmp_path, monkeypatch):
    """Each kernel of a scan's body has a row of its own (depth 1), right after the scan's,
    its time summed over the steps and its multiply-adds its step's times the steps; the
    total counts the scan once. A second build from the graph cache gives the same rows."""
    monkeypatch.setenv("KILN_CACHE_DIR", str(tmp_path / "cache"))
    rng = np.random.default_rng(1)
    x = rng.standard_normal((7, 3, 12)).astype(np.float32)
    rows = []
    for _ in range(2):  # cold, then the profiling build's code from the graph cache
        prof = kiln.compile(RNN, seed=0).profile(x, repeat=2)
        rows.append([(k.kernel, k.depth, k.macs) for k in prof.kernels])
        scan = next(i for i, k in enumerate(prof.kernels) if k.kernel == "scan")
        body = list(prof.kernels[scan + 1:])
        body = body[:next((i for i, k in enumerate(body) if k.depth == 0), len(body))]
        assert len(body) >= 2 and all(k.depth == 1 for k in body)
        assert [k.index for k in prof.kernels] == list(range(1, len(prof.kernels) + 1))
        step_gemm = next(k for k in body if k.macs)  # h @ W_hh^T: [3, 20] @ [20, 60], 7 steps
        assert step_gemm.macs == 7 * 3 * 20 * 60
        assert prof.kernels[scan].macs == step_gemm.macs
        assert sum(k.seconds for k in body) <= prof.kernels[scan].seconds
        assert prof.total == pytest.approx(sum(k.seconds for k in prof.kernels
                                               if k.depth == 0))
        assert "· " in str(prof) and "within the scan's" in str(prof)
    assert rows[0] == rows[1]
