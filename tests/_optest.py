"""Test helpers for op records: run an op's shape rule and its numpy reference side by side.

`run(op, *tensors, **kw)` infers the output types from the inputs, runs the reference, and asserts
that every output has exactly the inferred dtype and the inferred shape (evaluated with `env`).
"""

from __future__ import annotations

import numpy as np
import pytest
from _tolerance import assert_agree

from kiln.compiler.dims import Dim
from kiln.compiler.ops import REGISTRY, REQUIRED, OpError
from kiln.compiler.types import NUMPY_DTYPES, TensorType, dtype_of_numpy


class RefEnv:
    """What a reference may ask of its interpreter: the runtime value of a symbolic size."""

    def __init__(self, bindings: dict[str, int] | None = None):
        self.bindings = dict(bindings or {})

    def eval_dim(self, d: Dim | int) -> int:
        return Dim.of(d).evaluate(self.bindings)

    def run_graph(self, graph, inputs):
        raise NotImplementedError("op tests run no subgraphs")


def type_of(x: np.ndarray) -> TensorType:
    return TensorType(dtype_of_numpy(x.dtype), x.shape)


def bind(op: str, args: tuple, kwargs: dict):
    """Split positional and keyword arguments into the record's tensor inputs and attributes."""
    record = REGISTRY[op]
    inputs: list = []
    attrs: dict = {}
    positional = list(args)
    for arg in record.args:
        if positional:
            value = positional.pop(0)
        elif arg.name in kwargs:
            value = kwargs.pop(arg.name)
        elif arg.default is REQUIRED:
            raise TypeError(f"{op}: missing argument {arg.name}")
        else:
            value = arg.default
        if arg.kind == "attr":
            attrs[arg.name] = value
        elif arg.kind == "tensors":
            inputs.extend(value)
        else:
            inputs.append(value)
    if kwargs or positional:
        raise TypeError(f"{op}: unexpected arguments {kwargs or positional}")
    return record, inputs, attrs


def infer(op: str, *args, **kwargs) -> list[TensorType]:
    """The op's output types for input TensorTypes (tensor arguments) and attributes."""
    record, types, attrs = bind(op, args, kwargs)
    return record.infer(types, attrs)


def infer1(op: str, *args, **kwargs) -> TensorType:
    (out,) = infer(op, *args, **kwargs)
    return out


def run(op: str, *args, env: dict[str, int] | None = None, types=None, **kwargs):
    """Run infer then reference on numpy inputs; check the outputs against the inferred types.

    `types` overrides the input types (e.g. symbolic shapes, bound at run time by `env`).
    Returns the single output, or the list of outputs.
    """
    record, inputs, attrs = bind(op, args, kwargs)
    in_types = types if types is not None else [None if x is None else type_of(x) for x in inputs]
    out_types = record.infer(in_types, attrs)
    outs = record.reference(RefEnv(env), inputs, attrs)
    assert len(outs) == len(out_types)
    for out, t in zip(outs, out_types, strict=False):
        assert isinstance(out, np.ndarray), f"{op} returned {type(out)}"
        assert out.shape == t.concrete_shape(env), (op, out.shape, str(t))
        assert out.dtype == t.np_dtype, (op, out.dtype, str(t))
    return outs[0] if len(outs) == 1 else outs


def assert_close(op: str, actual, expected, dtype: str | None = None) -> None:
    """`actual` (op's result) agrees with an oracle's `expected` (any dtype, e.g. f64) within
    tests/_tolerance.py's tolerance for `op` in `dtype` (default: the actual array's)."""
    actual = np.asarray(actual)
    assert_agree(actual, np.asarray(expected), op, dtype=dtype or dtype_of_numpy(actual.dtype),
                 same_type=False)


def raises(code: str, op: str, *args, arg: str | None = None, match: str | None = None,
           **kwargs) -> OpError:
    """Assert that infer raises OpError with `code` (and `arg`, and a message matching)."""
    with pytest.raises(OpError, match=match) as info:
        infer(op, *args, **kwargs)
    assert info.value.code == code, info.value.message
    if arg is not None:
        assert info.value.arg == arg, info.value.arg
    assert not info.value.message.startswith(op + ":")
    return info.value


def T(shape, dtype: str = "f32") -> TensorType:
    """A TensorType from a shape of ints and symbol names (`T(["B", 10])`)."""
    return TensorType(dtype, tuple(Dim.of(d) for d in shape))


def rand(*shape, dtype: str = "f32", seed: int = 0, low: float = -2.0, high: float = 2.0):
    rng = np.random.default_rng(seed)
    if dtype == "bool":
        return rng.random(shape) < 0.5
    if dtype in ("i32", "i64"):
        return rng.integers(int(low), int(high) + 1, size=shape).astype(NUMPY_DTYPES[dtype])
    return rng.uniform(low, high, size=shape).astype(NUMPY_DTYPES[dtype])
