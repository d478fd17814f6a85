"""Hostile ONNX files (issue 17): each is refused with a KilnError naming the file or the node
(K0901-K0906), before anything is compiled or run; never a traceback, a hang or a read
without a bound."""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
from _clitest import run
from _hostile import assert_kiln_error, run_child
from _onnximport import make_model, mlp_model, save
from onnx import TensorProto, helper, numpy_helper

import kiln
from kiln.compiler.onnx_import import reader

F = TensorProto.FLOAT


def refused(path, code: str) -> kiln.KilnError:
    """The KilnError compiling the ONNX file `path` raises, which must have `code`."""
    with pytest.raises(kiln.KilnError) as info:
        kiln.compile(path, target="reference")
    assert info.value.code == code, str(info.value)
    return info.value


# the file -------------------------------------------------------------------------------
def test_missing_file_and_directory(tmp_path):
    assert "no such file" in refused(tmp_path / "none.onnx", "K0901").message
    (tmp_path / "dir.onnx").mkdir()
    assert "a directory" in refused(tmp_path / "dir.onnx", "K0901").message


def test_file_larger_than_the_limit(tmp_path, monkeypatch):
    path = save(mlp_model(), tmp_path / "m.onnx")
    monkeypatch.setattr(reader, "MAX_MODEL_BYTES", 100)
    assert "larger than 100 bytes" in refused(path, "K0901").message


def test_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "m.onnx"
    os.mkfifo(fifo)  # no writer: a blocking open or read would hang
    outcome = run_child(f"""
        import kiln
        try:
            kiln.compile({str(fifo)!r})
        except kiln.KilnError as err:
            print("KilnError", err.code, err.message)
        """, timeout=60)
    assert_kiln_error(outcome, "K0901")
    assert "FIFO" in outcome.stdout


# its bytes ------------------------------------------------------------------------------
def test_malformed_bytes(tmp_path):
    path = tmp_path / "m.onnx"
    path.write_bytes(b"\x08\x07\x12\xff\xff")
    refused(path, "K0902")
    path.write_bytes(b"this is not a protobuf at all, just text\n")
    refused(path, "K0902")
    path.write_bytes(b"")  # parses as an empty message: no graph
    assert "no graph" in refused(path, "K0902").message


