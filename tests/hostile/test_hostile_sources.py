"""Hostile model sources (issue 12 #11, #13, #14): compile-time work without bound, names that
break paths, literals Python cannot read. Each is a located KilnError, never a hang or a
traceback; the attacks that used to hang run in a child process with a time limit."""

from __future__ import annotations

import re
import textwrap

import pytest
from _hostile import assert_kiln_error, run_child

import kiln
from kiln import KilnError

FORWARD = "model M {\n  forward(x: f32[B]) -> f32[B] { return x * X }\n}\n"


def error_of(src: str) -> KilnError:
    with pytest.raises(KilnError) as info:
        kiln.load(textwrap.dedent(src)).elaborate()
    return info.value


def in_child(src: str, timeout: float = 60) -> None:
    """Elaborate `src` in a child process: it must end with a K0206 KilnError, not hang."""
    outcome = run_child(f"""
        import kiln
        try:
            kiln.load({src!r}).elaborate()
        except kiln.KilnError as err:
            print("KilnError", err.code)
            print(err)
    """, timeout)
    assert_kiln_error(outcome, "K0206")


# -- #11: compile-time denial of service ----------------------------------------------------
@pytest.mark.parametrize("expr", [
    "10 ** 100000000",                     # hung computing a 332-million-bit int
    "2 ** 2 ** 2 ** 2 ** 2 ** 2",          # 62 s, then MemoryError
    "len(\"ab\" * 10**10)",                # a 20 GB string
    "len([i * j for i in range(100000) for j in range(100000)])",  # 10^10 items
    "len([i for i in range(100000) for j in range(100000) if false])",  # 10^10 steps, no items
])
def test_compile_time_values_are_bounded(expr):
    in_child(f"const X = {expr}\n{FORWARD}")


def test_power_too_large_is_refused_before_computing_it():
    err = error_of(f"const X = 10 ** 100000000\n{FORWARD}")
    assert err.code == "K0206" and "10 ** 100000000 does not fit in 64 bits" in err.message
    assert (err.span.line, err.span.col, err.span.end_col) == (1, 11, 26)


def test_compile_time_ints_are_int64():
    err = error_of(f"const X = 9223372036854775807 + 1\n{FORWARD}")
    assert err.code == "K0206" and "9223372036854775808" in err.message
    err = error_of(f"const X = int(1e300)\n{FORWARD}")
    assert err.code == "K0206" and "997-bit" in err.message
    assert kiln.load(f"const X = 9223372036854775807\n{FORWARD}").elaborate() is not None


def test_string_formatting_is_not_an_operator():
    err = error_of(f"const X = len(\"%999999999d\" % 1)\n{FORWARD}")
    assert err.code == "K0202" and "% is not defined on strings" in err.message


def test_list_doubling_is_bounded():
    err = error_of("""
    model M {
      forward(x: f32[B]) -> f32[B] {
        xs = [1]
        for i in range(40) { xs = xs + xs }
        return x
      }
    }""")
    assert err.code == "K0206" and "this list would have 131,072 items" in err.message
    assert (err.span.line, err.span.col) == (5, 31)


def test_symbolic_size_powers_are_bounded():
    err = error_of("""
    model M {
      forward(x: f32[B]) -> f32[B] {
        n = B ** 100000000
        return x
      }
    }""")
    assert err.code == "K0206" and "power 100000000" in err.message


def test_a_range_longer_than_int64_is_refused():
    err = error_of(f"const X = len(range(-9223372036854775807, 9223372036854775807))\n{FORWARD}")
    assert err.code == "K0206" and "this range would have 18,446,744,073,709,551,614" in err.message


def test_nested_loops_stop_at_the_graph_size_limit():
    in_child("""
        model M {
          forward(x: f32[B]) -> f32[B] {
            y = x
            for i in range(1000) { for j in range(1000) { y = y + x } }
            return y
          }
        }""", timeout=120)


@pytest.mark.parametrize("src", [
    # 2^60 fn calls, each level nested only 60 deep
    "fn f(n: int) { return 0 if n == 0 else f(n - 1) + f(n - 1) }\n"
    "model M {\n  forward(x: f32[B]) -> f32[B] { return x * f(60) }\n}\n",
    # 2^50 block instances
    "block T(n: int) {\n  if n > 0 {\n    a = T(n - 1)\n    b = T(n - 1)\n  }\n"
    "  forward(x: f32[B]) -> f32[B] { return x }\n}\n"
    "model M {\n  t = T(50)\n  forward(x: f32[B]) -> f32[B] { return x }\n}\n",
])
def test_exponential_calls_are_bounded(src):
    in_child(src, timeout=120)


def test_the_unrolling_limit_names_the_chain_of_uses():
    err = error_of("""
    fn f(n: int) { return 0 if n == 0 else f(n - 1) + f(n - 1) }
    model M {
      forward(x: f32[B]) -> f32[B] { return x * f(60) }
    }""")
    assert err.code == "K0206" and "loop iterations" in err.message
    assert err.notes[-1] == "in f, used at <source>:4:45"


# -- #14: literals Python cannot read --------------------------------------------------------
def test_huge_int_literal_is_located():
    err = error_of(f"const X = {'9' * 5000}\n{FORWARD}")  # int() refuses 4300+ digits
    assert err.code == "K0206" and "int literal" in err.message
    assert (err.span.line, err.span.col) == (1, 11)
    err = error_of(f"const X = 0x{'f' * 17}\n{FORWARD}")
    assert err.code == "K0206"


def test_float_literal_out_of_range():
    err = error_of(f"const X = 1e999\n{FORWARD}")
    assert err.code == "K0206" and "1e999" in err.message


