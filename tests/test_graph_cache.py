"""The compile cache by graph (codegen/llvm/graphcache.py): a warm compile builds no LLVM IR,
and only the same graph finds the entry."""

from __future__ import annotations

import numpy as np
import pytest

import kiln
from kiln.compiler.codegen.llvm import graphcache, machine, target
from kiln.compiler.errors import KilnError

SRC = """\
model M(scale: float = 2.0) {
  param w: [4, 3] = init.normal()
  forward(x: f32[B, 4], i: i64[K]) -> f32[K, 3] {
    h = relu(x @ w) * scale
    return gather(h, i, axis = 0)
  }
}
"""


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("KILN_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _no_ir(monkeypatch):
    def refuse(*_args, **_kw):
        raise AssertionError("the LLVM IR was built again")

    monkeypatch.setattr(machine, "build_module", refuse)


def test_a_warm_compile_builds_no_ir_and_runs_the_same(fresh_cache, monkeypatch):
    x = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    i = np.array([4, 0, 2], np.int64)
    cold = kiln.compile(SRC, seed=1)
    assert any(p.name.startswith("g") for p in fresh_cache.iterdir())
    _no_ir(monkeypatch)
    warm = kiln.compile(SRC, seed=1)
    np.testing.assert_array_equal(warm(x, i), cold(x, i))
    # new weights are data: the same code, found by graph
    other = kiln.compile(SRC, seed=2)
    ref = kiln.compile(SRC, seed=2, target="reference")
    np.testing.assert_allclose(other(x, i), ref(x, i), rtol=1e-5, atol=1e-6)
    # a failure found at run time still points at its line, through the cached layout
    with pytest.raises(KilnError) as info:
        warm(x, np.array([7], np.int64))
    assert info.value.code == "K0505" and info.value.span.line == 5


def test_another_graph_does_not_find_the_entry(fresh_cache, monkeypatch):
    kiln.compile(SRC, seed=1)
    _no_ir(monkeypatch)
    for changed in (SRC.replace("relu", "tanh"), SRC.replace("[4, 3]", "[4, 5]").replace(
            "[K, 3]", "[K, 5]"), SRC.replace("-> f32[K, 3] {", "-> f32[K, 3] where B % 4 == 0 {")):
        with pytest.raises(AssertionError, match="built again"):
            kiln.compile(changed, seed=1)
    # a model argument that only changes a constant's value: the same code, reading 3.0
    x = np.random.default_rng(1).standard_normal((3, 4)).astype(np.float32)
    i = np.array([2, 1], np.int64)
    got = kiln.compile(SRC, seed=1, args={"scale": 3.0})(x, i)
    want = kiln.compile(SRC, seed=1, args={"scale": 3.0}, target="reference")(x, i)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert np.abs(want).max() > 0


def test_a_damaged_or_unfitting_entry_is_rebuilt(fresh_cache, monkeypatch):
    x = np.ones((2, 4), np.float32)
    i = np.array([1], np.int64)
    want = kiln.compile(SRC, seed=1)(x, i)
    (entry,) = [p for p in fresh_cache.iterdir() if p.name.startswith("g")]
    data = bytearray(entry.read_bytes())
    data[-10] ^= 0xFF  # damaged: the checksum no longer matches, so it is never loaded
    entry.write_bytes(bytes(data))
    np.testing.assert_array_equal(kiln.compile(SRC, seed=1)(x, i), want)
    model = kiln.compile(SRC, seed=1).lowered()
    name = graphcache.key(model, target.host(), {"with_plan": False, "profile": False})
    assert graphcache.load(name, model) is not None
    other = kiln.compile(SRC.replace("relu", "tanh"), seed=1).lowered()
    assert graphcache.load(name, other) is None or graphcache.key(
        other, target.host(), {"with_plan": False, "profile": False}) != name


def test_constant_values_are_data_but_their_sharing_is_not():
    """The code reads a constant as an array, as a weight: graphs differing only in constant
    values share object code; two nodes sharing one array are listed once in the layout, so
    sharing is part of the key."""
    from kiln.compiler.builder import GraphBuilder
    from kiln.compiler.ir import Graph
    from kiln.compiler.types import TensorType

    def model_with(first, second):
        g = Graph()
        gb = GraphBuilder(g)
        x = g.add_input("x", TensorType("f32", (3,)), None)
        g.outputs = [gb.add(gb.add(x, gb.constant(first)), gb.constant(second))]

        class Model:
            symbols: list = []
            graph = g

        return Model()

    host = target.host()
    key = lambda m: graphcache.key(m, host, {})  # noqa: E731
    one, two = np.ones(3, np.float32), np.full(3, 2.0, np.float32)
    assert key(model_with(one, two)) == key(model_with(two, one.copy()))
    assert key(model_with(one, one)) != key(model_with(one, one.copy()))
    assert key(model_with(one, np.ones(4, np.float32)[:3])) == key(model_with(one, two))


def test_another_compiler_does_not_find_the_entry(fresh_cache, monkeypatch):
    """Code built by a changed code generator (the same version number) is not served by
    graph: the key carries a digest of the compiler's source."""
    kiln.compile(SRC, seed=1)
    _no_ir(monkeypatch)
    monkeypatch.setattr(graphcache, "compiler_digest", lambda: "another compiler")
    with pytest.raises(AssertionError, match="built again"):
        kiln.compile(SRC, seed=1)
