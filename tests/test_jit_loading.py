"""Native code is loaded into the process by compiler/codegen/llvm/loader.LoadedObject.

llvmlite's preallocating memory manager for MCJIT aborted the whole process (an assertion in
its allocateSection) when an object's writable data, with the global offset table, ended just
below a page: it budgets the GOT entries of accesses to globals but not those of the stubs
for calls out of the object. A small ResNet's profiled train step hit it. These objects are
built the same way at every size across that window."""

import textwrap

from hostile._hostile import run_child

SWEEP = textwrap.dedent("""
    import ctypes, math
    from llvmlite import ir
    import llvmlite.binding as llvm
    from kiln.compiler.codegen.llvm import target
    from kiln.compiler.codegen.llvm.loader import LoadedObject

    machine = target.host().machine()
    f32, i8, i64 = ir.FloatType(), ir.IntType(8), ir.IntType(64)
    EXTERNAL = ["expf", "logf", "sinf", "cosf", "tanhf", "atanf", "erff", "cbrtf"]

    def obj(bss):
        # a zeroed buffer of `bss` bytes, 20 globals read through the GOT, calls to libm
        m = ir.Module("m")
        m.triple = llvm.get_process_triple()
        buf = ir.GlobalVariable(m, ir.ArrayType(i8, bss), "buf")
        buf.initializer = ir.Constant(buf.type.pointee, None)
        buf.linkage = "internal"
        fn = ir.Function(m, ir.FunctionType(f32, [f32]), "f")
        b = ir.IRBuilder(fn.append_basic_block())
        acc = fn.args[0]
        for k in range(20):
            g = ir.GlobalVariable(m, i8, f"g{k}")
            g.initializer = ir.Constant(i8, k % 2)
            acc = b.fadd(acc, b.uitofp(b.load(g), f32))
        for name in EXTERNAL:
            acc = b.fadd(acc, b.call(ir.Function(m, ir.FunctionType(f32, [f32]), name), [acc]))
        b.store(ir.Constant(i8, 1), b.gep(buf, [ir.Constant(i64, 0), ir.Constant(i64, bss - 1)]))
        b.ret(acc)
        return machine.emit_object(llvm.parse_assembly(str(m)))

    results = set()
    for bss in range(3584, 4352, 8):
        code = LoadedObject((obj(bss),), ["f"])
        results.add(ctypes.CFUNCTYPE(ctypes.c_float, ctypes.c_float)(code.address("f"))(0.25))
    (value,) = results
    assert math.isfinite(value), value
    print("loaded", value)
""")


def test_objects_whose_data_ends_near_a_page_boundary_load_and_run():
    outcome = run_child(SWEEP, timeout=300)
    assert not outcome.timed_out and not outcome.crashed, outcome.stderr[-2000:]
    assert outcome.returncode == 0, outcome.stderr[-2000:]
    assert "loaded" in outcome.stdout
