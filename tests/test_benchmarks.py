"""The benchmark scripts measure what they say: one configuration of benchmarks/models.py runs
end to end (native and onnxruntime on the same inputs, optional inputs included), with short
rounds. Timings are printed, never asserted."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytest.importorskip("onnxruntime", reason="the benchmarks compare against onnxruntime")


def _models_script():
    spec = importlib.util.spec_from_file_location("kiln_bench_models",
                                                  ROOT / "benchmarks" / "models.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.WARM_UP, module.ROUND, module.SETTLE, module.ROUNDS = 0.0, 0.0, 0.0, 1
    return module


@pytest.mark.parametrize("name", ["mlp", "transformer_classifier"])  # the latter: an optional input
def test_one_configuration_measures_native_and_onnxruntime(name):
    models = _models_script()
    got = models.measure(ROOT / "examples" / f"{name}.kiln", batch=2, threads=1, repeat=2,
                         with_ref=True)
    assert got["reason"] is None
    assert all(got[k] is not None and got[k] > 0 for k in ("native", "ort", "ref")), got


# (twin, batch, the largest difference allowed relative to the outputs' magnitude): f32
# rounding gives 1e-7 to 4e-6 here (ResNet-18's Winograd convolutions the most), a wrong weight,
# bias or BatchNorm statistic 0.1 to 1
TWIN_TOLERANCES = [("gru", 2, 1e-5), ("mlp", 2, 1e-5), ("lenet", 2, 1e-5),
                   ("resnet18", 1, 5e-5), ("gcn", 1, 1e-5), ("dcgan", 2, 5e-5)]


@pytest.mark.parametrize(("name", "batch", "rtol"), TWIN_TOLERANCES)
def test_pytorch_twins_are_one_model(name, batch, rtol):
    """`models.py --pytorch` compares like with like: kiln's export of each twin gives what
    PyTorch computes from the same weights, and both exports are timed."""
    pytest.importorskip("torch", reason="the twins are PyTorch modules")
    models = _models_script()
    got = models.measure_twin(name, batch=batch, threads=1, repeat=1)
    assert max(got["diff"], got["native_diff"]) < rtol * got["scale"], got
    assert got["native"] > 0 and got["kiln"] > 0 and got["torch"] > 0, got


def test_precision_configuration_times_both_and_gives_the_error():
    """`models.py --precision bf16`: f32 and bf16 native on the same inputs, and the error;
    on a CPU without AVX512_BF16 the configuration reports K0971 instead."""
    from kiln.compiler.codegen.llvm import bf16
    from kiln.compiler.codegen.llvm import target as targets

    got = _models_script().measure_precision(ROOT / "examples" / "mlp.kiln", batch=2,
                                             threads=1, repeat=2, precision="bf16")
    if bf16.FEATURE not in targets.host().feature_set:
        assert got["reason"].startswith("bf16: K0971"), got
        return
    assert got["reason"] is None and got["f32"] > 0 and got["low"] > 0, got
    assert 0 < got["error"] < 5e-2, got  # rounded (not f32), within the examples' bound


def test_depthwise_script_times_both_kiln_paths_and_onnxruntime(tmp_path, monkeypatch):
    """benchmarks/depthwise.py: the direct kernel and the GEMM path (each built into a cache
    of its own) agree, and both are timed beside onnxruntime; the switch is put back."""
    from kiln.compiler.codegen.llvm import depthwise

    spec = importlib.util.spec_from_file_location("kiln_bench_depthwise",
                                                  ROOT / "benchmarks" / "depthwise.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    monkeypatch.setenv("KILN_CACHE_DIR", str(tmp_path / "cache"))
    taps = depthwise.MAX_TAPS
    got = script.measure(16, 12, 5, 2, batch=2, threads=1, repeat=1, tmp=tmp_path)
    assert all(t > 0 for t in got) and depthwise.MAX_TAPS == taps


def test_pass_ab_script_times_both_builds_and_puts_the_pipeline_back(monkeypatch):
    """benchmarks/pass_ab.py: the Transformer twin built without strided_products runs more
    kernels and computes the same (bit for bit: its scale is a power of two), both builds are
    timed, and the native pipeline is whole again afterwards."""
    from kiln.compiler.codegen.llvm.pipeline import NATIVE_PIPELINE

    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))  # its `from models import ...`
    spec = importlib.util.spec_from_file_location("kiln_bench_pass_ab",
                                                  ROOT / "benchmarks" / "pass_ab.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    whole = list(NATIVE_PIPELINE)
    got = script.compare("transformer", batch=1, threads=1, without=["strided_products"],
                         rounds=1, seconds=0.0)
    assert NATIVE_PIPELINE == whole
    assert got["diff"] == 0.0 and got["kernels"][0] > got["kernels"][1], got
    assert got["without"] > 0 and got["with"] > 0, got
    # a model file, its arguments and random inputs of the sizes bound: the GPT example's
    # masked attention, one kernel per layer with the pass
    got = script.compare(str(ROOT / "examples" / "gpt.kiln"), 0, threads=1,
                         without=["strided_products"], rounds=1, seconds=0.0,
                         args={"n_layer": 1}, binds=["B=2", "T=9"])
    assert NATIVE_PIPELINE == whole
    assert got["diff"] < 1e-5 and got["kernels"][0] > got["kernels"][1], got
