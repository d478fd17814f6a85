"""`kiln compile --report --train`: the train step's kernels and its peak memory per step."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from _clitest import run

import kiln
from kiln.compiler.passes.memory import aligned_bytes, place
from kiln.train.report import ROLES, step_memory

MLP = Path(__file__).resolve().parent.parent / "examples" / "mlp.kiln"


def value(d, b: int) -> int:
    return d.evaluate({"B": b})


@pytest.mark.parametrize("optimizer, slots", [(kiln.optim.Adam(), 2), (kiln.optim.SGD(lr=0.1), 0),
                                              (kiln.optim.SGD(lr=0.1, momentum=0.9), 1)])
def test_inputs_and_outputs_are_the_weights_state_and_batch(optimizer, slots):
    trainer = kiln.Trainer(MLP, args={"hidden": 16}, optimizer=optimizer)
    _, memory = step_memory(trainer)
    weights = sum(a.nbytes for a in trainer.params.values())
    for b in (1, 7):
        assert value(memory.inputs[ROLES[0]], b) == weights
        assert value(memory.inputs[ROLES[1]], b) == slots * weights
        # x: f32[B, 784], the class indices i64[B], the learning rate and step (f64)
        assert value(memory.inputs[ROLES[2]], b) == b * (784 * 4 + 8) + 16
        assert value(memory.outputs[ROLES[0]], b) == weights
        assert value(memory.outputs[ROLES[1]], b) == slots * weights
        assert value(memory.outputs[ROLES[2]], b) == 4 + 4 * 6  # the loss, six gradient norms


def test_planned_peak_bounds_the_workspace_the_native_step_lays_out():
    trainer = kiln.Trainer(MLP, args={"hidden": 16})
    lowered, memory = step_memory(trainer)
    buffers = lowered.graph.memory.buffers
    for b in (1, 5, 64):
        _, workspace = place([(x.type, x.born, x.dies) for x in buffers], {"B": b})
        peak = max(value(p, b) for p in memory.peak)
        assert peak <= workspace <= sum(aligned_bytes(x.type, {"B": b}) for x in buffers)
        assert max(value(t, b) for t in memory.total()) == peak + sum(
            value(d, b) for d in (*memory.inputs.values(), *memory.outputs.values()))


def test_forward_values_kept_for_the_backward_grow_with_the_batch():
    _, memory = step_memory(kiln.Trainer(MLP, args={"hidden": 16}))
    # each example keeps at least the two hidden layers' activations (16 f32 each), which
    # the weight gradients of the next layers read
    assert value(memory.saved, 2) - value(memory.saved, 1) >= 2 * 16 * 4


def test_cli_reports_the_train_step(capsys, tmp_path):
    code, out, err = run(capsys, "compile", MLP, "--arg", "hidden=16", "-o", tmp_path / "m.so",
                         "--report", "--train", "--loss", "cross_entropy", "--optimizer", "sgd")
    assert code == 0, err
    assert "train step of MLP (loss cross_entropy, SGD, target i64[B])" in out
    assert "peak memory of one train step" in out
    assert "kept by the forward pass for the backward pass" in out
    assert np.char.count(out, "planned peak activation memory") == 2  # model, then step


def test_train_needs_report(capsys, tmp_path):
    code, _, err = run(capsys, "compile", MLP, "-o", tmp_path / "m.so", "--train")
    assert code != 0 and "K0602" in err and "--report" in err
