"""precision="bf16": matmul and convolution as bf16 dot products with f32 sums (AVX512_BF16).

Both operands of the GEMM are rounded to bf16 (round to nearest even, as vcvtne2ps2bf16 does)
and stored in pairs along the sum: a 32-bit word holds elements k and k+1 (k even, k in the
low half), which is what vdpbf16ps multiplies: per f32 lane, acc += a[k]*b[k] + a[k+1]*b[k+1]
(each product exact in f32, the sums rounded in f32). An odd depth's last pair has a zero high
half. The pairs sit where the f32 layout had its floats, at half the depth, so the GEMM's
packed buffers, prepacked weights and their addressing keep their f32 shapes:

- a packed A row (KC floats): words 0 .. ceil(kc/2) hold the pairs;
- a B panel ([kc, NR] floats): pair row q (NR words) at q * NR, for rows 2q and 2q + 1;
- the prepacked weights (`prepack_a_bf16`, `prepack_b_bf16`): the same arrays as the f32
  ones, paired the same way when the weights are bound (once, not per call).

The activations are converted when the GEMM packs them (every call); the weights when they are
bound. Only the GEMM changes: every other kernel computes in f32 as before.
"""

from __future__ import annotations

import os

from llvmlite import ir

from ...errors import KilnError
from .abi import F32, I32, declare
from .irgen import Vectors, fold, for_range, i64
from .microkernels import Tiling, micro_function
from .microkernels import _store_tile as store_tile
from .packing import prepack_a_bf16, prepack_b_bf16, round_bits  # noqa: F401  (re-exported)

PRECISIONS = ("f32", "bf16")
FEATURE = "avx512bf16"  # LLVM's name of AVX512_BF16 (vdpbf16ps, vcvtne2ps2bf16)
WIDTH = 16  # f32 lanes of a zmm register: the bf16 GEMM is AVX-512 only
CHAINS = {1: 4, 2: 2}  # micro-kernel height -> interleaved sums (see `micro_kernel`)


def check(precision: object, target: str) -> None:
    """KilnError unless `precision` is one kiln compiles for `target` ("native", ...)."""
    if precision not in PRECISIONS:
        raise KilnError("K0602", f"precision must be one of {', '.join(map(repr, PRECISIONS))}, "
                        f"not {precision!r}")
    if precision != "f32" and target != "native":
        raise KilnError("K0972", f'precision="{precision}" is for target="native" only, '
                        f'not {target!r}',
                        hint="the reference and ONNX targets compute in f32; "
                             "leave precision out for them")


def require(cpu) -> None:
    """K0971 when the target CPU `cpu` (a target.Target) has no AVX512_BF16: no fallback."""
    if FEATURE not in cpu.feature_set:
        raise KilnError("K0971", f'precision="bf16" needs the AVX512_BF16 instructions '
                        f'({FEATURE}), which the target CPU {cpu.cpu} lacks',
                        hint='leave precision out (f32) on this CPU')


# LLVM IR: the activations, when the GEMM packs them -----------------------------------------
class _BFloat(ir.types.Type):
    """LLVM's bfloat (llvmlite has no such type): only its vectors are used, as the
    intrinsics' operands, made by bitcasts of f32 vectors holding pairs."""

    def _to_string(self) -> str:
        return "bfloat"

    def __eq__(self, other) -> bool:
        return isinstance(other, _BFloat)

    def __hash__(self) -> int:
        return hash("bfloat")


F32X16 = ir.VectorType(F32, WIDTH)
BF16X32 = ir.VectorType(_BFloat(), 2 * WIDTH)


def dot(b: ir.IRBuilder, acc: ir.Value, x: ir.Value, y: ir.Value) -> ir.Value:
    """acc + the pairwise products of x and y (<16 x float> vectors holding bf16 pairs)."""
    fn = declare(b.module, "llvm.x86.avx512bf16.dpbf16ps.512", F32X16,
                 [F32X16, BF16X32, BF16X32])
    return b.call(fn, [acc, b.bitcast(x, BF16X32), b.bitcast(y, BF16X32)])


