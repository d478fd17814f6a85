"""The native backend's ABI: LLVM types, how each kiln dtype is stored and computed, and the
one signature every kernel has.

    void kernel(i8** args, i64* dims, i64* status)

`args` holds the node's input buffers then its output buffers; `dims` the run-time value of
each symbolic size, in the model's symbol order; `status[0]` is set (never cleared) when an
input value is out of range (see KernelBuilder.check): the kernel has gone on safely anyway.
Every module of codegen/llvm takes these from here, so none needs another to name a type.
"""

from __future__ import annotations

from llvmlite import ir

I1, I8, I16, I32, I64 = (ir.IntType(n) for n in (1, 8, 16, 32, 64))
F16, F32, F64 = ir.HalfType(), ir.FloatType(), ir.DoubleType()
VOID = ir.VoidType()
PTR = I8.as_pointer()
F32P = F32.as_pointer()

# storage type of each kiln dtype; bf16 is stored as i16 and computed in f32
STORAGE = {"f32": F32, "f16": F16, "bf16": I16, "f64": F64, "i32": I32, "i64": I64, "bool": I8,
           "i8": I8, "u8": I8, "i16": I16, "u16": I16, "u32": I32}
# the type a kernel computes in: the narrow integers in a signed type that holds each value
# (sign- or zero-extended on load, truncated on store, so + - * wrap as numpy's and ONNX's)
COMPUTE = {"f32": F32, "f16": F32, "bf16": F32, "f64": F64, "i32": I32, "i64": I64, "bool": I1,
           "i8": I32, "u8": I32, "i16": I32, "u16": I32, "u32": I64}
UNSIGNED = frozenset({"u8", "u16", "u32"})
DTYPE_OF = {F32: "f32", F64: "f64", I32: "i32", I64: "i64", I1: "bool"}  # of a compute type
BYTES = {I1: 1, I32: 4, F32: 4, I64: 8, F64: 8}  # of a compute type

KERNEL_TYPE = ir.FunctionType(VOID, [PTR.as_pointer(), I64.as_pointer(), I64.as_pointer()])


def declare(module: ir.Module, name: str, result: ir.Type, args: list[ir.Type],
            var_arg: bool = False) -> ir.Function:
    """The module's declaration of an external function (libc, an LLVM intrinsic), made on
    first use."""
    fn = module.globals.get(name)
    return fn if fn is not None else ir.Function(
        module, ir.FunctionType(result, args, var_arg=var_arg), name)
