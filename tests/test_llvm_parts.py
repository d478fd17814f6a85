"""A large module compiled in parts, in parallel (codegen/llvm/parts.py): the same outputs as
the module compiled whole, one definition of every global across the parts, and parts kept
in the compile caches and linked into libraries."""

from __future__ import annotations

import ctypes
import shutil
from pathlib import Path

import numpy as np
import pytest
from llvmlite import ir

import kiln
from kiln.compiler.codegen.llvm import cache, machine, parts, target
from kiln.compiler.codegen.llvm.loader import LoadedObject

ROOT = Path(__file__).resolve().parent.parent
LENET = ROOT / "examples" / "lenet.kiln"  # two convolutions and three GEMMs: shared helpers
RNG = np.random.default_rng(0)


class Compiles:
    """LeNet compiled cold in a fresh cache, its module cut into at most `parts` (however
    small); `made`: the object files of each compile_object since."""

    def __init__(self, monkeypatch, tmp_path):
        self.monkeypatch, self.tmp_path = monkeypatch, tmp_path
        self.made: list[tuple[bytes, ...]] = []
        real = machine.compile_object

        def spy(*args, **kw):
            result = real(*args, **kw)
            self.made.append(result[0])
            return result

        monkeypatch.setattr("kiln.compiler.driver.compile_object", spy)
        monkeypatch.setattr(parts, "PART_COST", 1)

    def __call__(self, count: int, cache_dir: str = "", **options):
        self.monkeypatch.setenv("KILN_LLVM_PARTS", str(count))
        self.monkeypatch.setenv("KILN_CACHE_DIR",
                                str(self.tmp_path / (cache_dir or f"cache{count}")))
        self.made.clear()
        model = kiln.compile(LENET, **{"seed": 3, **options})
        return model, self.made[-1]


@pytest.fixture
def split_in(monkeypatch, tmp_path):
    return Compiles(monkeypatch, tmp_path)


def test_a_split_compile_gives_the_outputs_of_a_whole_one(split_in):
    x = RNG.standard_normal((5, 1, 28, 28)).astype(np.float32)
    whole, (one,) = split_in(1)
    for count in (2, 3):
        split, objects = split_in(count)
        assert len(objects) == count
        np.testing.assert_allclose(split(x), whole(x), rtol=1e-6, atol=1e-6)
    reference = kiln.compile(LENET, seed=3, target="reference")
    np.testing.assert_allclose(whole(x), reference(x), rtol=1e-4, atol=1e-5)


def test_a_threaded_split_compile_gives_the_serial_outputs(split_in):
    x = RNG.standard_normal((64, 1, 28, 28)).astype(np.float32)
    serial, _ = split_in(1, "serial", threads=1)
    threaded, objects = split_in(3, "threaded", threads=2)
    assert len(objects) == 3
    np.testing.assert_allclose(threaded(x), serial(x), rtol=1e-5, atol=1e-5)


def test_parts_round_trip_through_both_caches(split_in, monkeypatch):
    x = RNG.standard_normal((3, 1, 28, 28)).astype(np.float32)
    cold, objects = split_in(2, "shared")
    assert len(objects) == 2
    warm = kiln.compile(LENET, seed=3)  # the model's entry: a library linked from both parts
    np.testing.assert_array_equal(warm(x), cold(x))

    def refuse(*_args, **_kw):
        raise AssertionError("compiled again")

    monkeypatch.setattr(parts, "compile_parts", refuse)
    monkeypatch.setattr(machine, "machine_code", refuse)
    split_in.made.clear()
    again = kiln.compile(LENET.read_text(), seed=3)  # source text: by the graph's entry
    assert split_in.made == [objects]
    np.testing.assert_array_equal(again(x), cold(x))
    for entry in Path(split_in.tmp_path / "shared").glob("g*.o"):
        entry.unlink()  # by the IR's entry
    again = kiln.compile(LENET.read_text(), seed=3)
    assert split_in.made[-1] == objects
    np.testing.assert_array_equal(again(x), cold(x))


