"""Calls of primitive ops: a call's arguments bound to the op record's signature, numbers made
constants and operands promoted to one dtype, elementwise ops on compile-time numbers folded, and
the op's node added to the graph being built."""

from __future__ import annotations

import numpy as np

from ..dims import Dim, facts_equating, know
from ..errors import KilnError, Span
from ..ops import REGISTRY, OpError, Prop
from ..ops.registry import OpRecord
from ..ops.signature import bind_arguments, tensor_slot_names
from ..types import NUMPY_DTYPES, TensorType, dtype_of_numpy, promote
from .graphs import GraphFrames
from .training import TrainingContext
from .values import Absent, Poison, Poisoned, Tensor, describe, is_scalar


class OpCalls:
    """Adds op nodes to the graphs of `frames`; holds no state of its own."""

    def __init__(self, frames: GraphFrames) -> None:
        self.frames = frames
        self.training: TrainingContext | None = None  # the elaborator's, once it has one

    def call_op(self, rec: OpRecord, args: list, kwargs: dict, span: Span):
        """Bind arguments to an op's signature, check them, and add its node to the graph."""
        values = bind_arguments(rec, args, kwargs, span)
        if any(isinstance(v, Poison) for v, _ in values.values()):
            raise Poisoned()
        tensor_slots = self.op_tensor_inputs(rec, values, span)
        attrs = {}
        for p in rec.args:
            if p.kind == "attr":
                v, sp = values[p.name]
                if _contains_tensor(v):
                    raise KilnError(
                        "K0203",
                        f"{rec.name}: argument {p.name} must be known at compile time, "
                        f"but it is {describe(v)}",
                        sp,
                    )
                attrs[p.name] = v
        # an elementwise op on compile-time numbers is computed now: sqrt(5), exp(1.0)
        if (
            rec.has(Prop.ELEMENTWISE)
            and tensor_slots
            and all(is_scalar(v) for v, _ in tensor_slots if v is not None)
        ):
            return self.fold_scalar_op(rec, tensor_slots, attrs, span)
        inputs = self.promote_inputs(rec, tensor_slots, span)
        if rec.training is not None and attrs.get("training") is True and self.training:
            outs = self.training_call(rec, inputs, attrs, span)
            return tuple(outs) if rec.has(Prop.MULTI_OUTPUT) else outs[0]
        types = [t.type if t is not None else None for t in inputs]
        try:
            out_types = rec.infer(types, attrs)
        except OpError as err:
            # a shape error belongs to the whole call; a bad attribute or dtype to its argument
            where = values[err.arg][1] if err.arg in values and err.code != "K0301" else span
            hint = where_hint(_aligned_sizes(types)) if err.code == "K0301" else None
            raise KilnError(err.code, f"{rec.name}: {err.message}", where, hint) from None
        outs = self.frames.add_node(rec.name, inputs, attrs, out_types, span)
        return tuple(outs) if rec.has(Prop.MULTI_OUTPUT) else outs[0]

    def training_call(self, rec: OpRecord, inputs: list, attrs: dict, span: Span
                      ) -> list[Tensor]:
        """The results of an op called with `training = true`, built by its record's training
        rule (elaborate/training.py)."""
        self.frames.budget.count_node(span)
        graph = self.frames.current.graph
        try:
            with self.training.call(self.frames.located(span)) as ctx:
                outs = rec.training(ctx, [None if t is None else t.value for t in inputs],
                                    attrs)
        except OpError as err:
            raise KilnError(err.code, f"{rec.name}: {err.message}", span) from None
        return [Tensor(v, graph) for v in outs]

    def op_tensor_inputs(self, rec, values: dict, span: Span) -> list:
        """The tensor-kind arguments in signature order, as (value, span) or None."""
        out: list = []
        for p in rec.args:
            v, sp = values[p.name]
            if p.kind == "tensor":
                if v is None or isinstance(v, Absent):
                    raise KilnError("K0201", f"{rec.name}: argument {p.name} needs a tensor", sp)
                out.append((v, sp))
            elif p.kind == "tensor?":
                out.append(None if v is None or isinstance(v, Absent) else (v, sp))
            elif p.kind == "tensors":
                if not isinstance(v, (list, tuple)) or not v:
                    raise KilnError(
                        "K0202",
                        f"{rec.name}: argument {p.name} must be a list of tensors, "
                        f"not {describe(v)}",
                        sp,
                    )
                out.extend((item, sp) for item in v)
        for item in out:
            if item is not None and not isinstance(item[0], (Tensor, Dim, bool, int, float)):
                raise KilnError(
                    "K0202",
                    f"{rec.name}: expected a tensor or a number, not {describe(item[0])}",
                    item[1],
                )
        return out

    def promote_inputs(self, rec, slots: list, span: Span) -> list:
        """Turn numbers into constants and cast the promoted operands to one dtype.

        Python numbers are weak, as in PyTorch: they adopt the tensors' dtype, except that a
        float meeting only ints or bools makes f32.
        """
        names = tensor_slot_names(rec, len(slots))
        joined = [
            s for s, n in zip(slots, names, strict=False) if s is not None and rec.promoted(n)
        ]
        target = None
        if joined:
            dtypes = [v.type.dtype for v, _ in joined if isinstance(v, Tensor)]
            weak = [v for v, _ in joined if not isinstance(v, Tensor)]
            target = dtypes[0] if dtypes else _scalar_dtype(weak[0])
            for d in dtypes[1:]:
                target = promote(target, d)
            if any(isinstance(w, float) for w in weak) and target in ("bool", "i32", "i64"):
                target = "f32"
            elif any(_scalar_dtype(w) == "i64" for w in weak) and target == "bool":
                target = "i64"
        out = []
        for slot, name in zip(slots, names, strict=False):
            if slot is None:
                out.append(None)
                continue
            v, sp = slot
            want = target if rec.promoted(name) else None
            t = self.as_tensor(v, sp, want)
            if want is not None and t.type.dtype != want:
                t = self.cast(t, want, sp)
            out.append(t)
        return out

    def fold_scalar_op(self, rec, slots, attrs, span):
        """Compute an elementwise op on compile-time numbers, in double precision."""
        from ..evaluate import ConstEnv

        def run(as_float: bool):
            arrays = []
            for slot in slots:
                v = None if slot is None else slot[0]
                if v is None:
                    arrays.append(None)
                elif isinstance(v, bool):
                    arrays.append(np.asarray(v))
                elif isinstance(v, float) or as_float:
                    arrays.append(np.asarray(v, dtype=np.float64))
                else:
                    arrays.append(
                        np.asarray(int(v) if not isinstance(v, Dim) else v.value, dtype=np.int64)
                    )
            names = tensor_slot_names(rec, len(arrays))
            if any(a is not None and a.dtype == np.float64 for a in arrays):
                arrays = [
                    a.astype(np.float64)
                    if a is not None and rec.promoted(n) and a.dtype != np.bool_
                    else a
                    for a, n in zip(arrays, names, strict=False)
                ]
            types = [None if a is None else TensorType(dtype_of_numpy(a.dtype), ()) for a in arrays]
            rec.infer(types, attrs)
            return rec.reference(ConstEnv(), arrays, attrs)[0]

        try:
            try:
                result = run(False)
            except OpError as err:
                if err.code != "K0302":
                    raise
                result = run(True)
        except OpError as err:
            raise KilnError(err.code, f"{rec.name}: {err.message}", span) from None
        result = np.asarray(result)
        if result.dtype == np.bool_:
            return bool(result)
        if result.dtype.kind in "iu":
            return int(result)
        return float(result)

    def as_tensor(self, v, span: Span, dtype: str | None = None) -> Tensor:
        """A value as a tensor of the current graph: numbers and sizes become constants."""
        if isinstance(v, Tensor):
            return self.frames.use(v)
        if isinstance(v, Dim) and not v.is_const:
            (out,) = self.frames.add_node(
                "dim_value", [], {"dim": v}, [TensorType("i64", ())], span
            )
            return out
        if isinstance(v, Dim):
            v = v.value
        if is_scalar(v):
            dt = dtype or _scalar_dtype(v)
            return self.constant(np.asarray(v, dtype=NUMPY_DTYPES[dt]), span)
        if isinstance(v, Poison):
            raise Poisoned()
        if isinstance(v, Absent):
            raise KilnError(
                "K0201",
                "this optional value is absent here",
                span,
                hint="test it with defined(name) before using it",
            )
        raise KilnError("K0202", f"expected a tensor, not {describe(v)}", span)

    def cast(self, t: Tensor, dtype: str, span: Span) -> Tensor:
        return self.call_op(REGISTRY["cast"], [(t, span)], {"dtype": (dtype, span)}, span)

    def constant(self, array: np.ndarray, span: Span) -> Tensor:
        dt = dtype_of_numpy(array.dtype)
        if dt is None:
            raise KilnError("K0302", f"unsupported constant dtype {array.dtype}", span)
        (out,) = self.frames.add_node(
            "constant", [], {"value": array}, [TensorType(dt, array.shape)], span
        )
        return out


