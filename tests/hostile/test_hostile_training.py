"""Hostile inputs to training: checkpoints that are not what they claim (garbage, a header
declaring more than the file holds, a FIFO), and labels far outside the classes, in a child
process where a crash or a hang would otherwise take the test run with it."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from _hostile import assert_kiln_error, run_child

import kiln
from kiln import KilnError

NET = ("import std.nn\nmodel Net {\n  forward(x: f32[B, 4]) -> f32[B, 3] "
       "{ return x |> nn.Linear(4, 3) }\n}\n")


@pytest.fixture
def net(tmp_path):
    path = tmp_path / "net.kiln"
    path.write_text(NET)
    return path


def _lying_header(path):
    """A safetensors file whose header declares a tensor of 2**40 bytes it does not hold."""
    header = json.dumps({"w": {"dtype": "F32", "shape": [2**38], "data_offsets": [0, 2**40]},
                         "__metadata__": {"kiln_trainer": "{}"}}).encode()
    path.write_bytes(len(header).to_bytes(8, "little") + header + b"\0" * 16)


def test_broken_checkpoints_are_kiln_errors(net, tmp_path):
    files = [tmp_path / f"{name}.safetensors" for name in ("garbage", "empty", "lying")]
    files[0].write_bytes(b"\xff" * 64)
    files[1].write_bytes(b"")
    _lying_header(files[2])
    outcome = run_child(f"""
        import kiln
        trainer = kiln.Trainer({str(net)!r})
        for path in {[str(f) for f in files]!r}:
            try:
                trainer.load_checkpoint(path)
                print("loaded", path)
            except kiln.KilnError as e:
                print("KilnError", e.code)
        """, timeout=120)
    assert_kiln_error(outcome, "K0838")
    assert outcome.stdout.count("KilnError K0838") == 3, outcome.stdout


def test_a_fifo_as_checkpoint_does_not_hang(net, tmp_path):
    fifo = tmp_path / "ckpt.safetensors"
    os.mkfifo(fifo)
    with pytest.raises(KilnError) as err:
        kiln.Trainer(net).load_checkpoint(fifo)
    assert err.value.code == "K0838"


def test_labels_outside_the_classes_never_reach_native_code(net):
    outcome = run_child(f"""
        import numpy as np, kiln
        trainer = kiln.Trainer({str(net)!r}, loss="cross_entropy")
        try:
            trainer.step(np.zeros((2, 4), np.float32), np.array([0, 2**62], np.int64))
        except kiln.KilnError as e:
            print("KilnError", e.code)
        """, timeout=120)
    assert_kiln_error(outcome, "K0835")


@pytest.mark.parametrize("labels", [np.array([2**63], np.uint64), np.array([-(2**62)]),
                                    np.array([3], np.int8)], ids=["u64", "negative", "i8"])
def test_labels_of_any_integer_dtype_are_checked(net, labels):
    trainer = kiln.Trainer(net, loss="cross_entropy")
    with pytest.raises(KilnError) as err:
        trainer.step(np.zeros((1, 4), np.float32), labels)
    assert err.value.code == "K0835"