def test_packed_objects_unpack_and_one_object_is_stored_as_it_always_was(tmp_path,
                                                                          monkeypatch):
    monkeypatch.setenv("KILN_CACHE_DIR", str(tmp_path))
    assert cache.pack_objects((b"\x7fELF one",)) == b"\x7fELF one"
    packed = cache.pack_objects((b"\x7fELF a", b"\x7fELF bc", b"\x7fELF def"))
    assert cache.unpack_objects(packed) == (b"\x7fELF a", b"\x7fELF bc", b"\x7fELF def")
    assert cache.unpack_objects(packed[:-1]) is None  # sizes that do not add up
    assert cache.unpack_objects(cache.OBJECTS + (1 << 60).to_bytes(8, "little")) is None
    assert cache.unpack_objects(b"\x7fELF old entry") == (b"\x7fELF old entry",)
    cache.store("0" * 64, b"\x7fELF an entry from before parts")
    assert cache.load_objects("0" * 64) == (b"\x7fELF an entry from before parts",)
    cache.store_objects("1" * 64, (b"\x7fELF a", b"\x7fELF b"))
    assert cache.load_objects("1" * 64) == (b"\x7fELF a", b"\x7fELF b")
    assert cache.load_objects("2" * 64) is None


I64 = ir.IntType(64)


def _counting_module() -> ir.Module:
    """`run` calls kernels k0..k5 (internal), each adding (its index + 1) * 10 to a mutable
    internal global through an internal helper; a constant table each kernel reads; `total`
    reads the global."""
    module = ir.Module("counting")
    module.triple = target._initialise().get_process_triple()
    count = ir.GlobalVariable(module, I64, "count")
    count.initializer, count.linkage = ir.Constant(I64, 0), "internal"
    table = ir.GlobalVariable(module, ir.ArrayType(I64, 6), "table")
    table.initializer = ir.Constant(table.value_type, [(i + 1) * 10 for i in range(6)])
    table.linkage, table.global_constant = "internal", True
    helper = ir.Function(module, ir.FunctionType(ir.VoidType(), [I64]), "add")
    helper.linkage = "internal"
    b = ir.IRBuilder(helper.append_basic_block())
    b.store(b.add(b.load(count), helper.args[0]), count)
    b.ret_void()
    run = ir.Function(module, ir.FunctionType(ir.VoidType(), []), "run")
    rb = ir.IRBuilder(run.append_basic_block())
    for k in range(6):
        kernel = ir.Function(module, ir.FunctionType(ir.VoidType(), []), f"k{k}")
        kernel.linkage = "internal"
        kernel.attributes.add("noinline")
        kb = ir.IRBuilder(kernel.append_basic_block())
        kb.call(helper, [kb.load(kb.gep(table, [ir.Constant(I64, 0), ir.Constant(I64, k)]))])
        kb.ret_void()
        rb.call(kernel, [])
    rb.ret_void()
    total = ir.Function(module, ir.FunctionType(I64, []), "total")
    tb = ir.IRBuilder(total.append_basic_block())
    tb.ret(tb.load(count))
    return module


def test_globals_are_defined_once_and_helpers_copied_into_each_part(monkeypatch):
    monkeypatch.setattr(parts, "PART_COST", 1)
    module = _counting_module()
    texts = parts.split(module, 3)
    assert len(texts) == 3
    # (default visibility, not hidden: other parts reach it through the GOT, in range
    # wherever the JIT maps their objects)
    definitions = [t.count('@"count" = global') for t in texts]
    assert definitions == [1, 0, 0]
    assert all('@"count" = external global' in t for t in texts[1:])
    assert not any(" hidden " in t for t in texts)
    assert all('define internal void @"add"' in t for t in texts)  # the helper, copied
    assert all('@"table" = internal constant' in t for t in texts)
    kernels = [sum(f'define void @"k{k}"' in t or f'define internal void @"k{k}"' in t
                   for t in texts) for k in range(6)]
    assert kernels == [1] * 6  # each kernel compiled once
    tm = target.host().machine()
    objects = parts.compile_parts(texts, target.host(), tm)
    code = LoadedObject(objects, ["run", "total"])
    ctypes.CFUNCTYPE(None)(code.address("run"))()
    ctypes.CFUNCTYPE(None)(code.address("run"))()
    assert ctypes.CFUNCTYPE(ctypes.c_int64)(code.address("total"))() == 2 * 210


