"""The native target: the model compiled by LLVM for this CPU and run in one native call."""

from __future__ import annotations

import ctypes
import math
import mmap
import os
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..compiler import progress
from ..compiler.builds import Weights
from ..compiler.codegen.llvm import target as targets
from ..compiler.codegen.llvm.calling import (
    CYCLES_SYMBOL,
    PROFILE_SYMBOL,
    ModuleLayout,
    plan_memory,
)
from ..compiler.codegen.llvm.derived import parse, remakeable, resolve
from ..compiler.dims import Dim
from ..compiler.errors import KilnError
from ..compiler.sizes import TOO_LARGE_HINT, sizes_text
from ..compiler.types import SIZE_LIMIT
from .model import CompiledModel, Interface, State
from .signature import Signature

if TYPE_CHECKING:  # the compiler's side: a model loaded from a library has none of it
    from ..compiler.driver import Compilation
    from ..compiler.ir import Graph

_ENTRY = ctypes.CFUNCTYPE(None, *([ctypes.c_void_p] * 7))
_NONE: frozenset[str] = frozenset()


# JIT engines by the LoadedCode that owns them. Held here, not by the LoadedCode itself: a
# model garbage-collected as part of a reference cycle would otherwise have its engine (whose
# own finalizer frees the code) finalized before the LoadedCode, which then calls freed code.
_ENGINES: dict[int, object] = {}


class LoadedCode:
    """Loaded machine code (a JIT engine or a shared library) and the worker threads it
    starts. Every call holds a reference to the code it runs, so when the last reference goes
    no call can be inside it: only then are its workers stopped (kiln_shutdown) and, after
    that, a JIT engine freed."""

    def __init__(self, engine=None, library=None):
        self.library = library  # kept loaded while its code may run
        if library is not None:
            self.shutdown = library.kiln_shutdown
        else:
            self.shutdown = ctypes.CFUNCTYPE(None)(engine.address("kiln_shutdown"))
            _ENGINES[id(self)] = engine

    # `engines` is bound here because at interpreter exit this module's globals may be None
    # before the last model is finalized (a model held in a cache of another module)
    def __del__(self, engines: dict[int, object] = _ENGINES):
        try:
            self.shutdown()
        except Exception:  # noqa: BLE001  (interpreter shutdown: nothing left to stop)
            pass
        engines.pop(id(self), None)  # the engine, and with it the code, goes now


@dataclass
class _Variant:
    """One compiled variant (a set of optional inputs, `present`) bound to one set of
    weights: its signature and graph (None for a library's), the code, its layout and the
    arrays it reads, with their pointers."""

    signature: Signature
    graph: Graph | None
    present: frozenset[str] | tuple  # the optional inputs given, or (them, "vjp")
    layout: ModuleLayout
    code: LoadedCode
    entry: object  # the `run` entry point
    arrays: list[np.ndarray]  # kept alive with their pointers
    calls: dict  # sizes -> _Call, made by NativeModel._prepare
    native: object = None  # a JIT build's driver.NativeObject (its object code and layout)

    def __post_init__(self):
        self.params = (ctypes.c_void_p * max(1, len(self.arrays)))(
            *[a.__array_interface__["data"][0] for a in self.arrays])
        self.params_ptr = ctypes.addressof(self.params)

    @staticmethod
    def bound(signature: Signature, graph: Graph | None, present: frozenset[str], layout, code,
              entry, params: dict[str, np.ndarray], threads: int = 1) -> _Variant:
        """The variant reading `params`; derived arrays (packed weights) made from them, on up
        to `threads` threads (`_resolved`)."""
        def lookup(name: str) -> np.ndarray:
            return layout.constants[name] if name in layout.constants else params[name]

        arrays = _resolved(layout.params, lookup, threads)
        arrays = [np.ascontiguousarray(a) if a.ndim else np.array(a, order="C") for a in arrays]
        return _Variant(signature, graph, present, layout, code, entry, _gathered(arrays), {})

    def rebound(self, params: dict[str, np.ndarray], threads: int = 1) -> _Variant:
        """The same code reading new weights: only the arrays are made again."""
        return _Variant.bound(self.signature, self.graph, self.present, self.layout, self.code,
                              self.entry, params, threads)

    def remakes(self, params: dict[str, np.ndarray]) -> bool:
        """Whether new weights reach this code by its arrays alone: everything it reads is a
        parameter, a constant that is no weight's, or derived from those by name; not a
        constant folded from weights that no name remakes (compiler/derived.py)."""
        layout = self.layout

        def source(name: str) -> bool:
            return name in params or (name in layout.constants and name not in layout.folded)

        return all(remakeable(name, source) for name in layout.params)


