"""ONNX's own backend node tests (issue 17), run through kiln's ONNX converters: every case
passes or is reported unsupported with its reason; a wrong answer or an exception fails.

The reference target runs every case (about a minute); the native target, whose compilation
costs up to a few seconds per case on 2 cores, runs a deterministic sample of NATIVE_PER_OP
case per op in CI (about a minute more). KILN_ONNX_NODE_TESTS=full runs every case natively
too (far longer: the expanded Attention cases alone compile for seconds each). The pass table
per op is docs/onnx-node-tests.md, written by `python benchmarks/onnx_node_table.py`.
"""

from __future__ import annotations

import os

import pytest
from _onnxnodetests import kiln_types_only, node_cases, op_of, run_case, sample

NATIVE_PER_OP = 1
ALLOWED = ("pass", "unsupported", "imprecise")

ALL_CASES = node_cases()
NATIVE_CASES = [c for c in ALL_CASES if kiln_types_only(c)]
if os.environ.get("KILN_ONNX_NODE_TESTS") != "full":
    NATIVE_CASES = sample(NATIVE_CASES, NATIVE_PER_OP)


def _id(case) -> str:
    return case.name.removeprefix("test_")


@pytest.mark.parametrize("case", ALL_CASES, ids=_id)
def test_reference(case):
    outcome = run_case(case, "reference")
    assert outcome.status in ALLOWED, f"{case.name} ({op_of(case)}): {outcome.reason}"


@pytest.mark.parametrize("case", NATIVE_CASES, ids=_id)
def test_native(case):
    outcome = run_case(case, "native")
    assert outcome.status in ALLOWED, f"{case.name} ({op_of(case)}): {outcome.reason}"


def test_unsupported_says_why():
    """A case kiln cannot run names what it lacks: an op, attribute value or element type."""
    (case,) = [c for c in ALL_CASES if c.name == "test_dft_inverse"]
    outcome = run_case(case, "reference")
    assert outcome.status == "unsupported"
    assert "DFT" in outcome.reason and "two-sided inverse" in outcome.reason


def test_wrong_answer_fails():
    """The judge is not vacuous: a case whose expected output is altered fails."""
    import copy

    import numpy as np

    (case,) = [c for c in ALL_CASES if c.name == "test_relu"]
    inputs, outputs = case.data_sets[0]
    altered = copy.copy(case)
    object.__setattr__(altered, "data_sets", [(inputs, [np.asarray(outputs[0]) + 1e-3])])
    assert run_case(altered, "reference").status == "fail"