def test_a_large_helper_of_several_roots_is_compiled_once(monkeypatch):
    """A helper at least SHARED_COST that several kernels reach becomes a root: defined (and
    exported) in one part and declared in the others, not copied into each; the totals are
    those of the copied helper."""
    monkeypatch.setattr(parts, "PART_COST", 1)
    monkeypatch.setattr(parts, "SHARED_COST", 1)
    texts = parts.split(_counting_module(), 3)
    assert len(texts) == 3
    defined = [('define void @"add"' in t, 'define internal void @"add"' in t) for t in texts]
    assert sum(d for d, _ in defined) == 1 and not any(i for _, i in defined)
    assert sum('declare void @"add"' in t for t in texts) == 2
    objects = parts.compile_parts(texts, target.host(), target.host().machine())
    code = LoadedObject(objects, ["run", "total"])
    ctypes.CFUNCTYPE(None)(code.address("run"))()
    assert ctypes.CFUNCTYPE(ctypes.c_int64)(code.address("total"))() == 210


def test_a_child_that_fails_leaves_its_part_to_this_process(monkeypatch):
    monkeypatch.setattr(parts.sys, "executable", "/nonexistent/python")
    monkeypatch.setattr(parts, "PART_COST", 1)
    texts = parts.split(_counting_module(), 2)
    objects = parts.compile_parts(texts, target.host(), target.host().machine())
    code = LoadedObject(objects, ["run", "total"])
    ctypes.CFUNCTYPE(None)(code.address("run"))()
    assert ctypes.CFUNCTYPE(ctypes.c_int64)(code.address("total"))() == 210


@pytest.mark.skipif(not shutil.which("cc"), reason="linking needs cc")
def test_a_library_links_every_part(split_in, tmp_path, monkeypatch):
    from kiln.cli import main

    monkeypatch.setattr(parts, "PART_COST", 1)
    monkeypatch.setenv("KILN_LLVM_PARTS", "3")
    monkeypatch.setenv("KILN_CACHE_DIR", str(tmp_path / "aot-cache"))
    assert main(["compile", str(LENET), "--target", "native", "-o",
                 str(tmp_path / "lenet.so")]) == 0
    library = kiln.load_compiled(tmp_path / "lenet.so")
    x = RNG.standard_normal((4, 1, 28, 28)).astype(np.float32)
    whole, _ = split_in(1, seed=0)  # the library's initial values: seed 0
    np.testing.assert_allclose(library(x), whole(x), rtol=1e-5, atol=1e-6)


def test_the_module_text_from_printed_bodies_is_the_modules_own(monkeypatch, tmp_path):
    """A module's functions are printed once (parts.bodies_of), for the cache key's text and
    for the parts: that text is exactly str(module), so cache keys do not move."""
    built = []
    real = machine.build_module

    def spy(*args, **kw):
        result = real(*args, **kw)
        built.append(result[0])
        return result

    monkeypatch.setattr(machine, "build_module", spy)
    monkeypatch.setenv("KILN_CACHE_DIR", str(tmp_path / "cache"))
    kiln.compile(LENET, seed=3, threads=2)
    (module,) = built
    bodies = parts.bodies_of(module)
    assert len(bodies) > 10
    assert parts.module_text(module, bodies) == str(module)