def _convert(b: ir.IRBuilder, low: ir.Value, high: ir.Value) -> ir.Value:
    """Two <16 x float> rounded to bf16 as one <16 x float> of pairs: low's 16 values then
    high's, in order (vcvtne2ps2bf16 puts its second operand in the low half)."""
    fn = declare(b.module, "llvm.x86.avx512bf16.cvtne2ps2bf16.512", BF16X32, [F32X16, F32X16])
    return b.bitcast(b.call(fn, [high, low]), F32X16)


def pair_row(b: ir.IRBuilder, ptr: ir.Value, count: ir.Value) -> None:
    """In place: `count` floats at ptr (a packed A row) as ceil(count/2) pair words from ptr
    on. Word q is written after floats 2q, 2q + 1 are read, so going up is safe."""
    vec = Vectors(b, WIDTH)
    with for_range(b, count, step=2 * WIDTH, name="pairs", index="p") as at:
        left = b.sub(count, at)
        src = b.gep(ptr, [at])
        low = vec.masked_load(src, 0, vec.mask(left, 0))  # zero past the end: an odd last pair
        high = vec.masked_load(src, WIDTH, vec.mask(left, WIDTH))
        vec.store(_convert(b, low, high), b.gep(ptr, [b.sdiv(at, i64(2))]))