# derived arrays made at once, at most (numpy's copies, transposes and products in them let
# go of the GIL): ResNet-18's 41 (folded, prepacked, Winograd's U, channels-last) on two
# threads, 75 -> 50 ms of a warm compile
DERIVE_THREADS = 4


def _resolved(names: list[str], lookup, threads: int) -> list[np.ndarray]:
    """`resolve` of each name, in order: the derived ones on up to min(threads,
    DERIVE_THREADS) threads where there are several (an error raises as on one)."""
    workers = min(threads, DERIVE_THREADS, sum(parse(name) is not None for name in names))
    if workers < 2:
        return [resolve(name, lookup) for name in names]
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="kiln-derive") as pool:
        return list(pool.map(lambda name: resolve(name, lookup), names))


@dataclass
class _Call:
    """What one call with given sizes needs: outputs to allocate and the memory plan."""

    outputs: list[tuple[tuple[int, ...], np.dtype]]
    offsets: np.ndarray
    size: int
    sizes: np.ndarray

    def __post_init__(self):
        self.offsets_ptr = self.offsets.__array_interface__["data"][0]
        self.sizes_ptr = self.sizes.__array_interface__["data"][0]
        # each output's shape, dtype and bytes, computed once for every call with these sizes
        self.allocations = [(shape, np.dtype(dtype), math.prod(shape) * np.dtype(dtype).itemsize)
                            for shape, dtype in self.outputs]


def _allocate(shape: tuple[int, ...], dtype: np.dtype, what: str) -> np.ndarray:
    """np.empty, with memory running out a KilnError (K0505), not a MemoryError."""
    try:
        return np.empty(shape, dtype)
    except MemoryError:
        nbytes = math.prod(shape) * np.dtype(dtype).itemsize
        raise KilnError("K0505", f"out of memory for {what} of this call ({nbytes:,} bytes)",
                        hint="call the model with smaller inputs") from None


# outputs this large start at a page boundary. A kernel streaming several arrays stalls a
# load behind an older, unrelated store whose address has the same low 12 bits ("4K
# aliasing"): a store stream a little ahead of a load stream mod 4096 (same-sized arrays from
# malloc sit 16 bytes apart, the newer above) meets it every few iterations; streams at one
# offset never do. A fused Adam update (a train step's: it reads the weights and state the
# last step returned and writes their new values) ran 1.3x slower for it.
ALIGNED = 1 << 16
PAGE = 4096
# Outputs this large reuse the block of an output an earlier call on the same thread returned
# and the caller has since dropped (nothing references it: `_ThreadState.block`). A new
# block each call is a new mapping, or heap that malloc gave back to the system when the
# last call's results were freed: the kernel then zeroes its pages again as the call first
# writes them. Two 4 MiB outputs of one product took 6.3 ms a call on two threads, 1,659
# page faults each, against 3.7 ms with their blocks reused.
REUSED = 1 << 20
# (the test for "nothing references it" is CPython's reference count, which a free-threaded
# build does not keep exactly)
_COUNTS_REFERENCES = hasattr(sys, "getrefcount") and getattr(
    sys, "_is_gil_enabled", lambda: True)()


# The arrays native code reads over and over (the weights, packed) are copied into one fresh
# anonymous mapping, written in order: the kernel backs it with pages that are mostly
# contiguous in physical memory, so a matrix of 1 MiB spreads evenly over the L2 cache's sets.
# The same matrix from malloc's heap (reused pages at scattered physical addresses) overfills
# some sets: a matrix-vector product over it (an LSTM step at batch 1) ran at 11.5 or 17 us
# depending on where its pages fell, 11.2-11.9 us from a fresh mapping. Transparent
# huge pages (madvise) did as well for the LSTM but cost an MLP at batch 1, whose 2.7 MB of
# weights stream through the L2 at each call, 7-10 %. Below FRESH bytes this is not needed;
# above FRESH_MAX the weights stream from L3 or memory whatever their pages (ResNet-18's 76 MB:
# no change), and the copy (40 ms for those 76 MB, most of it the kernel zeroing new pages)
# would cost a warm compile more than it gains.
FRESH = 1 << 20
FRESH_MAX = 16 << 20
FRESH_WORKSPACE = 1 << 20
_ALIGN = 64


