"""The ONNX target: the exported model run by onnxruntime (CUDA or TensorRT where offered)."""

from __future__ import annotations

import numpy as np

from ..compiler.dims import DimError
from ..compiler.driver import Compilation, Weights
from ..compiler.errors import KilnError
from .model import CompiledModel, State

PREFERRED_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


def available_providers(requested: list[str] | None = None) -> list[str]:
    """The execution providers to use: those requested, else the best this onnxruntime has."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise KilnError(
            "K0602",
            "the onnx target needs onnxruntime, which is not installed",
            hint='pip install onnxruntime (in a kiln checkout: pip install ".[onnx]"), or '
                 'onnxruntime-gpu for CUDA and TensorRT',
        ) from None
    have = ort.get_available_providers()
    if requested:
        missing = [p for p in requested if p not in have]
        if missing:
            raise KilnError(
                "K0602",
                f"onnxruntime here has no {', '.join(missing)}",
                hint=f"available: {', '.join(have)}",
            )
        return list(requested)
    return [p for p in PREFERRED_PROVIDERS if p in have] or have


class OnnxModel(CompiledModel):
    """A model run by onnxruntime on its exported ONNX graph; `providers` says where."""

    target = "onnx"

    def __init__(self, compilation: Compilation, params: dict[str, np.ndarray],
                 providers: list[str] | None = None):
        super().__init__(compilation, params)
        self.providers = available_providers(providers)
        if not any(p.optional for p in self.model.inputs):  # now: export errors surface here
            self._session(self._state, self.model.present)
        # with optional inputs, each variant is exported when first called with that set

    def _session(self, state: State, present: frozenset[str] | tuple):
        """The exported model and its onnxruntime session for these weights and optional
        inputs (keyed `(present, "vjp")`: the gradient model for them), built once (however
        many threads ask)."""
        return self._builds.once(state.built, present,
                                 lambda: self._new_session(state.weights, present))

    def _new_session(self, weights: Weights, key: frozenset[str] | tuple):
        import onnxruntime as ort

        gradient = isinstance(key, tuple)
        export = self.compilation.onnx(weights, key[0] if gradient else key, gradient=gradient)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        session = ort.InferenceSession(export.proto.SerializeToString(), options,
                                       providers=self.providers)
        return export.model, session, export.checks

    def _rebound(self, old: State, params: dict[str, np.ndarray]) -> State:
        """New weights are new initializers: the sessions built so far are exported again now
        (under the lock, before the swap), so that calls after it do not wait for them."""
        new = super()._rebound(old, params)
        for present in old.built:
            self._session(new, present)
        return new

    def run(self, arrays, dims):
        return self._run_session(self._state, self._present(arrays), arrays, dims)

    def run_gradient(self, state, present, arrays, dims):
        return self._run_session(state, (present, "vjp"), arrays, dims)

    def _run_session(self, state: State, key: frozenset[str] | tuple,
                     arrays: dict[str, np.ndarray], dims: dict[str, int]) -> list[np.ndarray]:
        """Run the session `key` (see _session) on its inputs by name."""
        model, session, checks = self._session(state, key)
        # onnxruntime is never handed sizes that wrap
        self.check_sizes(key, model.graph, dims)
        feed = {p.name: _normal(arrays[p.name]) for p in model.inputs}
        names = [p.name for p in model.outputs]
        wanted = names + [output for output, _message, _span in checks]
        try:
            if any(p.type.dtype == "bf16" for p in [*model.inputs, *model.outputs]):
                results = _run_bf16(session, wanted, feed)
            else:
                results = session.run(wanted, feed)
        except _run_errors() as exc:  # its own limits or memory, past what kiln checks
            message = str(exc).split("Status Message: ")[-1].strip()
            raise KilnError("K0505", f"onnxruntime could not run this call: {message[:500]}",
                            hint="the message is onnxruntime's: where it ran out of memory "
                                 "or past its limits, call the model with smaller inputs; "
                                 "else the inputs are outside what the model takes (a "
                                 "reflect padding wider than the size it reflects)") from None
        for count, (_output, message, span) in zip(results[len(names):], checks, strict=True):
            if count:
                raise KilnError("K0505", message, span)
        for port, result in zip(model.outputs, results, strict=False):
            # a size kiln's type takes in range at run time (a slice's symbolic bound) that
            # these inputs put out of range: onnxruntime clamps it, the other targets refuse
            want = _concrete(port.type, dims)
            if want is not None and tuple(result.shape) != want:
                raise KilnError("K0505", f"with these inputs onnxruntime's result {port.name} "
                                f"has shape {list(result.shape)}, not {list(want)} as its "
                                f"type {port.type} says", getattr(port, "span", None),
                                hint="a size in the model is out of range for these inputs "
                                     "(the reference and native targets say where)")
        return results[:len(names)]


def _run_bf16(session, names: list[str], feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    """session.run for a graph with bf16 inputs or outputs, which onnxruntime's numpy bridge
    cannot convert (a RuntimeError): bf16 arrays cross as their 16-bit patterns."""
    import ctypes

    import ml_dtypes
    import onnx
    from onnxruntime import OrtValue

    bf16 = np.dtype(ml_dtypes.bfloat16)

    def value(array: np.ndarray) -> OrtValue:
        array = np.ascontiguousarray(array)
        if array.dtype == bf16:
            return OrtValue.ortvalue_from_numpy_with_onnx_type(array.view(np.uint16),
                                                                onnx.TensorProto.BFLOAT16)
        return OrtValue.ortvalue_from_numpy(array)

    def array(result: OrtValue) -> np.ndarray:
        if result.data_type() != "tensor(bfloat16)":
            return result.numpy()
        shape = result.shape()
        count = int(np.prod(shape, dtype=np.int64))
        bits = (np.ctypeslib.as_array((ctypes.c_uint16 * count).from_address(result.data_ptr()))
                .copy() if count else np.zeros(0, np.uint16))
        return bits.view(bf16).reshape(shape)

    keep = {k: value(v) for k, v in feed.items()}  # alive until the run is done
    return [array(r) for r in session.run_with_ort_values(names, keep)]



def _run_errors() -> tuple[type[Exception], ...]:
    """The exceptions onnxruntime raises for a run it cannot complete (out of memory, a size
    past its own limits): a KilnError to the caller, as on the other targets."""
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    names = ("Fail", "InvalidArgument", "RuntimeException", "EPFail")
    return tuple(getattr(state, n) for n in names if hasattr(state, n))


def _concrete(t, dims: dict[str, int]) -> tuple[int, ...] | None:
    """A result type's shape at these sizes (None where it names a size they lack)."""
    try:
        return t.concrete_shape(dims)
    except DimError:
        return None


def _normal(array: np.ndarray) -> np.ndarray:
    """The array onnxruntime may be given: a bool whose byte is not 0 or 1 (made by a view of
    bytes; true to numpy) becomes a 1, as the reference and native code read it; onnxruntime's
    Not, Equal and Cast use the byte itself."""
    if array.dtype == np.bool_ and array.size:
        return array.view(np.uint8) != 0
    return array