def test_every_truncation_is_a_kiln_error(tmp_path):
    """A file cut anywhere is refused (as malformed, or as a graph missing what was cut),
    never imported as a different model, never a traceback."""
    data = mlp_model().SerializeToString()
    path = tmp_path / "m.onnx"
    for cut in range(0, len(data), max(1, len(data) // 60)):
        path.write_bytes(data[:cut])
        with pytest.raises(kiln.KilnError) as info:
            kiln.compile(path, target="reference")
        assert info.value.code in ("K0902", "K0903", "K0905", "K0906"), (cut, str(info.value))


# the graph ------------------------------------------------------------------------------
def test_dangling_input_names_the_node(tmp_path):
    model = make_model([helper.make_node("Add", ["x", "nowhere"], ["y"], name="adder")],
                       [("x", F, [2])], [("y", F, [2])])
    err = refused(save(model, tmp_path / "m.onnx"), "K0903")
    assert "node adder (#0, Add) reads 'nowhere'" in err.message


def test_cycle_names_its_nodes(tmp_path):
    nodes = [helper.make_node("Add", ["x", "b"], ["a"], name="first"),
             helper.make_node("Relu", ["a"], ["b"], name="second"),
             helper.make_node("Relu", ["a"], ["y"], name="out")]
    err = refused(save(make_model(nodes, [("x", F, [2])], [("y", F, [2])]),
                       tmp_path / "m.onnx"), "K0903")
    assert "cycle" in err.message and "first" in err.message and "second" in err.message


def test_two_producers_and_an_undefined_output(tmp_path):
    nodes = [helper.make_node("Relu", ["x"], ["y"], name="one"),
             helper.make_node("Neg", ["x"], ["y"], name="two")]
    err = refused(save(make_model(nodes, [("x", F, [2])], [("y", F, [2])]),
                       tmp_path / "a.onnx"), "K0903")
    assert "node two (#1, Neg) writes 'y'" in err.message
    nodes = [helper.make_node("Relu", ["x"], ["h"])]
    err = refused(save(make_model(nodes, [("x", F, [2])], [("y", F, [2])]),
                       tmp_path / "b.onnx"), "K0903")
    assert "output 'y'" in err.message


def test_nodes_out_of_order_are_ordered(tmp_path):
    """Not an attack: a graph whose nodes are listed out of order means the same graph."""
    nodes = [helper.make_node("Neg", ["h"], ["y"]), helper.make_node("Relu", ["x"], ["h"])]
    model = kiln.compile(save(make_model(nodes, [("x", F, [2])], [("y", F, [2])]),
                              tmp_path / "m.onnx"), target="reference")
    np.testing.assert_array_equal(model(np.array([-1, 2], np.float32)), [0, -2])


# opsets ---------------------------------------------------------------------------------
def test_opset_newer_than_onnx_knows(tmp_path):
    opset = onnx.defs.onnx_opset_version() + 1
    model = make_model([helper.make_node("Relu", ["x"], ["y"])], [("x", F, [2])],
                       [("y", F, [2])], opset=opset)
    assert f"opset {opset}" in refused(save(model, tmp_path / "m.onnx"), "K0905").message


def test_old_opset_of_changed_ops_is_converted(tmp_path):
    """Softmax-11 over axis 1 of [2, 3, 4] normalises each row of the input flattened to
    [2, 12] (Softmax-13 would normalise axis 1 alone): the model converted to opset 13 by
    ONNX's version converter keeps that meaning."""
    model = make_model([helper.make_node("Softmax", ["x"], ["y"], axis=1)],
                       [("x", F, [2, 3, 4])], [("y", F, [2, 3, 4])], opset=11)
    x = np.random.default_rng(0).standard_normal((2, 3, 4)).astype(np.float32)
    flat = np.exp(x.reshape(2, 12))
    want = (flat / flat.sum(axis=1, keepdims=True)).reshape(2, 3, 4)
    got = kiln.compile(save(model, tmp_path / "m.onnx"), target="reference")(x)
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_old_opset_of_unchanged_ops_imports(tmp_path):
    """An opset-7 model whose ops are the same ops at 13 (And-7, Not-1) is read as opset 13."""
    B = TensorProto.BOOL
    nodes = [helper.make_node("And", ["a", "b"], ["t"]), helper.make_node("Not", ["t"], ["y"])]
    model = make_model(nodes, [("a", B, [3]), ("b", B, [3])], [("y", B, [3])], opset=7)
    compiled = kiln.compile(save(model, tmp_path / "m.onnx"), target="reference")
    a, b = np.array([1, 1, 0], bool), np.array([1, 0, 0], bool)
    np.testing.assert_array_equal(compiled(a, b), ~(a & b))


def test_old_opset_of_extended_ops_imports(tmp_path):
    """Opset 11, as exporters often write it: Relu-6 (13 only adds bfloat16) and ArgMax-11
    (12 adds select_last_index, whose default is ArgMax-11's behaviour) are the same
    operators at 13."""
    nodes = [helper.make_node("Relu", ["x"], ["r"]),
             helper.make_node("ArgMax", ["r"], ["y"], axis=1, keepdims=0)]
    model = make_model(nodes, [("x", F, [2, 3])], [("y", TensorProto.INT64, [2])], opset=11)
    compiled = kiln.compile(save(model, tmp_path / "m.onnx"), target="reference")
    x = np.array([[-1, 3, 2], [4, -5, 6]], np.float32)
    np.testing.assert_array_equal(compiled(x), [1, 2])


def test_old_opset_lists_every_changed_op(tmp_path):
    """Where ONNX's version converter cannot convert an old model (its Scan-8 adapter refuses
    this one), each node whose op changed since is named with both schema versions; ops that
    did not (Relu-6, only extended at 13) are not."""
    body = helper.make_graph(
        [helper.make_node("Add", ["sum_in", "next"], ["sum_out"]),
         helper.make_node("Identity", ["sum_out"], ["scan_out"])], "scan_body",
        [helper.make_tensor_value_info("sum_in", F, [2]),
         helper.make_tensor_value_info("next", F, [2])],
        [helper.make_tensor_value_info("sum_out", F, [2]),
         helper.make_tensor_value_info("scan_out", F, [2])])
    nodes = [helper.make_node("Scan", ["", "initial", "x"], ["y", "z"], num_scan_inputs=1,
                              body=body, name="scan"),
             helper.make_node("Softmax", ["y"], ["p"], name="soft"),
             helper.make_node("Relu", ["p"], ["s"], name="act")]
    model = make_model(nodes, [("initial", F, [1, 2]), ("x", F, [1, 3, 2])],
                       [("s", F, [1, 2]), ("z", F, [1, 3, 2])], opset=8)
    model.ir_version = 3
    message = refused(save(model, tmp_path / "m.onnx"), "K0905").message
    assert "node scan (#0, Scan): Scan-8 at opset 8, Scan-11 at 13" in message
    assert "node soft (#1, Softmax): Softmax-1 at opset 8" in message
    assert "node act" not in message


# external data ----------------------------------------------------------------------------
def external_model(tmp_path, location: str = "weights.bin"):
    """An MLP whose initializers are in external data file `location` (written)."""
    model = mlp_model()
    onnx.save_model(model, tmp_path / "m.onnx", save_as_external_data=True,
                    all_tensors_to_one_file=True, location=location, size_threshold=0)
    return tmp_path / "m.onnx"


def test_external_data_is_read(tmp_path):
    path = external_model(tmp_path)
    model = kiln.compile(path, target="reference")
    want = numpy_helper.to_array(mlp_model().graph.initializer[0])
    np.testing.assert_array_equal(model.params["fc1.weight"], want)


def test_missing_external_data(tmp_path):
    path = external_model(tmp_path)
    (tmp_path / "weights.bin").unlink()
    assert "does not exist" in refused(path, "K0904").message


def test_symlinked_external_data(tmp_path):
    path = external_model(tmp_path)
    (tmp_path / "weights.bin").rename(tmp_path / "real.bin")
    (tmp_path / "weights.bin").symlink_to(tmp_path / "real.bin")
    assert "symbolic link" in refused(path, "K0904").message


def test_short_external_data(tmp_path):
    path = external_model(tmp_path)
    data = (tmp_path / "weights.bin").read_bytes()
    (tmp_path / "weights.bin").write_bytes(data[:-4])
    refused(path, "K0904")


def edit_external(path, **entries):
    """Rewrite the first initializer's external-data entries of the model in `path`."""
    model = onnx.load_model(path, load_external_data=False)
    tensor = model.graph.initializer[0]
    for entry in tensor.external_data:
        if entry.key in entries:
            entry.value = entries.pop(entry.key)
    for key, value in entries.items():
        tensor.external_data.add(key=key, value=value)
    save(model, path)


@pytest.mark.parametrize("entries, words", [
    ({"length": str(1 << 40)}, "its shape needs"),  # oversized: more than the shape holds
    ({"offset": "-8"}, "offset -8"),
    ({"location": "../weights.bin"}, "not a file beside the model"),
    ({"location": "/etc/passwd"}, "not a file beside the model"),
    ({"offset": "nine"}, "not a number"),
])
def test_bad_external_entries(tmp_path, entries, words):
    path = external_model(tmp_path)
    edit_external(path, **entries)
    assert words in refused(path, "K0904").message


def test_external_data_through_a_symlinked_directory(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    home = tmp_path / "home"
    home.mkdir()
    (outside / "weights.bin").write_bytes(b"\0" * 4096)
    (home / "sub").symlink_to(outside)
    path = external_model(home)
    edit_external(path, location="sub/weights.bin")  # inside by name, outside by its link
    assert "outside the model's directory" in refused(path, "K0904").message


# unsupported nodes ------------------------------------------------------------------------
def test_every_unsupported_node_is_listed_at_once(tmp_path):
    nodes = [helper.make_node("Relu", ["x"], ["a"], name="ok"),
             helper.make_node("Mystery", ["a"], ["b"], name="m1", domain="com.example"),
             helper.make_node("StringNormalizer", ["a"], ["c"], name="m2"),
             helper.make_node("Add", ["b", "c"], ["d"], name="reads_both"),
             helper.make_node("NoSuchOp", ["d"], ["y"], name="m3")]
    model = make_model(nodes, [("x", F, [2])], [("y", F, [2])])
    model.opset_import.append(helper.make_opsetid("com.example", 1))
    err = refused(save(model, tmp_path / "m.onnx"), "K0906")
    assert "3 nodes" in err.message
    for label in ("node m1 (#1, Mystery)", "node m2 (#2, StringNormalizer)",
                  "node m3 (#4, NoSuchOp)"):
        assert label in err.message
    assert "reads_both" not in err.message  # it only reads what the listed nodes make


def test_cli_reports_bad_files(tmp_path, capsys):
    path = tmp_path / "m.onnx"
    path.write_bytes(b"\x08\x07\x12\xff\xff")
    for command in ("check", "params", "run", "compile"):
        extra = ["-o", tmp_path / "m.so"] if command == "compile" else []
        code, _, err = run(capsys, command, path, *extra)
        assert code == 1 and "error[K0902]" in err, (command, err)


def test_size_facts_metadata_is_checked_not_trusted(tmp_path):
    """kiln's own `kiln.size_facts` metadata (`H:4`) is a constraint every call checks: a
    file claiming a fact its inputs break is refused at the call (K0504), and entries naming
    no input symbol or no sane divisor are ignored."""
    model = make_model([helper.make_node("Relu", ["x"], ["y"])], [("x", F, ["H"])],
                       [("y", F, ["H"])])
    model.metadata_props.add(key="kiln.size_facts", value="H:4,nosuch:2,H:0,H:x,H:99999999999")
    compiled = kiln.compile(save(model, tmp_path / "m.onnx"), target="reference")
    assert [c.text for c in compiled.model.graph.constraints] == ["H % 4 == 0"]
    np.testing.assert_array_equal(compiled(np.ones(8, np.float32)), np.ones(8))
    with pytest.raises(kiln.KilnError) as err:
        compiled(np.ones(6, np.float32))
    assert err.value.code == "K0504"


@pytest.mark.parametrize("fields, words", [
    ({"data_type": F, "dims": [4], "raw_data": b"\0" * 4}, "holds 4 bytes"),
    ({"data_type": F, "dims": [2**40]}, "holds 0 values"),  # no data for a huge shape
    ({"data_type": 999, "dims": [4], "raw_data": b"\0" * 16}, "unknown element type"),
    ({"data_type": F, "dims": [4], "float_data": [1.0]}, "holds 1 values"),
    ({"data_type": F, "dims": [-4], "raw_data": b"\0" * 16}, "negative size"),
])
def test_initializer_data_that_does_not_match_its_shape(tmp_path, fields, words):
    model = make_model([helper.make_node("Add", ["x", "w"], ["y"])], [("x", F, [4])],
                       [("y", F, [4])])
    model.graph.initializer.append(onnx.TensorProto(name="w", **fields))
    err = refused(save(model, tmp_path / "m.onnx"), "K0902")
    assert "tensor 'w'" in err.message and words in err.message
