"""The builder-first IR helpers of compiler/codegen/llvm/irgen.py, each in a tiny function
compiled by llvmlite's JIT and run on edge cases (loops that run no step, carried values,
masks at every count)."""

import ctypes

import llvmlite.binding as llvm
import numpy as np
import pytest
from llvmlite import ir

from kiln.compiler.codegen.llvm import irgen
from kiln.compiler.codegen.llvm.abi import F32, F32P, I32, I64, PTR, VOID
from kiln.compiler.dims import Dim

llvm.initialize_native_target()
llvm.initialize_native_asmprinter()
_ENGINES = []  # kept alive: the functions' code lives in them


def _function(args: list[ir.Type], result: ir.Type = I64):
    """A module with one function `f` and an IRBuilder at its entry."""
    module = ir.Module("helpers")
    module.triple = llvm.get_process_triple()
    fn = ir.Function(module, ir.FunctionType(result, args), "f")
    return module, fn, ir.IRBuilder(fn.append_basic_block("entry"))


def _jit(module: ir.Module, restype, *argtypes):
    """The module's `f` as a ctypes function."""
    target = llvm.Target.from_default_triple().create_target_machine()
    parsed = llvm.parse_assembly(str(module))
    parsed.verify()
    engine = llvm.create_mcjit_compiler(parsed, target)
    engine.finalize_object()
    _ENGINES.append(engine)
    return ctypes.CFUNCTYPE(restype, *argtypes)(engine.get_function_address("f"))


def _range_sum(step: int):
    """f(start, stop) = sum(range(start, stop, step)), through for_range and a memory slot."""
    module, fn, b = _function([I64, I64])
    total = b.alloca(I64)
    b.store(irgen.i64(0), total)
    with irgen.for_range(b, fn.args[1], fn.args[0], step) as i:
        b.store(b.add(b.load(total), i), total)
    b.ret(b.load(total))
    return _jit(module, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64)


@pytest.mark.parametrize("step", [1, 3])
def test_for_range(step):
    f = _range_sum(step)
    for start, stop in [(0, 0), (0, 1), (0, 10), (2, 11), (5, 5), (7, 3), (-4, 4)]:
        assert f(start, stop) == sum(range(start, stop, step)), (start, stop)


def test_fold_carries_two_values():
    """(a, b) = (b, a + b) n times from (0, 1): Fibonacci; no step leaves the initial values."""
    module, fn, b = _function([I64])
    a, c = irgen.fold(b, fn.args[0], [irgen.i64(0), irgen.i64(1)],
                      lambda i, v: (v[1], b.add(v[0], v[1])))
    b.ret(b.add(b.mul(a, irgen.i64(1000)), c))  # both results, to see both carries
    f = _jit(module, ctypes.c_int64, ctypes.c_int64)
    fib = [0, 1]
    for _ in range(20):
        fib.append(fib[-2] + fib[-1])
    for n in (0, 1, 2, 5, 12):
        assert f(n) == fib[n] * 1000 + fib[n + 1], n
    assert f(-3) == 1  # a negative count runs no step either


def test_fold_from_start():
    """The index runs from `start`: the product of start..stop-1."""
    module, fn, b = _function([I64, I64])
    (p,) = irgen.fold(b, fn.args[1], [irgen.i64(1)], lambda i, v: (b.mul(v[0], i),),
                      start=fn.args[0])
    b.ret(p)
    f = _jit(module, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64)
    assert f(2, 6) == 2 * 3 * 4 * 5
    assert f(4, 4) == 1 and f(6, 2) == 1