def pair_panel(b: ir.IRBuilder, ptr: ir.Value, rows: ir.Value, nr: int) -> None:
    """In place: a [rows, nr] f32 panel at ptr as ceil(rows/2) rows of nr pair words (row q
    pairs rows 2q and 2q + 1, a zero row past an odd end). Pair row q is written after rows
    2q and 2q + 1 are read."""
    vec = Vectors(b, WIDTH)
    zero = ir.Constant(F32X16, None)
    order = ir.Constant(ir.VectorType(I32, 2 * WIDTH),
                        [k for j in range(WIDTH) for k in (j, j + WIDTH)])
    halves = ir.VectorType(ir.IntType(16), 2 * WIDTH)
    with for_range(b, b.sdiv(b.add(rows, i64(1)), i64(2)), name="panel", index="q") as q:
        first = b.mul(q, i64(2))
        row0 = b.gep(ptr, [b.mul(first, i64(nr))])
        row1 = b.gep(row0, [i64(nr)])
        second = b.icmp_signed("<", b.add(first, i64(1)), rows)
        x = [vec.load(row0, v * WIDTH) for v in range(nr // WIDTH)]
        y = []
        for v in range(nr // WIDTH):  # a row past an odd end is zero, never read
            y.append(b.select(second, vec.masked_load(row1, v * WIDTH, _all(b, second)), zero))
        out = b.gep(ptr, [b.mul(q, i64(nr))])
        for v in range(nr // WIDTH):
            lanes = b.bitcast(_convert(b, x[v], y[v]), halves)  # x's 16, then y's: interleave
            mixed = b.shuffle_vector(lanes, lanes, order)
            vec.store(b.bitcast(mixed, F32X16), out, v * WIDTH)


def _all(b: ir.IRBuilder, flag: ir.Value) -> ir.Value:
    """An i1 as a <16 x i1> mask of every lane."""
    return Vectors(b, WIDTH).splat(flag)


def micro_kernel(module: ir.Module, t: Tiling, height: int) -> ir.Function:
    """microkernels.micro_kernel on pairs: C[:height, :cols] (+)= A_panel @ B with the A rows
    (KC words apart) and B (pair rows `b_stride` words apart) holding bf16 pairs; one
    vdpbf16ps per row and B vector per pair of the sum. `kc` counts elements, not pairs."""
    fn, built = micro_function(module, f"kiln_gemm_bf16_{height}x{t.nr}x{t.kc}")
    if built:
        return fn
    kc, a, b_ptr, b_stride, c, ldc, cols, add = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    vec = Vectors(b, WIDTH)
    zero = ir.Constant(vec.type, None)

    def update(q, accs):  # one pair of rank-1 updates
        row = b.gep(b_ptr, [b.mul(q, b_stride)])
        bv = [vec.load(row, v * WIDTH) for v in range(2)]
        a_col = b.gep(a, [q])
        out = []
        for i in range(height):
            ai = vec.splat(b.load(b.gep(a_col, [i64(i * t.kc)])))
            out += [dot(b, accs[2 * i + v], ai, bv[v]) for v in range(2)]
        return out

    # a short tile has too few accumulators to hide vdpbf16ps's latency: it sums `chains`
    # interleaved pairs into separate accumulators, added up at the end
    chains = CHAINS.get(height, 1)
    size = 2 * height
    pairs = b.sdiv(b.add(kc, i64(1)), i64(2))
    groups = b.sdiv(pairs, i64(chains))

    def group(g, accs):
        out = []
        for chain in range(chains):
            q = b.add(b.mul(g, i64(chains)), i64(chain))
            out += update(q, accs[chain * size:(chain + 1) * size])
        return out

    sums = fold(b, groups, [zero] * (size * chains), group, name="k", index="g")
    accs = fold(b, pairs, sums[:size], update, start=b.mul(groups, i64(chains)),
                name="tail", index="q")  # the pairs left over, into the first chain
    for chain in range(1, chains):
        accs = [b.fadd(x, y)
                for x, y in zip(accs, sums[chain * size:(chain + 1) * size], strict=True)]
    with b.if_else(b.icmp_signed("==", cols, i64(t.nr))) as (whole, part):
        with whole:
            store_tile(vec, c, ldc, accs, height, 2, None, add)
        with part:  # through masks at the right edge
            store_tile(vec, c, ldc, accs, height, 2,
                       [vec.mask(cols, v * WIDTH) for v in range(2)], add)
    b.ret_void()
    return fn


# AMX: the same pairs through tile registers (Sapphire Rapids and later) ---------------------
# A tile is 16 rows of 64 bytes. The paired layouts above are already what AMX's TDPBF16PS
# reads: a packed A row's 16 words from pair 16s on are one row of an A tile (the rows KC
# words apart); 16 pair rows of a B panel, 16 words of each, are a B tile (the "VNNI" layout,
# rows NR words apart). One configuration serves every tile: 16 rows of 64 bytes (C: 16 x 16
# floats). C tiles tmm0-3 (row block i, column half v: 2i + v), A tiles tmm4-5, B tiles tmm6-7.
AMX_FEATURES = ("amx-tile", "amx-bf16")
AMX_ENV = "KILN_AMX"  # "0": the bf16 GEMM on AVX512_BF16 only, even where AMX is there
AMX_HEIGHTS = (32, 16)  # the micro-kernels on tiles: 2 or 1 A tiles high, 2 B tiles wide
TILE_ROWS = 16  # rows of every tile; a B tile's are pairs: 32 elements of the sum
_TILE_C, _TILE_A, _TILE_B = 0, 4, 6
# Linux gives a process AMX's tile data only when asked (arch_prctl ARCH_REQ_XCOMP_PERM with
# XFEATURE_XTILEDATA; Linux 5.16 on); without it the first tile instruction is a SIGILL
_ARCH_PRCTL, _ARCH_REQ_XCOMP_PERM, _XFEATURE_XTILEDATA = 158, 0x1023, 18


def amx(cpu) -> bool:
    """Whether the bf16 GEMM for the target CPU `cpu` (a target.Target) is built with AMX
    micro-kernels: the CPU has AMX-BF16 and KILN_AMX=0 is not set. The code still asks the
    kernel for the tiles when it runs (`amx_ready`) and uses the AVX512_BF16 micro-kernels
    where that is refused, so a library built here runs on any AVX512_BF16 machine."""
    return os.environ.get(AMX_ENV, "1") != "0" and all(f in cpu.feature_set
                                                        for f in AMX_FEATURES)


def gemm_over_winograd(module: ir.Module, precision: str) -> bool:
    """Whether a convolution that the layout pass gave Winograd F(4, 3) (which computes in
    f32) goes through the bf16 GEMM instead: on AMX tiles that is the faster of the two
    (ResNet-18 at batch 1 on one thread: 8.6 ms against 14.8 ms with Winograd in f32)."""
    return precision == "bf16" and uses_amx(module)


def use_amx(module: ir.Module) -> None:
    """Mark `module` (its bf16 GEMM functions) as built with AMX (`uses_amx`)."""
    module.kiln_amx = True


def uses_amx(module: ir.Module) -> bool:
    return getattr(module, "kiln_amx", False)


def _tile(name: str, module: ir.Module, args: list[ir.Type]) -> ir.Function:
    return declare(module, f"llvm.x86.{name}", ir.VoidType(), args)


def amx_ready(b: ir.IRBuilder) -> ir.Value:
    """An i1: whether this process may use AMX's tiles. The first call asks Linux for them
    (one arch_prctl system call) and keeps the answer in a global; asking again is harmless,
    so threads racing on the first call are safe."""
    module = b.module
    fn = module.globals.get("kiln_amx_ready")
    if fn is None:
        state = ir.GlobalVariable(module, ir.IntType(64), "kiln_amx_state")
        state.linkage = "internal"
        state.initializer = ir.Constant(ir.IntType(64), 0)  # 0 not asked, 1 granted, 2 refused
        fn = ir.Function(module, ir.FunctionType(ir.IntType(1), []), "kiln_amx_ready")
        fn.linkage = "internal"
        fb = ir.IRBuilder(fn.append_basic_block("entry"))
        known = fb.load(state)
        with fb.if_then(fb.icmp_signed("==", known, i64(0)), likely=False):
            syscall = ir.FunctionType(ir.IntType(64), [ir.IntType(64)] * 3)
            answer = fb.asm(syscall, "syscall", "={rax},{rax},{rdi},{rsi},~{rcx},~{r11},~{memory}",
                            [i64(_ARCH_PRCTL), i64(_ARCH_REQ_XCOMP_PERM), i64(_XFEATURE_XTILEDATA)],
                            True, name="arch_prctl")
            granted = fb.icmp_signed("==", answer, i64(0))
            fb.store(fb.select(granted, i64(1), i64(2)), state)
        fb.ret(fb.icmp_signed("==", fb.load(state), i64(1)))
    return b.call(fn, [])


def configure_tiles(b: ir.IRBuilder) -> None:
    """Load the one tile configuration (palette 1, eight tiles of 16 rows x 64 bytes)."""
    module = b.module
    config = module.globals.get("kiln_amx_config")
    if config is None:
        data = bytearray(64)
        data[0] = 1  # palette 1
        for tile in range(8):
            data[16 + 2 * tile] = 64  # bytes per row (little-endian u16)
            data[48 + tile] = TILE_ROWS
        config = ir.GlobalVariable(module, ir.ArrayType(ir.IntType(8), 64), "kiln_amx_config")
        config.linkage = "internal"
        config.global_constant = True
        config.align = 64
        config.initializer = ir.Constant(config.type.pointee, data)
    b.call(_tile("ldtilecfg", module, [ir.IntType(8).as_pointer()]),
           [b.bitcast(config, ir.IntType(8).as_pointer())])


def release_tiles(b: ir.IRBuilder) -> None:
    """Back to the tiles' initial state (a thread switch then saves no tile data)."""
    b.call(_tile("tilerelease", b.module, []), [])


def amx_micro_kernel(module: ir.Module, t: Tiling, height: int) -> ir.Function:
    """`micro_kernel` on AMX tiles, `height` 16 or 32 rows: per 32 elements of the sum (16
    pairs), the B panel's two tiles, the A panel's height/16 tiles and their products into
    the C tiles. The sum is read in whole tiles: the packings leave zero pairs up to a
    multiple of 16 (gemm._Gemm.packed). Whole 32-column tiles go straight to and from C (C +=
    loads C into the tiles first); a partial one through a buffer and masked stores."""
    fn, built = micro_function(module, f"kiln_gemm_amx_{height}x{t.nr}x{t.kc}")
    if built:
        return fn
    kc, a, b_ptr, b_stride, c, ldc, cols, add = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    i8p, byte = ir.IntType(8).as_pointer(), ir.IntType(8)
    load = _tile("tileloadd64", module, [byte, i8p, ir.IntType(64)])
    store = _tile("tilestored64", module, [byte, i8p, ir.IntType(64)])
    zero = _tile("tilezero", module, [byte])
    product = _tile("tdpbf16ps", module, [byte, byte, byte])
    blocks = height // TILE_ROWS
    c_tiles = [(i, v) for i in range(blocks) for v in range(2)]

    def tile(n):
        return ir.Constant(byte, n)

    def c_at(base, i, v, row_floats):  # the C tile (i, v) in a [.., 32] array of rows
        return b.bitcast(b.gep(base, [b.add(b.mul(i64(i * TILE_ROWS), row_floats),
                                            i64(v * WIDTH))]), i8p)

    buffer = b.alloca(ir.ArrayType(F32, height * t.nr), name="c_tiles")  # a partial tile's
    buffer.align = 64
    ldc_bytes = b.mul(ldc, i64(4))
    whole = b.icmp_signed("==", cols, i64(t.nr))
    with b.if_else(b.and_(add, whole)) as (from_c, fresh):
        with from_c:
            for i, v in c_tiles:
                b.call(load, [tile(_TILE_C + 2 * i + v), c_at(c, i, v, ldc), ldc_bytes])
        with fresh:
            for i, v in c_tiles:
                b.call(zero, [tile(_TILE_C + 2 * i + v)])
    pairs = b.sdiv(b.add(kc, i64(1)), i64(2))
    steps = b.sdiv(b.add(pairs, i64(TILE_ROWS - 1)), i64(TILE_ROWS))
    a_bytes, b_bytes = i64(t.kc * 4), b.mul(b_stride, i64(4))
    with for_range(b, steps, name="k", index="s") as s:
        first = b.mul(s, i64(TILE_ROWS))  # pair rows of B, pair words of A
        panel = b.gep(b_ptr, [b.mul(first, b_stride)])
        # each tile loaded just before its first product (tiles are not renamed: a load
        # waits for the products still reading that tile): 7.1 ns a product in a loop of
        # 32-row calls on an Emerald Rapids core, against 22.8 ns with all loads first
        for i, v in c_tiles:
            if i == 0:
                b.call(load, [tile(_TILE_B + v), b.bitcast(b.gep(panel, [i64(v * WIDTH)]),
                                                            i8p), b_bytes])
            if v == 0:
                rows = b.gep(a, [b.add(first, i64(i * TILE_ROWS * t.kc))])
                b.call(load, [tile(_TILE_A + i), b.bitcast(rows, i8p), a_bytes])
            b.call(product, [tile(_TILE_C + 2 * i + v), tile(_TILE_A + i), tile(_TILE_B + v)])
    with b.if_else(whole) as (straight, masked):
        with straight:
            for i, v in c_tiles:
                b.call(store, [tile(_TILE_C + 2 * i + v), c_at(c, i, v, ldc), ldc_bytes])
        with masked:
            base = b.gep(buffer, [i64(0), i64(0)])
            for i, v in c_tiles:
                b.call(store, [tile(_TILE_C + 2 * i + v), c_at(base, i, v, i64(t.nr)),
                               i64(t.nr * 4)])
            vec = Vectors(b, WIDTH)
            accs = [vec.load(b.gep(base, [i64(r * t.nr)]), v * WIDTH)
                    for r in range(height) for v in range(2)]
            store_tile(vec, c, ldc, accs, height, 2,
                       [vec.mask(cols, v * WIDTH) for v in range(2)], add)
    b.ret_void()
    return fn