def _fresh(nbytes: int, what: str) -> np.ndarray:
    """nbytes of zeroed memory (uint8) from a new anonymous mapping (page-aligned); np.empty
    where the system has none."""
    try:
        buf = mmap.mmap(-1, max(nbytes, 1), flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    except (OSError, AttributeError, OverflowError, ValueError):
        return _allocate((nbytes,), np.uint8, what)
    return np.frombuffer(buf, np.uint8, nbytes)


def _gathered(arrays: list[np.ndarray]) -> list[np.ndarray]:
    """`arrays` copied into one fresh block (each at a 64-byte boundary) when they hold
    FRESH to FRESH_MAX bytes; else as they are. The copies are read-only: nothing but the
    native code reads them, and it never writes them."""
    starts, total = [], 0
    for a in arrays:
        total = -(-total // _ALIGN) * _ALIGN
        starts.append(total)
        total += a.nbytes
    if not FRESH <= total <= FRESH_MAX:
        return arrays
    block = _fresh(total, "the weights")
    out = []
    for i, start in enumerate(starts):
        a, arrays[i] = arrays[i], None  # a packed weight is freed once copied
        copy = block[start:start + a.nbytes].view(a.dtype).reshape(a.shape)
        copy[...] = a
        copy.flags.writeable = False
        out.append(copy)
    return out


def _output(shape: tuple[int, ...], dtype: np.dtype, nbytes: int,
            here: _ThreadState | None = None, keep: int = 0) -> np.ndarray:
    """An output array of one call: page-aligned when it has ALIGNED bytes or more; from
    REUSED bytes on, in a block `here` (the calling thread's state) may have kept from an
    earlier call (at most `keep` blocks kept)."""
    if nbytes < ALIGNED:
        return _allocate(shape, dtype, "an output")
    if here is not None and nbytes >= REUSED and _COUNTS_REFERENCES:
        raw = here.block(nbytes + PAGE, keep)
    else:
        raw = _allocate((nbytes + PAGE,), np.uint8, "an output")
    start = -raw.__array_interface__["data"][0] % PAGE
    return raw[start:start + nbytes].view(dtype).reshape(shape)


def _outputs(call: _Call, here: _ThreadState | None = None) -> list[np.ndarray]:
    """The output arrays of one call, allocated for native code to fill (`here`: the calling
    thread's state, whose kept blocks large outputs reuse)."""
    keep = 2 * len(call.allocations)  # this call's outputs, and the last call's
    return [_output(*allocation, here, keep) for allocation in call.allocations]


def _address(a: np.ndarray) -> int:
    """The data address of an array; from_buffer is the cheapest way for writable ones."""
    if a.flags.writeable and a.size:
        try:
            return ctypes.addressof(ctypes.c_char.from_buffer(a))
        except ValueError:  # dtypes the buffer protocol cannot describe (bfloat16)
            pass
    return _interface(a)


def _interface(a: np.ndarray) -> int:
    return a.__array_interface__["data"][0]


class _ThreadState:
    """One thread's pointer arrays for a call's inputs and outputs, its status word and its
    workspace (threads never share one), with their addresses taken once."""

    __slots__ = ("in_ptrs", "in_address", "out_ptrs", "out_address", "status", "status_ptr",
                 "workspace", "workspace_ptr", "kept")

    def __init__(self):
        self.status = np.zeros(1, dtype=np.int64)
        self.status_ptr = self.status.__array_interface__["data"][0]
        self.workspace = None
        self.workspace_ptr = 0
        self.kept: list[np.ndarray] = []  # output blocks (uint8), the latest last
        self.fit(1, 1)

    def block(self, size: int, keep: int) -> np.ndarray:
        """A uint8 block of `size` bytes for an output: a kept one that nothing references
        any more (every array and view of the output it held has been dropped: only this
        list counts it), else a new one, kept. At most `keep` blocks stay kept: past that
        the oldest unreferenced ones go first, then the oldest (still the caller's)."""
        kept = self.kept
        for i in range(len(kept)):
            if kept[i].size == size and sys.getrefcount(kept[i]) == 2:  # the list, the call
                raw = kept.pop(i)
                kept.append(raw)
                return raw
        raw = _allocate((size,), np.uint8, "an output")
        kept.append(raw)
        while len(kept) > keep:
            free = [i for i in range(len(kept) - 1) if sys.getrefcount(kept[i]) == 2]
            del kept[free[0] if free else 0]
        return raw

    def fit(self, ins: int, outs: int) -> None:
        """Pointer arrays for `ins` inputs and `outs` outputs (the workspace stays)."""
        self.in_ptrs = (ctypes.c_void_p * max(1, ins))()
        self.in_address = ctypes.addressof(self.in_ptrs)
        self.out_ptrs = (ctypes.c_void_p * max(1, outs))()
        self.out_address = ctypes.addressof(self.out_ptrs)


@dataclass
class _FastPath:
    """The checks of the fast call path, precomputed from the signature."""

    dtypes: list[np.dtype]
    ranks: list[int]
    symbols: list[str]
    symbol_at: list[tuple[int, int]]  # (input, axis) that binds each symbol
    fixed: list[tuple[int, int, int]]  # (input, axis, size) of constant sizes
    repeated: list[tuple[int, int, int]]  # (input, axis, symbol index) seen again
    names: tuple[str, ...] = ()  # the inputs' names, in order: a call by keywords

    @staticmethod
    def of(signature: Signature, symbols: list[str]):
        """None when the signature needs the general path (optional inputs, sizes given by
        expressions, call-time constraints)."""
        if signature.constraints or any(p.optional for p in signature.inputs):
            return None
        where: dict[str, tuple[int, int]] = {}
        fixed, repeated = [], []
        for i, port in enumerate(signature.inputs):
            for axis, d in enumerate(port.type.shape):
                if d.is_const:
                    fixed.append((i, axis, d.value))
                elif d.symbol is None:
                    return None
                elif d.symbol in where:
                    repeated.append((i, axis, symbols.index(d.symbol)))
                else:
                    where[d.symbol] = (i, axis)
        if set(where) != set(symbols):
            return None
        return _FastPath([p.type.np_dtype for p in signature.inputs],
                         [p.type.rank for p in signature.inputs], list(symbols),
                         [where[s] for s in symbols], fixed, repeated,
                         tuple(p.name for p in signature.inputs))


def _threads(threads: int | None) -> int:
    """A native model's parallelism: `threads`, checked, or every core by default."""
    if threads is None:
        return default_threads()
    if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
        raise KilnError("K0602", f"threads must be a positive int, not {threads!r}")
    return threads


def default_threads() -> int:
    """Every core this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


class NativeModel(CompiledModel):
    """A model compiled to machine code for this CPU; calls from several threads are safe,
    and so is loading weights while they run (a call runs with one set of weights)."""

    target = "native"

    def __init__(self, compilation: Compilation, params: dict[str, np.ndarray],
                 threads: int | None = None):
        super().__init__(compilation, params)
        self.cpu = compilation.cpu
        model = self.model
        self.threads = _threads(threads)
        self._local = threading.local()
        self._library = None
        self._fast = _FastPath.of(self._signature, list(model.symbols))
        if not any(p.optional for p in model.inputs):
            self._variant_of(self._state, model.present)  # now: build errors surface here
        # with optional inputs, each variant is built when first called with that set of
        # inputs: a model called without them never builds the one with them

    def native_arrays(self) -> list[str]:
        """The names of the arrays the native code reads, in the order it reads them:
        parameter paths, `const:N` constants, and derived arrays such as `prepack_a(...):path`
        (a convolution weight laid out for the GEMM when the weights are bound)."""
        present = self.model.present if self.model else _NONE  # a library's: its only one
        return list(self._variant_of(self._state, present).layout.params)

    @classmethod
    def from_library(cls, interface: Interface, params: dict, layout, library, entry,
                     cpu: targets.Target, code: LoadedCode | None = None,
                     threads: int | None = None) -> NativeModel:
        """A model whose code comes from a shared library built ahead of time, as its
        metadata gives its `interface` (`code`: the library's LoadedCode, shared by every model
        loaded from it; `threads`: as for a compiled model, default every core)."""
        self = cls.__new__(cls)
        CompiledModel.__init__(self, None, params, interface)
        self.cpu = cpu
        self.threads = _threads(threads)
        library.kiln_set_threads.argtypes = [ctypes.c_int64]
        library.kiln_set_threads(self.threads)
        self._library = library
        self._local = threading.local()
        code = code or LoadedCode(library=library)
        self._state.built[_NONE] = _Variant.bound(interface.signature, None, _NONE, layout, code,
                                                  entry, self._state.params, self.threads)
        self._fast = _FastPath.of(interface.signature, layout.symbols)
        return self

    def _variant_of(self, state: State, present: frozenset[str] | tuple) -> _Variant:
        """The compiled variant for these optional inputs (or, keyed `(present, "vjp")`, the
        gradient model for them) and weights, built once."""
        variant = state.built.get(present)
        if variant is not None:
            return variant
        if self._library is not None:
            raise KilnError("K0501", "this library was built with every optional input given",
                            hint="pass every optional input")
        return self._builds.once(state.built, present,
                                 lambda: self._build(state.weights, present))

    def _build(self, weights: Weights, key: frozenset[str] | tuple, profile: bool = False
               ) -> _Variant:
        """Compile and load the variant `key` (see _variant_of); `profile`: with a timer
        around every kernel."""
        # on use: LLVM loads with the first build (a model from a library never builds)
        from ..compiler.codegen.llvm.loader import LoadedObject

        gradient = isinstance(key, tuple)
        native = self.compilation.native(weights, key[0] if gradient else key, gradient=gradient,
                                         profile=profile)
        symbols = ["run", "kiln_set_threads", "kiln_shutdown"]
        if profile:
            symbols += [PROFILE_SYMBOL, CYCLES_SYMBOL]
        engine = LoadedObject(native.code, symbols)  # (loader.py: why not MCJIT)
        entry = _ENTRY(engine.address("run"))
        ctypes.CFUNCTYPE(None, ctypes.c_int64)(engine.address("kiln_set_threads"))(
            self.threads)
        variant = _Variant.bound(Signature.of(native.model), native.model.graph, key,
                                 native.layout, LoadedCode(engine=engine), entry, weights.params,
                                 self.threads)
        variant.native = native  # what the compile cache's model entry links (modelcache.py)
        return variant

    def profile(self, /, *args, repeat: int = 10, **kwargs):
        """Time each kernel of a call with these inputs (runtime/profile.py: a Profile, whose
        str is the table `kiln profile` prints): the model's code is built once more with a
        timer around every kernel, warmed up with one call, then called `repeat` times."""
        from ..compiler.codegen.llvm.peak import fma_peak_flops
        from .profile import Profile, counter_rate, kernel_times

        if self._library is not None:
            raise KilnError("K0602", f"{self.name} was loaded from a library built ahead of "
                            "time: profiling builds its code again, with timers, from the source",
                            hint="kiln.compile(FILE).profile(...)")
        if not isinstance(repeat, int) or isinstance(repeat, bool) or repeat < 1:
            raise KilnError("K0602", f"repeat must be a positive int, not {repeat!r}")
        arrays, dims = self.bind_inputs(args, kwargs)
        present = frozenset(p.name for p in self.inputs if p.optional and p.name in arrays)
        state = self._state
        variant = self._builds.once(state.profiled, present,
                                    lambda: self._build(state.weights, present, profile=True))
        engine = _ENGINES[id(variant.code)]
        counters = (ctypes.c_int64 * max(1, len(variant.layout.profiled))).from_address(
            engine.address(PROFILE_SYMBOL))
        cycles = ctypes.CFUNCTYPE(ctypes.c_int64)(engine.address(CYCLES_SYMBOL))
        call = self._prepare(variant, dims)
        ins = [arrays[p.name] for p in variant.signature.inputs]
        with self._lock:  # one profile at a time: the counters are the code's own
            self._enter(variant, call, ins, _outputs(call, self._thread_state()))  # warm up
            walls, per_call = [], []
            for _ in range(repeat):
                outs = _outputs(call, self._thread_state())
                ctypes.memset(counters, 0, ctypes.sizeof(counters))
                start = time.perf_counter()
                self._enter(variant, call, ins, outs)
                walls.append(time.perf_counter() - start)
                per_call.append(list(counters))
        # each kernel's median over the calls: a call the OS interrupted does not count
        spent = [statistics.median(c[k] for c in per_call) for k in range(len(counters))]
        rate = counter_rate(cycles)
        sizes = {s: dims[s] for s in variant.layout.symbols}
        return Profile(self.name, sizes, self.threads, repeat,
                       kernel_times(variant.graph, variant.layout.profiled, spent, rate, sizes),
                       statistics.median(walls), fma_peak_flops() * self.threads,
                       self.compilation.precision)

    def _rebound(self, old: State, params: dict[str, np.ndarray]) -> State:
        """New weights reach the compiled code as data: its derived arrays (a weight.T, packed
        panels) are made again from them, no code is built. Weights folded into constants
        past remaking (a BatchNorm whose statistics are constants, not parameters) are not
        data: the JIT optimizes the graph again (its code comes
        back from the compile cache); a library built ahead of time cannot take them."""
        new = State(Weights.of(params))
        for present, variant in old.built.items():
            if variant.remakes(new.params):
                new.built[present] = variant.rebound(new.params, self.threads)
            elif self._library is not None:
                raise KilnError(
                    "K0403", "this library's weights are folded into constants that new "
                    "weights cannot remake (a BatchNorm whose statistics are not parameters); "
                    "rebuild it with the new weights",
                    hint="kiln compile FILE --target native --weights W.safetensors -o model.so",
                )
            else:
                with progress.step("optimizing again: weights are folded into constants "
                                   "(a BatchNorm with constant statistics)"):
                    new.built[present] = self._build(new.weights, present)
        return new

    def _stop_workers(self) -> None:
        """Stop the worker threads of every compiled variant (kiln_shutdown), when no call is
        running; a later call starts them again."""
        for variant in self._state.built.values():
            variant.code.shutdown()

    def __call__(self, /, *args, **kwargs):
        """The fast path: exactly the signature's arrays, positional or every one by its name,
        C-contiguous, of the right dtypes, ranks and sizes, goes straight to native code;
        anything else takes the general path, which converts what it safely can or raises a
        KilnError naming the input."""
        fast = self._fast
        if fast is None:
            return super().__call__(*args, **kwargs)
        if kwargs:
            if args or len(kwargs) != len(fast.names):
                return super().__call__(*args, **kwargs)
            try:
                named = tuple(kwargs[name] for name in fast.names)
            except KeyError:  # an unknown name: the general path says which
                return super().__call__(*args, **kwargs)
            return self(*named)
        if len(args) != len(fast.dtypes):
            return super().__call__(*args, **kwargs)
        for a, dtype, rank in zip(args, fast.dtypes, fast.ranks):
            # (`is not` first: an array's dtype is most often the very object)
            if type(a) is not np.ndarray or (a.dtype is not dtype and a.dtype != dtype) or (
                a.ndim != rank or not a.flags.c_contiguous
            ):
                return super().__call__(*args, **kwargs)
        dims = tuple([args[i].shape[axis] for i, axis in fast.symbol_at])
        for i, axis, want in fast.fixed:
            if args[i].shape[axis] != want:
                return super().__call__(*args, **kwargs)
        for i, axis, symbol in fast.repeated:
            if args[i].shape[axis] != dims[symbol]:
                return super().__call__(*args, **kwargs)
        variant = self._variant_of(self._state, _NONE)  # no optional inputs here
        call = variant.calls.get(dims)  # _prepare's key
        if call is None:
            call = self._prepare(variant, dict(zip(fast.symbols, dims)))
        outs = _outputs(call, self._thread_state())
        return self.pack_results(self._enter(variant, call, args, outs))

    def run(self, arrays, dims):
        return self._run_variant(self._variant_of(self._state, self._present(arrays)), arrays,
                                 dims)

    def run_gradient(self, state, present, arrays, dims):
        return self._run_variant(self._variant_of(state, (present, "vjp")), arrays, dims)

    def _run_variant(self, variant: _Variant, arrays: dict[str, np.ndarray],
                     dims: dict[str, int]) -> list[np.ndarray]:
        """Call `variant` with its inputs by name: outputs allocated, checked sizes."""
        call = self._prepare(variant, dims)
        outs = _outputs(call, self._thread_state())
        self._enter(variant, call, [arrays[p.name] for p in variant.signature.inputs], outs)
        return outs

    def _prepare(self, variant: _Variant, dims: dict[str, int]):
        """Everything a call with these sizes needs, computed once per set of sizes: the memory
        plan, the output shapes, the sizes array (after refusing sizes that come out negative)."""
        signature, layout = variant.signature, variant.layout
        key = tuple(dims.get(s, 0) for s in layout.symbols)
        call = variant.calls.get(key)
        if call is None:
            self._check_sizes(variant, dims)
            offsets, size = plan_memory(layout, dims)
            outputs = [(tuple(Dim.of(d).evaluate(dims) for d in p.type.shape), p.type.np_dtype)
                       for p in signature.outputs]
            sizes = np.array([dims[s] for s in layout.symbols] or [0], dtype=np.int64)
            if len(variant.calls) > 256:
                variant.calls.clear()
            call = variant.calls[key] = _Call(outputs, offsets, size, sizes)
        return call

    def _check_sizes(self, variant: _Variant, dims: dict[str, int]) -> None:
        """Refuse, before native code computes a size that wraps in int64, sizes that make a
        tensor negative or too large: the graph's tensors with the signature's and the memory
        plan's (a library has only these), then a library's own check of every tensor it was
        built with (kiln_plan: -1)."""
        layout, signature = variant.layout, variant.signature
        more = [t for t, _born, _dies in layout.slots]
        more += [p.type for p in (*signature.inputs, *signature.outputs)]
        self.check_sizes(variant.present, variant.graph, dims, more)
        if self._library is not None:
            plan = self._library.kiln_plan
            plan.restype, plan.argtypes = ctypes.c_int64, [ctypes.c_void_p, ctypes.c_void_p]
            sizes = np.array([dims[s] for s in layout.symbols] or [0], dtype=np.int64)
            offsets = np.zeros(max(1, len(layout.slots)), dtype=np.int64)
            if plan(sizes.ctypes.data, offsets.ctypes.data) < 0:
                raise KilnError("K0505", f"with these inputs ({sizes_text(dims)}) a size of "
                                f"this library is negative or too large; {SIZE_LIMIT}",
                                hint=TOO_LARGE_HINT)

    def _thread_state(self) -> _ThreadState:
        """The calling thread's pointer arrays, status, workspace and kept output blocks."""
        here = getattr(self._local, "state", None)
        if here is None:
            here = self._local.state = _ThreadState()
        return here

    def _enter(self, variant: _Variant, call, ins, outs):
        """Cross into native code once, with every pointer prepared. `variant` (and with it
        the code and the arrays) stays referenced here until the call returns."""
        here = self._thread_state()
        if len(here.in_ptrs) < len(ins) or len(here.out_ptrs) < len(outs):
            here.fit(max(len(here.in_ptrs), len(ins)), max(len(here.out_ptrs), len(outs)))
        in_ptrs, out_ptrs = here.in_ptrs, here.out_ptrs
        for i, a in enumerate(ins):
            in_ptrs[i] = _address(a)
        for i, a in enumerate(outs):
            out_ptrs[i] = _address(a)
        workspace = here.workspace
        if workspace is None or workspace.size < call.size:
            self._grow_workspace(here, call.size)
        variant.entry(here.in_address, here.out_address, variant.params_ptr, here.workspace_ptr,
                      call.sizes_ptr, call.offsets_ptr, here.status_ptr)
        status = here.status
        if status[0]:
            code, status[0] = int(status[0]), 0
            message, span = variant.layout.failures[code - 1]
            raise KilnError("K0505", message, span)
        return outs

    @staticmethod
    def _grow_workspace(here: _ThreadState, size: int) -> None:
        """A thread's arena of at least `size` bytes, in place of a smaller one."""
        here.workspace = (_fresh(size, "the workspace") if size >= FRESH_WORKSPACE else
                          _allocate((max(size, 64),), np.uint8, "the workspace"))
        here.workspace_ptr = here.workspace.__array_interface__["data"][0]