def test_loop_advance_by_run_time_amount():
    """i = 0; while i < n: i += min(k, n - i), counting the steps: ceil(n / k)."""
    module, fn, b = _function([I64, I64])
    n, k = fn.args
    with irgen.loop(b, n, carries=[irgen.i64(0)], name="by") as state:
        state.carry([b.add(state.values[0], irgen.i64(1))])
        state.advance(irgen.smaller(b, k, b.sub(n, state.index)))
    b.ret(state.values[0])
    f = _jit(module, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64)
    for total, k in [(0, 3), (1, 3), (3, 3), (10, 3), (10, 20), (7, 1)]:
        assert f(total, k) == -(-total // k), (total, k)
    assert "by.head" in str(module)  # the loop's blocks carry its name


def test_smaller_element_product():
    module, fn, b = _function([I64.as_pointer(), I64])
    first = irgen.element(b, fn.args[0], 2)
    b.ret(irgen.smaller(b, first, fn.args[1]))
    f = _jit(module, ctypes.c_int64, ctypes.POINTER(ctypes.c_int64), ctypes.c_int64)
    values = (ctypes.c_int64 * 3)(10, 20, -7)
    assert f(values, 5) == -7 and f(values, -9) == -9
    assert irgen.product([]) == Dim.of(1)
    assert irgen.product([Dim.of(2), Dim.of(3)]) == Dim.of(6)
    assert irgen.product([Dim.of("B"), 4]) == Dim.of("B") * 4


def test_memcpy_memset():
    """f(dst, src, n): dst[0:n] = src[0:n]; dst[n:2n] = 0xAB."""
    module, fn, b = _function([PTR, PTR, I64], VOID)
    dst, src, n = fn.args
    irgen.memcpy(b, dst, src, n)
    irgen.memset(b, b.gep(dst, [n]), n, 0xAB)
    b.ret_void()
    f = _jit(module, None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)
    for n in (0, 1, 13, 100):
        src = np.arange(n, dtype=np.uint8) + 1
        dst = np.zeros(2 * n + 4, dtype=np.uint8)
        f(dst.ctypes.data, src.ctypes.data, n)
        np.testing.assert_array_equal(dst[:n], src)
        np.testing.assert_array_equal(dst[n:2 * n], 0xAB)
        np.testing.assert_array_equal(dst[2 * n:], 0)  # nothing past the end is touched


WIDTH = 8


def test_vectors_masked_fma():
    """f(out, x, y, count): out[:count] = x * 2 + y through masked loads and a masked store;
    lanes at and past count are neither read nor written."""
    module, fn, b = _function([F32P, F32P, F32P, I64], VOID)
    out, x, y, count = fn.args
    vec = irgen.Vectors(b, WIDTH)
    mask = vec.mask(count, 0)
    two = vec.splat(ir.Constant(F32, 2.0))
    value = vec.fma(vec.masked_load(x, 0, mask), two, vec.masked_load(y, 0, mask))
    vec.masked_store(value, out, 0, mask)
    b.ret_void()
    ptr = ctypes.POINTER(ctypes.c_float)
    f = _jit(module, None, ptr, ptr, ptr, ctypes.c_int64)
    x = np.arange(WIDTH, dtype=np.float32)
    y = np.full(WIDTH, 0.5, dtype=np.float32)
    for count in range(WIDTH + 1):
        out = np.full(WIDTH, -1.0, dtype=np.float32)
        f(*(a.ctypes.data_as(ptr) for a in (out, x, y)), count)
        np.testing.assert_array_equal(out[:count], x[:count] * 2 + 0.5)
        np.testing.assert_array_equal(out[count:], -1.0)


def test_vectors_load_store_gather():
    """f(out, x): out[0:W] = x[W:2W]; out[W:2W] = x[idx] for the lanes of mask(W - 1)."""
    module, fn, b = _function([F32P, F32P], VOID)
    out, x = fn.args
    vec = irgen.Vectors(b, WIDTH)
    vec.store(vec.load(x, WIDTH), out, 0)
    offsets = ir.Constant(ir.VectorType(I32, WIDTH), [3 * lane % 11 for lane in range(WIDTH)])
    vec.store(vec.gather(x, offsets, vec.mask(irgen.i64(WIDTH - 1), 0)), out, WIDTH)
    b.ret_void()
    ptr = ctypes.POINTER(ctypes.c_float)
    f = _jit(module, None, ptr, ptr)
    x = np.arange(2 * WIDTH, dtype=np.float32) * 1.5
    out = np.zeros(2 * WIDTH, dtype=np.float32)
    f(out.ctypes.data_as(ptr), x.ctypes.data_as(ptr))
    np.testing.assert_array_equal(out[:WIDTH], x[WIDTH:])
    gathered = [x[3 * lane % 11] for lane in range(WIDTH - 1)] + [0.0]  # masked off: zero
    np.testing.assert_array_equal(out[WIDTH:], np.array(gathered, dtype=np.float32))


def _copy_3x7xn(rolled: bool):
    """f(dst, src, n): dst[a, b, :n] = src[a, b, 5:5 + n] over a 3 x 7 grid of rows of 64
    floats (a slice of a [3, 7, 64] tensor), through three nested for_range loops; with
    `rolled` False, built under irgen.unrolled()."""
    module, fn, b = _function([F32P, F32P, I64], VOID)
    dst, src, n = fn.args

    def build():
        with irgen.for_range(b, irgen.i64(3)) as a, irgen.for_range(b, irgen.i64(7)) as r:
            row = b.add(b.mul(a, irgen.i64(7)), r)
            with irgen.for_range(b, n) as j:
                at = b.add(b.mul(row, irgen.i64(64)), j)
                b.store(b.load(b.gep(src, [b.add(at, irgen.i64(5))])), b.gep(dst, [at]))

    if rolled:
        build()
    else:
        with irgen.unrolled():
            build()
    b.ret_void()
    return module


def test_outer_loops_stay_rolled_and_the_innermost_unrolls():
    """LLVM unrolls an outer loop with a small constant trip count fully (here 21 copies of
    the inner loop, each then vectorised): loops with a loop inside carry
    llvm.loop.unroll.disable, the innermost none, so the optimised code is a fraction of
    the size, and it copies the same."""
    from kiln.compiler.codegen.llvm.parts import machine_code
    from kiln.compiler.codegen.llvm.target import host

    rolled, free = _copy_3x7xn(True), _copy_3x7xn(False)
    text = str(rolled)
    assert text.count("!llvm.loop") == 2 and "llvm.loop.unroll.disable" in text
    assert text.count("distinct !{") == 2  # one loop ID each, itself its first operand
    assert "!llvm.loop" not in str(free)
    machine = host().machine()
    small, large = (len(machine_code(str(m), machine)) for m in (rolled, free))
    assert small * 3 < large, (small, large)
    src = np.random.default_rng(0).standard_normal((3, 7, 64)).astype(np.float32)
    f = _jit(rolled, None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)
    for n in (0, 1, 17, 59):
        dst = np.zeros_like(src)
        f(dst.ctypes.data, src.ctypes.data, n)
        np.testing.assert_array_equal(dst[:, :, :n], src[:, :, 5:5 + n])
        assert not dst[:, :, n:].any()


def test_a_function_built_inside_a_loop_does_not_count_as_its_inner_loop():
    """A kernel built lazily while another function's loop is open (a GEMM's micro-kernel)
    has its own loops; the open loop holds no loop and stays unmarked. Loops built on
    two threads at once are marked each by their own nesting."""
    import threading

    module, fn, b = _function([I64], VOID)
    with irgen.for_range(b, fn.args[0]):
        other = ir.Function(module, ir.FunctionType(VOID, [I64]), "g")
        ob = ir.IRBuilder(other.append_basic_block("entry"))
        with irgen.for_range(ob, other.args[0]), irgen.for_range(ob, other.args[0]):
            pass
        ob.ret_void()
    b.ret_void()
    assert str(fn).count("!llvm.loop") == 0 and str(other).count("!llvm.loop") == 1
    texts = []

    def build():
        for _ in range(50):
            texts.append(str(_copy_3x7xn(True)).count("!llvm.loop"))

    threads = [threading.Thread(target=build) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert texts == [2] * 100
