"""Builder-first helpers for writing LLVM IR (after numba's cgutils): each takes the llvmlite
IRBuilder `b` first and emits at its position.

- sizes: `i64` constants, `smaller` (a signed minimum), `element` (array[index]), `product`
  of Dims;
- loops: `for_range` (a counted loop), `loop` (one with loop-carried values and, for loops that
  advance by a run-time amount, `advance`), `fold` (a loop that only carries values);
- memory: `memcpy`, `memset` (the LLVM intrinsics, which LLVM turns into inline stores for
  small constant sizes);
- vectors: `Vectors`, <width x float> loads, stores, masks, FMAs and gathers.

Loops take a `name` (their blocks are name.head, name.body, name.done) and an `index` name,
so the IR of a kernel says which loop is which.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Sequence

from llvmlite import ir

from ...dims import Dim
from .abi import F32, F32P, I1, I8, I32, I64, PTR, VOID


# sizes -------------------------------------------------------------------------------------
def i64(value: int | ir.Value) -> ir.Value:
    """An i64 constant (a value already in IR is returned as it is)."""
    return value if isinstance(value, ir.Value) else ir.Constant(I64, value)


def smaller(b: ir.IRBuilder, x: ir.Value, y: ir.Value) -> ir.Value:
    """min(x, y) of signed integers."""
    return b.select(b.icmp_signed("<", x, y), x, y)


def larger(b: ir.IRBuilder, x: ir.Value, y: ir.Value) -> ir.Value:
    """max(x, y) of signed integers."""
    return b.select(b.icmp_signed(">", x, y), x, y)


def element(b: ir.IRBuilder, array: ir.Value, index: int) -> ir.Value:
    """array[index] for a constant index (an argument array's pointer or size)."""
    return b.load(b.gep(array, [ir.Constant(I64, index)]))


def product(dims) -> Dim:
    """The product of sizes (1 for none), as a Dim."""
    total = Dim.of(1)
    for d in dims:
        total = total * d
    return total


# loops -------------------------------------------------------------------------------------
class Loop:
    """The loop being emitted: its `index` (an i64 phi) and its carried `values` (phis); in the
    body, `carry(new_values)` gives the next iteration (and the exit) their values, and
    `advance(amount)` sets how far the index moves (default: the loop's step)."""

    def __init__(self, index: ir.PhiInstr, values: tuple[ir.PhiInstr, ...]):
        self.index, self.values = index, values
        self.carried: list[ir.Value] = list(values)
        self.amount: ir.Value | None = None

    def carry(self, new: Sequence[ir.Value]) -> None:
        self.carried[:] = new

    def advance(self, amount: ir.Value) -> None:
        self.amount = amount


class _LoopID(ir.values.MDValue):
    """A loop's `!llvm.loop` metadata: distinct, its first operand itself (as LLVM's loop IDs
    are), compared and hashed by identity (its operands contain it)."""

    def __init__(self, module: ir.Module, properties: list[ir.Value]):
        super().__init__(module, [], name=str(len(module.metadata)))
        self.operands = (self, *properties)

    def descr(self, buf):
        buf += ("distinct ",)
        super().descr(buf)

    __hash__ = object.__hash__

    def __eq__(self, other):
        return self is other


class _Building(threading.local):
    """Per thread (two models may be built at once): the loops being built, innermost last,
    each [its function, whether it has met a loop inside it so far]; and whether outer loops
    are kept rolled (`unrolled` suspends it)."""

    def __init__(self):
        self.open: list[list] = []
        self.rolled: list[bool] = [True]


_BUILDING = _Building()


@contextlib.contextmanager
def unrolled() -> Iterator[None]:
    """Loops built inside may all unroll as LLVM sees fit: the GEMM's (its packing loops
    around short copies gain from it; its blocked loops have large trip counts anyway)."""
    _BUILDING.rolled.append(False)
    try:
        yield
    finally:
        _BUILDING.rolled.pop()


def _keep_rolled(b: ir.IRBuilder, latch: ir.Instruction) -> None:
    """Mark the loop whose back edge is `latch` never to be unrolled. Given to every loop
    with a loop inside: LLVM would unroll an outer loop with a small constant trip count
    fully (a [B, 3, 7, W] slice: 21 copies of its inner loop, each then vectorised), code
    that takes it seconds to compile and runs no faster; inner loops unroll as before."""
    module = b.module
    disable = module.add_metadata([ir.MetaDataString(module, "llvm.loop.unroll.disable")])
    latch.set_metadata("llvm.loop", _LoopID(module, [disable]))


@contextlib.contextmanager
def loop(b: ir.IRBuilder, stop: ir.Value, start: ir.Value | None = None, step: int = 1,
         carries: Sequence[ir.Value] = (), name: str = "loop",
         index: str = "i") -> Iterator[Loop]:
    """`for i in range(start, stop, step)` (step > 0; start defaults to 0) with loop-carried
    values starting at `carries` (SSA phis); yields the Loop inside the body. A loop whose
    body calls `advance` moves by that run-time amount instead of `step`."""
    start = start if start is not None else ir.Constant(I64, 0)
    pre = b.block
    head = b.append_basic_block(f"{name}.head")
    body = b.append_basic_block(f"{name}.body")
    done = b.append_basic_block(f"{name}.done")
    b.branch(head)
    b.position_at_end(head)
    i = b.phi(I64, name=index)
    i.add_incoming(start, pre)
    values = tuple(b.phi(v.type) for v in carries)
    for phi, v in zip(values, carries, strict=True):
        phi.add_incoming(v, pre)
    b.cbranch(b.icmp_signed("<", i, stop), body, done)
    b.position_at_end(body)
    state = Loop(i, values)
    building, here = _BUILDING.open, b.function
    if building and building[-1][0] is here:  # (a function built inside a loop is not in it)
        building[-1][1] = True  # the enclosing loop has this one inside
    building.append([here, False])
    try:
        yield state
    finally:
        outer = building.pop()[1]
    for phi, v in zip(values, state.carried, strict=True):
        phi.add_incoming(v, b.block)
    if state.amount is None:
        i.add_incoming(b.add(i, ir.Constant(I64, step), flags=("nsw",)), b.block)
    else:
        i.add_incoming(b.add(i, state.amount), b.block)
    latch = b.branch(head)
    if outer and _BUILDING.rolled[-1]:
        _keep_rolled(b, latch)
    b.position_at_end(done)


@contextlib.contextmanager
def for_range(b: ir.IRBuilder, stop: ir.Value, start: ir.Value | None = None, step: int = 1,
              name: str = "loop", index: str = "i") -> Iterator[ir.Value]:
    """`for i in range(start, stop, step)` (step > 0); yields i inside the loop body."""
    with loop(b, stop, start, step, (), name, index) as state:
        yield state.index


def fold(b: ir.IRBuilder, stop: ir.Value, init: Sequence[ir.Value],
         step: Callable[[ir.Value, tuple[ir.Value, ...]], Sequence[ir.Value]],
         start: ir.Value | None = None, name: str = "loop",
         index: str = "i") -> tuple[ir.Value, ...]:
    """values = init; for i in range(start, stop): values = step(i, values); returns the
    values after the loop (init when it runs no step). The values are loop-carried phis."""
    with loop(b, stop, start, 1, init, name, index) as state:
        state.carry(step(state.index, state.values))
    return state.values


# memory ------------------------------------------------------------------------------------
def memcpy(b: ir.IRBuilder, dst: ir.Value, src: ir.Value, size: ir.Value) -> None:
    """Copy `size` bytes (i64) from src to dst (i8* pointers, not overlapping)."""
    fn = b.module.declare_intrinsic("llvm.memcpy", [PTR, PTR, I64])
    b.call(fn, [dst, src, size, ir.Constant(I1, 0)])


def memset(b: ir.IRBuilder, dst: ir.Value, size: ir.Value, byte: int = 0) -> None:
    """Set `size` bytes (i64) at dst (an i8* pointer) to `byte`."""
    fn = b.module.declare_intrinsic("llvm.memset", [PTR, I64])
    b.call(fn, [dst, ir.Constant(I8, byte), size, ir.Constant(I1, 0)])


# vectors -----------------------------------------------------------------------------------
class Vectors:
    """<width x float> loads, stores, masks and FMAs on one IRBuilder."""

    def __init__(self, b: ir.IRBuilder, width: int):
        self.b, self.width = b, width
        self.type = ir.VectorType(F32, width)
        self.mask_type = ir.VectorType(I1, width)

    def _pointer(self, ptr: ir.Value, offset) -> ir.Value:
        at = ptr if offset == 0 else self.b.gep(ptr, [i64(offset)])
        return self.b.bitcast(at, self.type.as_pointer())

    def load(self, ptr, offset=0, align: int = 4) -> ir.Value:
        """The vector at ptr + offset floats."""
        return self.b.load(self._pointer(ptr, offset), align=align)

    def store(self, value, ptr, offset=0, align: int = 4) -> None:
        """Store a vector at ptr + offset floats."""
        self.b.store(value, self._pointer(ptr, offset), align=align)

    def mask(self, count: ir.Value, first: int) -> ir.Value:
        """Lanes first + l < count (count is i64)."""
        lanes = ir.Constant(ir.VectorType(I32, self.width),
                            [first + lane for lane in range(self.width)])
        return self.b.icmp_signed("<", lanes, self.splat(self.b.trunc(count, I32)))

    def masked_load(self, ptr, offset, mask) -> ir.Value:
        """The lanes of `mask` from memory, zero elsewhere; the others are never read."""
        fn = self._intrinsic("masked.load", self.type,
                             [self.type.as_pointer(), I32, self.mask_type, self.type])
        return self.b.call(fn, [self._pointer(ptr, offset), ir.Constant(I32, 4), mask,
                                ir.Constant(self.type, None)])

    def masked_store(self, value, ptr, offset, mask) -> None:
        """Store the lanes of `mask`; memory under the others is never touched."""
        fn = self._intrinsic("masked.store", VOID,
                             [self.type, self.type.as_pointer(), I32, self.mask_type])
        self.b.call(fn, [value, self._pointer(ptr, offset), ir.Constant(I32, 4), mask])

    def splat(self, scalar: ir.Value) -> ir.Value:
        """A vector of `scalar` in every lane (of the scalar's type)."""
        vty = ir.VectorType(scalar.type, self.width)
        one = self.b.insert_element(ir.Constant(vty, None), scalar, ir.Constant(I32, 0))
        zeros = ir.Constant(ir.VectorType(I32, self.width), [0] * self.width)
        return self.b.shuffle_vector(one, ir.Constant(vty, None), zeros)

    def fma(self, a, b, c) -> ir.Value:
        """a * b + c, fused."""
        fn = self._intrinsic("fma", self.type, [self.type] * 3)
        return self.b.call(fn, [a, b, c], fastmath=("contract",))

    def gather(self, base: ir.Value, offsets: ir.Value, mask: ir.Value) -> ir.Value:
        """base[offsets[l]] in the lanes of `mask` (offsets: <width x i32>), zero elsewhere;
        the others are never read."""
        b = self.b
        lanes = ir.VectorType(I64, self.width)
        start = self.splat(b.ptrtoint(base, I64))
        bytes_ = b.shl(b.sext(offsets, lanes), self.splat(ir.Constant(I64, 2)))
        pointers = b.inttoptr(b.add(start, bytes_), ir.VectorType(F32P, self.width))
        fn = self._intrinsic("masked.gather", self.type,
                             [pointers.type, I32, self.mask_type, self.type])
        return b.call(fn, [pointers, ir.Constant(I32, 4), mask, ir.Constant(self.type, None)])

    def _intrinsic(self, name: str, ret, args) -> ir.Function:
        pointers = f".v{self.width}p0" if "gather" in name else ".p0" if "masked" in name else ""
        symbol = f"llvm.{name}.v{self.width}f32{pointers}"
        module = self.b.module
        fn = module.globals.get(symbol)
        return fn if fn is not None else ir.Function(module, ir.FunctionType(ret, args), symbol)