def _scalar_dtype(v) -> str:
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, (int, Dim)):
        return "i64"
    return "f32"


def where_hint(pairs) -> str | None:
    """A hint naming the `where X % k == 0` facts under which each pair of sizes would agree
    (a U-Net's 4*(H//4) and H), or None."""
    facts: dict[str, int] = {}
    for a, b in pairs:
        for x, k in (facts_equating(Dim.of(a), Dim.of(b)) or {}).items():
            know(facts, x, k)
    if not facts:
        return None
    text = ", ".join(f"{x} % {k} == 0" for x, k in sorted(facts.items()))
    return f"the sizes agree when {text}: state it on the model's forward, `where {text}`"


def _aligned_sizes(types) -> list[tuple[Dim, Dim]]:
    """Pairs of different sizes on the same axis (counted from the last) of an op's operands."""
    shapes = [t.shape for t in _flat_types(types)]
    pairs = []
    for i, s in enumerate(shapes):
        for other in shapes[i + 1 :]:
            pairs += [(a, b) for a, b in zip(reversed(s), reversed(other)) if a != b]
    return pairs


def _flat_types(types) -> list[TensorType]:
    out = []
    for t in types:
        out += _flat_types(t) if isinstance(t, (list, tuple)) else [t] if t is not None else []
    return out


def _contains_tensor(v) -> bool:
    if isinstance(v, Tensor):
        return True
    if isinstance(v, (list, tuple)):
        return any(_contains_tensor(x) for x in v)
    return False