@pytest.mark.parametrize("literal, detail", [
    (r'"\N{bad}"', "unknown Unicode character name"),
    (r'"\d"', "invalid escape sequence"),
    (r'"\x4"', "truncated"),
])
def test_bad_string_escape_is_located(literal, detail):
    err = error_of(f"const X = len({literal})\n{FORWARD}")
    assert err.code == "K0002" and detail in err.message
    assert (err.span.line, err.span.col) == (1, 15)


def test_bad_escape_in_an_import_path():
    err = error_of('import "\\N{nope}.kiln"\n' + FORWARD.replace("X", "2"))
    assert err.code == "K0002" and (err.span.line, err.span.col) == (1, 8)


# -- #13: names ------------------------------------------------------------------------------
def test_a_parameter_path_taken_twice_is_refused():
    err = error_of("""
    block Inner {
      param b.b: f32[2]
      forward(x: f32[B, 2]) { return x + b.b }
    }
    model M {
      w = Inner()
      param w.b.b: f32[2]
      forward(x: f32[B, 2]) { return x |> w }
    }""")
    assert err.code == "K0106" and "parameter path w.b.b is already taken" in err.message
    assert (err.span.line, err.span.col) == (8, 9)
    assert "<source>:3:3" in err.message


@pytest.mark.parametrize("piece", ['"a.b"', '"c d"', '"e\\nf"', '"x-y"', '"a/b"'])
def test_interpolated_member_names_are_identifiers(piece):
    err = error_of(f"""
    model M {{
      for s in [{piece}] {{ param p_{{s}}: f32[2] }}
      forward(x: f32[B, 2]) {{ return x }}
    }}""")
    assert err.code == "K0203" and "is not a name" in err.message
    line = err.span.source_line()
    assert err.span.line == 3 and line[err.span.col - 1 : err.span.end_col - 1] == "p_{s}"


def test_interpolated_member_names_still_work():
    model = kiln.load("""
    model M {
      for i in range(2) { param w{i}: f32[2] }
      forward(x: f32[B, 2]) { return x + w0 + w1 }
    }""").elaborate()
    assert sorted(model.params) == ["w0", "w1"]


def test_the_documented_limits_are_the_enforced_ones():
    from pathlib import Path

    from kiln.compiler import limits

    text = (Path(__file__).resolve().parents[2] / "docs" / "language.md").read_text()
    table = text[text.index("## Compile-time limits"):text.index("## Current limitations")]
    rows = {line.split("|")[1].strip(): line.split("|")[2] for line in table.splitlines()
            if line.startswith("| ") and not line.startswith("| what")}
    assert f"{limits.MAX_STRING_CHARS:,} characters" in rows["a compile-time string"]
    assert f"{limits.MAX_SEQUENCE_ITEMS:,} items" in rows["a list, tuple or `range`"]
    assert f"{limits.MAX_DIM_TERMS} terms" in rows["a symbolic size"]
    assert f"power {limits.MAX_DIM_POWER}" in rows["a symbolic size"]
    steps = rows["loop iterations of one model's elaboration (`for`, comprehensions)"]
    assert f"{limits.MAX_UNROLLED_STEPS:,} in all" in steps and f"as {limits.CALL_STEPS}" in steps
    assert f"{limits.MAX_GRAPH_NODES:,}" in rows["nodes of one model's graph, after unrolling"]
    assert limits.INT_MAX == 2**63 - 1 and "int64" in rows["a compile-time int (literals included)"]


def _kernel_functions(n_ops: int, step: str) -> tuple[list, int]:
    """The kernels `run` calls for a chain of n_ops `y = step`, as LLVM functions (nodes of
    the same kernel share one: share.py), and the number of nodes that call one."""
    from kiln.compiler.codegen.llvm import target as targets
    from kiln.compiler.codegen.llvm.module import build_module

    src = (f"model M {{\n  forward(x: f32[B, 8]) -> f32[B, 8] {{\n    y = x\n"
           f"    for i in range({n_ops}) {{ y = {step} }}\n    return y\n  }}\n}}\n")
    model = kiln.compile(src, target="reference").lowered()
    machine = targets.host().machine()
    module, _ = build_module(model, "x86_64-unknown-linux-gnu", str(machine.target_data))
    nodes = sum(1 for nid in model.graph.order() if model.graph.op(nid) in ("fused", "softmax"))
    return [f for f in module.functions if re.fullmatch(r"k\d+_(fused|softmax)", f.name)], nodes


def test_long_chains_are_cut_into_kernels_llvm_compiles_in_linear_time():
    """LLVM's time grows with the square of a function's size: a chain of 3000 adds is fused
    into kernels of at most MAX_GROUP ops, and past MAX_INLINED_KERNELS kernels `run` calls
    them instead of inlining them (#11: 10k adds took 31 s)."""
    from kiln.compiler.codegen.llvm.fuse import MAX_GROUP
    from kiln.compiler.codegen.llvm.module import MAX_INLINED_KERNELS

    fused, groups = _kernel_functions(3000, "y + x")
    assert groups == -(-3000 // MAX_GROUP)
    # the full groups are one kernel, the last group's shorter chain another
    assert len(fused) == 2 and not any("noinline" in f.attributes for f in fused)
    few, nodes = _kernel_functions(MAX_INLINED_KERNELS, "softmax(y)")
    assert nodes == MAX_INLINED_KERNELS and not any("noinline" in f.attributes for f in few)
    many, nodes = _kernel_functions(MAX_INLINED_KERNELS + 1, "softmax(y)")
    assert nodes > MAX_INLINED_KERNELS and many and all("noinline" in f.attributes for f in many)
