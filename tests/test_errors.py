"""Every kind of user mistake: a KilnError with its code, message and exact span; never a crash."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

import kiln
from kiln import KilnError


def elaborate(src: str, **kw):
    return kiln.load(textwrap.dedent(src)).elaborate(**kw)


def error_of(src: str, **kw) -> KilnError:
    with pytest.raises(KilnError) as info:
        elaborate(src, **kw)
    return info.value


def at(err: KilnError, line: int, col: int, end_col: int | None = None) -> None:
    assert (err.span.line, err.span.col) == (line, col), str(err)
    if end_col is not None:
        assert err.span.end_col == end_col, str(err)


def test_syntax_error_points_at_the_token():
    err = error_of("model M {\n  forward(x: f32[B, 4]) -> f32[B, 4] {\n    return x +* 2\n  }\n}")
    assert err.code == "K0001" and "unexpected '*'" in err.message
    at(err, 3, 15)
    text = str(err)
    assert "3 |     return x +* 2" in text and "\n  |               ^" in text


def test_unexpected_character_and_unterminated_block():
    err = error_of("model M { forward(x: f32[B]) -> f32[B] { return x $ 1 } }")
    assert err.code == "K0002" and "'$'" in err.message
    err = error_of("model M {\n  forward(x: f32[B]) -> f32[B] {\n    return x\n")
    assert err.code == "K0001" and "end of file" in err.message


def test_unknown_name_with_suggestion():
    err = error_of("""
    model M {
      forward(x: f32[B, 4]) -> f32[B, 4] { return sigmoud(x) }
    }""")
    assert err.code == "K0101" and err.message == "unknown name sigmoud"
    assert "sigmoid" in err.hint
    at(err, 3, 47, 54)


def test_unknown_op_and_unknown_initializer():
    err = error_of("model M { forward(x: f32[B]) -> f32[B] { return ops.frobnicate(x) } }")
    assert err.code == "K0102" and "ops.frobnicate" in err.message
    err = error_of(
        "model M { param w: [2] = init.kaiming(a = 1)\n forward(x: f32[B]) -> f32[B] { return x } }"
    )
    assert err.code == "K0102" and "init.kaiming" in err.message


def test_bad_arguments_name_the_argument():
    err = error_of("""
    model M {
      forward(x: f32[B, 4]) -> f32[B, 4] { return softmax(x, axes = 1) }
    }""")
    assert err.code == "K0201" and "softmax has no argument axes" in err.message
    assert "axis" in err.hint
    at(err, 3, 58, 66)
    err = error_of("""
    block L(n: int) { forward(x: [B, n]) -> [B, n] { return x } }
    model M { forward(x: f32[B, 4]) -> f32[B, 4] { return x |> L(4, 5) } }""")
    assert err.code == "K0201" and "L takes 1 argument " in err.message
    err = error_of("""
    block L(n: int) { forward(x: [B, n]) -> [B, n] { return x } }
    model M { forward(x: f32[B, 4]) -> f32[B, 4] { return x |> L(n = 2.5) } }""")
    assert err.code == "K0202" and "argument n must be int" in err.message


def test_compile_time_bools_take_no_arithmetic():
    """Python counts true as 1 (true + true == 2), numpy's bool tensors take + as or: a
    model that adds compile-time bools is told so, at the expression."""
    err = error_of("""
    model M(a: bool = true) {
      const N = a + true
      forward(x: f32[B, 4]) -> f32[B, 4] { return x }
    }""")
    assert err.code == "K0202" and "bools take no arithmetic" in err.message, str(err)
    assert "and" in err.hint
    at(err, 3, 13, 21)
    ok = elaborate("""
    model M(a: bool = true, n: int = 2) {
      forward(x: f32[B, 4]) -> f32[B, 4] { return x * (int(a) * n) if a == true else x }
    }""")
    assert [p.name for p in ok.inputs] == ["x"]  # int(flag) and flag == true compile


def test_shape_mismatch_names_both_shapes_at_the_expression():
    err = error_of("""
    model LeNet {
      param w: [120, 84] = init.zeros()
      forward(x: f32[B, 400]) -> f32[B, 84] {
        h = relu(x)
        return h @ w
      }
    }""")
    assert err.code == "K0301"
    assert err.message == "matmul: inner dimensions differ: [B, 400] @ [120, 84]"
    at(err, 6, 12, 17)


def test_block_input_shape_mismatch_and_instantiation_chain():
    err = error_of("""
    block Linear(i: int, o: int) {
      param weight: [o, i] = init.zeros()
      forward(x: [..., i]) -> [..., o] { return x @ weight.T }
    }
    model M {
      forward(x: f32[B, 400]) -> f32[B, 10] { return x |> Linear(784, 10) }
    }""")
    assert err.code == "K0301"
    assert "has shape [B, 400] but [..., 784] is expected" in err.message


def test_independent_errors_are_reported_together():
    err = error_of("""
    model M {
      forward(x: f32[B, 4]) -> f32[B, 4] {
        a = x @ zeros([3, 3])
        b = foo(x)
        c = a + b
        d = softmax(x, dim = 1)
        return x
      }
    }""")
    codes = [e.code for e in err.all]
    assert codes == ["K0301", "K0101", "K0201"], str(err)  # c = a + b adds nothing: a and b failed
    assert [e.span.line for e in err.all] == [4, 5, 7]


def test_import_errors_and_cycles(tmp_path):
    (tmp_path / "a.kiln").write_text('import "b.kiln"\n')
    (tmp_path / "b.kiln").write_text('import "a.kiln"\n')
    with pytest.raises(KilnError) as info:
        kiln.load(str(tmp_path / "a.kiln"))
    assert info.value.code == "K0105" and "a.kiln -> b.kiln -> a.kiln" in info.value.message
    err = error_of("import std.nope\nmodel M { forward(x: f32[B]) -> f32[B] { return x } }")
    assert err.code == "K0104"
    err = error_of('import "missing.kiln"\n')
    assert err.code == "K0004" and err.span.line == 1


def test_empty_file_non_utf8_and_deep_nesting(tmp_path):
    with pytest.raises(KilnError) as info:
        kiln.load("\n").elaborate()
    assert info.value.code == "K0601"
    bad = tmp_path / "bad.kiln"
    bad.write_bytes(b"model M {\n  forward(x: f32[B]) -> f32[B] { return x }\n}\n# caf\xe9\n")
    with pytest.raises(KilnError) as info:
        kiln.load(str(bad))
    assert info.value.code == "K0003" and (info.value.span.line, info.value.span.col) == (4, 6)
    deep = (
        "model M { forward(x: f32[B]) -> f32[B] { return "
        + "relu(" * 5000
        + "x"
        + ")" * 5000
        + " } }"
    )
    with pytest.raises(KilnError) as info:
        kiln.load(deep).elaborate()
    assert info.value.code == "K0001" and "too deeply" in info.value.message
    parens = (
        "model M { forward(x: f32[B]) -> f32[B] { return " + "(" * 5000 + "x" + ")" * 5000 + " } }"
    )
    assert kiln.load(parens).elaborate().outputs[0].name == "output"  # plain parentheses are free
    nested_blocks = "".join(
        f"block B{i} {{ forward(x: [N]) -> [N] {{ return x |> B{i + 1} }} }}\n" for i in range(200)
    )
    nested_blocks += "block B200 { forward(x: [N]) -> [N] { return x } }\n"
    nested_blocks += "model M { forward(x: f32[N]) -> f32[N] { return x |> B0 } }"
    with pytest.raises(KilnError) as info:
        kiln.load(nested_blocks).elaborate()
    assert "deep" in str(info.value)


def test_self_instantiating_block_is_an_error_not_a_crash():
    err = error_of("""
    block Loop { inner = Loop
      forward(x: [N]) -> [N] { return x } }
    model M { forward(x: f32[N]) -> f32[N] { return x |> Loop } }""")
    assert "deep" in err.message


def test_bad_weights_files(tmp_path):
    m = kiln.compile(
        "model M { param w: [2, 3] = init.zeros()\n"
        " forward(x: f32[B, 3]) -> f32[B, 2] { return x @ w.T } }"
    , target="reference")
    with pytest.raises(KilnError) as info:
        m.load_weights(tmp_path / "nope.safetensors")
    assert info.value.code == "K0403" and "nope.safetensors" in info.value.message
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(KilnError) as info:
        m.load_weights(corrupt)
    assert info.value.code == "K0403"
    with pytest.raises(KilnError) as info:
        m.load_weights({"w": np.zeros((3, 2), np.float32), "extra": np.zeros(1, np.float32)})
    msg = info.value.message
    assert "w" in msg and "[3, 2]" in msg and "[2, 3]" in msg and "extra" in msg
    np.testing.assert_array_equal(m.params["w"], 0)  # nothing was changed by the failed load


def test_bad_run_time_inputs_never_reach_the_kernels():
    m = kiln.compile("model M { forward(x: f32[B, 3], i: i64[B]) -> f32[B, 3] { return x } }", target="reference")
    x, i = np.zeros((2, 3), np.float32), np.zeros(2, np.int64)
    cases = [
        ((x,), {}, "K0501", "missing input i"),
        ((x, i, i), {}, "K0501", "takes 2 inputs"),
        ((x,), {"j": i}, "K0501", "no input named 'j'"),
        ((x.astype(np.float64), i), {}, "K0502", "must be f32"),
        ((x[0], i), {}, "K0503", "must have 2 axes"),
        ((np.zeros((2, 4), np.float32), i), {}, "K0503", "axis 1"),
        ((x, np.zeros(3, np.int64)), {}, "K0503", "size B is 2"),
        (("hello", i), {}, "K0502", "numpy array"),
        # a few bytes seen as 2^45 rows (stride 0, past any address space): its C-ordered
        # copy, or its widening to i64, runs out of memory before any size check could
        ((np.lib.stride_tricks.as_strided(x, (1 << 45, 3), (0, 4)), i), {}, "K0505",
         "out of memory copying input x"),
        ((x, np.lib.stride_tricks.as_strided(i.astype(np.int32), (1 << 46,), (0,))), {},
         "K0505", "out of memory copying input i"),
    ]
    for args, kwargs, code, text in cases:
        with pytest.raises(KilnError) as info:
            m(*args, **kwargs)
        assert info.value.code == code and text in info.value.message, str(info.value)
    assert m(x, i.astype(np.int32)).shape == (2, 3)  # lossless widening is done for the caller


def test_cli_prints_located_errors_and_exits_1(tmp_path):
    src = tmp_path / "broken.kiln"
    src.write_text("model M {\n  forward(x: f32[B, 4]) -> f32[B, 4] { return relu(x, 3) }\n}\n")
    proc = subprocess.run(
        [sys.executable, "-m", "kiln.cli", "check", str(src)], capture_output=True, text=True
    )
    assert proc.returncode == 1
    assert f"{src}:2:" in proc.stderr and "error[K0201]" in proc.stderr
    assert "Traceback" not in proc.stderr
    ok = tmp_path / "ok.kiln"
    ok.write_text("model M {\n  forward(x: f32[B, 4]) -> f32[B, 4] { return relu(x) }\n}\n")
    proc = subprocess.run(
        [sys.executable, "-m", "kiln.cli", "check", str(ok)], capture_output=True, text=True
    )
    assert proc.returncode == 0 and "input  x: f32[B, 4]" in proc.stdout


def test_compile_takes_its_target_from_the_output_suffix(tmp_path, capsys):
    """`kiln compile m.kiln -o m.so` writes a native library, `-o m.onnx` an ONNX file; a
    suffix that says neither needs --target, and one that contradicts it is refused before
    anything is written."""
    from kiln.cli import main

    src = tmp_path / "m.kiln"
    src.write_text("model M {\n  forward(x: f32[B, 4]) -> f32[B, 4] { return relu(x) }\n}\n")
    assert main(["compile", str(src), "-o", str(tmp_path / "m.so")]) == 0
    assert (tmp_path / "m.safetensors").exists() and (tmp_path / "m.h").exists()
    assert main(["compile", str(src), "-o", str(tmp_path / "m.onnx")]) == 0
    import onnx

    assert [i.name for i in onnx.load(str(tmp_path / "m.onnx")).graph.input] == ["x"]
    capsys.readouterr()
    for args, text in [(["-o", str(tmp_path / "m.bin")], "cannot tell what to write"),
                       (["--target", "onnx", "-o", str(tmp_path / "x.so")], "suffix .so says native")]:
        assert main(["compile", str(src), *args]) == 1
        err = capsys.readouterr().err
        assert "error[K0602]" in err and text in err, err
    assert not (tmp_path / "m.bin").exists() and not (tmp_path / "x.so").exists()


# -- issue 13 #4: where a compile-time error points ------------------------------------------
def test_unclosed_brace_is_reported_at_the_brace():
    err = error_of("""
    block A {
      forward(x: f32[B, 4]) {
        return x

    model M {
      forward(x: f32[B, 4]) { return x }
    }""")
    assert err.code == "K0001" and err.message == "this '{' is not closed before the next definition"
    at(err, 3, 25, 26)
    assert err.notes == ("`model` at <source>:6:1 is inside it",)
    err = error_of("model M {\n  forward(x: f32[B]) -> f32[B] {\n    return x\n")
    assert err.message == "unexpected end of file: this '{' is never closed"
    at(err, 2, 32)


def test_unclosed_brace_skips_braces_in_strings_and_comments():
    err = error_of('model M {\n  forward(x: f32[B]) -> f32[B] {  # }\n    require true, "}"\n'
                   '    return x\n')
    at(err, 2, 32)


def test_a_shape_names_the_symbols_it_binds():
    err = error_of("""
    import std.gnn
    model M {
      conv = gnn.GCNConv(4, 2)
      forward(x: f32[N, 4], ei: i64[E, 2]) { return conv(x, ei) }
    }""")
    assert err.code == "K0301"
    assert err.message == "GCNConv: input edge_index has shape [E, 2] but [2, E] is expected"
    at(err, 5, 57)


def test_unknown_name_suggests_the_imported_module():
    err = error_of("""
    import std.nn
    model M {
      l = Linear(4, 2)
      forward(x: f32[B, 4]) { return l(x) }
    }""")
    assert err.code == "K0101" and err.message == "unknown name Linear"
    assert err.hint == "did you mean nn.Linear?"
    at(err, 4, 7, 13)


def test_return_count_mismatch_points_at_the_return():
    err = error_of("""
    model M {
      forward(x: f32[B, 4]) -> (f32[B, 4], f32[B, 4]) {
        y = x + 1
        return y
      }
    }""")
    assert err.code == "K0301" and err.message == "M: forward returns 1 values but its type lists 2"
    at(err, 5, 5)


def test_a_stage_of_a_member_list_is_blamed_at_its_entry():
    err = error_of("""
    import std.nn
    model M {
      body = [nn.Linear(4, 8), nn.ReLU(), nn.Linear(4, 2)]
      forward(x: f32[B, 4]) { return x |> body }
    }""")
    assert err.code == "K0301" and "Linear: input x has shape [B, 8]" in err.message
    at(err, 4, 39, 54)
    assert err.notes == ("in Linear, used at <source>:4:39", "in the list body, used at <source>:5:39")


# -- issue 13 #3: a run-time error inside a std block names where the user used it ------------
TWO_EMBEDDINGS = """
import std.nn
model M {
  words = nn.Embedding(10, 4)
  tags = nn.Embedding(3, 4)
  forward(w: i64[B], t: i64[B]) {
    a = words(w)
    b = tags(t)
    return a + b
  }
}
"""


@pytest.mark.parametrize("target", ["reference", "native", "onnx"])
def test_runtime_error_in_a_std_block_names_the_use(target):
    m = kiln.compile(TWO_EMBEDDINGS, target=target)
    with pytest.raises(KilnError) as info:
        m(np.array([1, 2]), np.array([0, 7]))  # tags has 3 rows
    err = info.value
    assert err.code == "K0505" and err.span.file == "<std>/nn.kiln"
    assert err.notes == ("in Embedding, used at <source>:8:9",), str(err)
    assert "note: in Embedding, used at <source>:8:9" in str(err)
