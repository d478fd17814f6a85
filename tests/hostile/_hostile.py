"""Helpers for attacks whose failure is a signal or a hang: run them in a child process."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass

import numpy as np


@dataclass
class Outcome:
    """How a child process ended: its exit status (negative: killed by that signal)."""

    returncode: int
    stdout: str
    stderr: str
    timed_out: bool

    @property
    def crashed(self) -> bool:
        return self.returncode < 0


def run_child(code: str, timeout: float = 120, env: dict | None = None) -> Outcome:
    """Run Python `code` in a fresh interpreter (the test's compile cache and environment),
    with a wall-clock limit; a hang is reported as timed_out, never as a passing test."""
    child_env = {**os.environ, **(env or {})}
    try:
        proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                              text=True, timeout=timeout, env=child_env, check=False)
    except subprocess.TimeoutExpired as exc:
        return Outcome(-9, exc.stdout or "", exc.stderr or "", True)
    return Outcome(proc.returncode, proc.stdout, proc.stderr, False)


def assert_kiln_error(outcome: Outcome, code: str | None = None) -> None:
    """The child ended by a KilnError (printed as `KilnError <code>` by the snippet), not by a
    signal, a hang or another exception."""
    assert not outcome.timed_out, f"hung:\n{outcome.stderr[-2000:]}"
    assert not outcome.crashed, f"killed by signal {-outcome.returncode}:\n{outcome.stderr[-2000:]}"
    want = f"KilnError {code}" if code else "KilnError"
    assert want in outcome.stdout, f"stdout: {outcome.stdout[-2000:]}\nstderr: {outcome.stderr[-2000:]}"


def random_weights(model, seed: int = 1) -> dict:
    """New values for every weight of `model`, by path, of its dtypes and shapes (BatchNorm
    variances positive, as real ones are)."""
    rng = np.random.default_rng(seed)
    w = {k: rng.standard_normal(v.shape).astype(v.dtype) for k, v in model.state_dict().items()}
    for k in w:
        if k.endswith("running_var"):
            w[k] = np.abs(w[k]) + 0.5
    return w
