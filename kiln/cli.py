"""The `kiln` command line: check, params, summary, graph, run, compile.

Only the subcommand that runs imports the compiler and numpy (`kiln --help` and `kiln
--version` need neither): heavy imports live inside the functions that use them.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from kiln.compiler.dims import Dim
from kiln.compiler.errors import KilnError
from kiln.compiler.files import write_atomically
from kiln.runtime.version import __version__


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    opts = parser.parse_args(argv)
    try:
        return opts.handler(opts)
    except KilnError as err:
        print(err, file=sys.stderr)
        n = len(err.all)
        if n > 1:
            print(f"\n{n} errors", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `kiln params f.kiln | head`: the reader left; stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except Exception as exc:  # a bug in kiln: say so plainly, without a traceback
        print(
            f"kiln: internal error (this is a bug in kiln, please report it): "
            f"{type(exc).__name__}: {exc}",
            file=sys.stderr,
        )
        return 2


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kiln", description="Compile and run kiln model files.")
    p.add_argument("--version", action="version", version=f"kiln {__version__}",
                   help="print kiln's version and exit")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND",
                           help="one of the commands below; `kiln COMMAND --help` for its options")

    def model_cmd(name, help_, handler):
        c = sub.add_parser(name, help=help_, description=help_)
        c.add_argument("file", help="the .kiln model file")
        c.add_argument("--model", help="which model (default: the file's last `model`)")
        c.add_argument(
            "--arg",
            action="append",
            default=[],
            metavar="NAME=VALUE",
            help="set a model argument, e.g. --arg hidden=256",
        )
        c.set_defaults(handler=handler)
        return c

    def optimizer_options(c):
        c.add_argument("-O", dest="opt_level", type=int, choices=[0, 1], default=1,
                       help="-O0 turns the graph optimizer off (for debugging); -O1 (default)")
        c.add_argument("--print-passes", action="store_true",
                       help="report what each optimizer pass changed, and how long it took")

    def bind_option(c, what):
        c.add_argument("--bind", action="append", default=[], metavar="SYM=N",
                       help=f"the size of a symbolic dimension of the inputs, e.g. --bind B=4 "
                       f"(repeatable; a symbol they do not have is refused): {what}")

    model_cmd("check", "parse, elaborate and shape-check a model; print its signature", cmd_check)
    model_cmd("params", "list every parameter and buffer, and the cost of one call", cmd_params)
    s = model_cmd("summary", "a table of the block instances: output shapes, parameters, "
                  "multiply-adds and bytes (symbolic where sizes are not bound)", cmd_summary)
    bind_option(s, "counts and shapes are numbers where bound, formulas where not")
    s.add_argument("--depth", type=int, default=None, metavar="N",
                   help="show block instances nested at most N deep (1: the model's own "
                   "members; default: all); deeper ones are counted in their parent")
    g = model_cmd("graph", "print the graph IR as DOT (or write .dot / .svg)", cmd_graph)
    g.add_argument("-o", "--output", help="out.dot or out.svg (SVG needs Graphviz's dot)")
    g.add_argument("--passes", action="store_true",
                   help="draw the graph after optimization next to the graph before")
    r = model_cmd("run", "run a model and summarise its outputs", cmd_run)
    r.add_argument("--target", default="native", choices=["native", "reference", "onnx"],
                   help="native: LLVM code for this CPU (default); reference: the numpy "
                   "interpreter; onnx: onnxruntime (needs onnxruntime installed)")
    r.add_argument("--input", action="append", default=[], metavar="NAME=PATH.npy",
                   help="read input NAME from a .npy file (repeatable); its symbolic sizes "
                   "also size the random inputs")
    r.add_argument("--cast", action="store_true",
                   help="convert --input arrays to the dtypes the model takes (float64 to "
                   "f32, ...); values the conversion would change beyond rounding are refused")
    r.add_argument(
        "--random-inputs",
        action="store_true",
        help="feed random values to the required inputs not given with --input (floats "
        "~ N(0, 1), ints in [0, 2), random bools)",
    )
    r.add_argument("--random-optional", action="store_true",
                   help="feed random values to the optional inputs not given with --input too "
                   "(by default they are left out, and kiln says which)")
    bind_option(r, "it sizes the random inputs (default: the size the --input arrays give "
                "it, else 1)")
    r.add_argument("--weights", help="a .safetensors or .npz file of weights")
    r.add_argument("--no-strict", action="store_true",
                   help="load weights non-strictly: missing ones keep their initial values "
                   "and unexpected ones are ignored (shapes must still match)")
    r.add_argument("--seed", type=int, default=0,
                   help="seed of the initial weights and of the random inputs")
    r.add_argument("-o", "--output", help="save the outputs to this .npz or .safetensors file")
    optimizer_options(r)
    c = model_cmd("compile", "compile a model for a target and write it", cmd_compile)
    c.add_argument("--target", choices=["onnx", "native"],
                   help="what to write (default: from the output's suffix, .onnx or .so)")
    c.add_argument("-o", "--output", required=True,
                   help="the file to write: model.onnx, or model.so (with model.safetensors, "
                   "model.kiln.json and model.h beside it)")
    c.add_argument("--cpu", help="native: build for this CPU (e.g. x86-64-v3) instead of this "
                   "machine's own")
    c.add_argument("--omit", action="append", default=[], metavar="NAME",
                   help="native: build without this optional input (repeatable); the library "
                   "takes every other optional input, as required inputs")
    optimizer_options(c)
    c.add_argument("--report", action="store_true",
                   help="list the kernels the backend runs with the source of the ops fused "
                   "into each, why neighbouring ops were not fused, and the planned peak "
                   "activation memory")
    c.add_argument("--weights", help="a .safetensors or .npz file of weights")
    c.add_argument("--no-strict", action="store_true", help="load weights non-strictly")
    c.add_argument("--seed", type=int, default=0, help="seed of the initial weights")
    return p


def compile_from_options(opts, target: str, pipeline: str | None = None):
    """kiln.compile with the options `run` and `compile` share; reports the passes of
    `pipeline` (default: the target's own) if asked."""
    from kiln.api import compile as kiln_compile

    program, _ = elaborate(opts)
    model = kiln_compile(program, model=opts.model, target=target, seed=opts.seed,
                         weights=opts.weights, args=parse_args_option(opts.arg),
                         strict=not opts.no_strict, opt_level=opts.opt_level)
    report_passes(opts, model, pipeline)
    return model


def report_passes(opts, model, pipeline: str | None = None) -> None:
    """Print what the optimizer's `pipeline` (default: the model's own) did, if asked."""
    if opts.print_passes:
        from kiln.compiler.passes import format_stats

        pipeline = pipeline or model.pipeline
        model.lowered(pipeline=pipeline)
        stats = model.pipeline_stats.get(pipeline)
        print(format_stats(stats) if stats else "optimizer off (-O0)")


SUFFIXES = {".onnx": "onnx", ".so": "native"}
# native output is a Linux x86-64 shared object: the names of other systems' libraries
FOREIGN_LIBRARIES = {".dylib": "macOS", ".dll": "Windows"}


def compile_target(target: str | None, output: str) -> str:
    """The target of `kiln compile`: --target, which must agree with the output's suffix
    when that is one of SUFFIXES, or else the suffix's; never another system's library."""
    path = Path(output)
    suffix = path.suffix.lower()
    if suffix in FOREIGN_LIBRARIES:
        raise KilnError("K0602", f"kiln compile writes native code as a Linux x86-64 shared "
                        f"object, not a {FOREIGN_LIBRARIES[suffix]} library: cannot write "
                        f"{output!r}", hint=f"name it {path.with_suffix('.so').name} (for "
                        "Linux x86-64), or write an ONNX file (model.onnx) to run elsewhere")
    implied = SUFFIXES.get(suffix)
    if target is None:
        if implied is None:
            raise KilnError("K0602", f"kiln compile cannot tell what to write to {output!r} "
                            "from its suffix", hint="name it model.onnx or model.so, or pass "
                            "--target onnx or --target native")
        return implied
    if implied is not None and implied != target:
        raise KilnError("K0602", f"--target {target} would write {output!r}, whose suffix "
                        f"{suffix} says {implied}", hint=f"name it model"
                        f"{'.onnx' if target == 'onnx' else '.so'}, or pass --target {implied}")
    return target


def check_outputs(opts) -> None:
    """Refuse, before any work, an output that would overwrite what the build needs or writes
    itself: a directory, the model's source, or (native) one of the library's companions."""
    if opts.target == "native":
        from kiln.runtime.aot import library_files

        outputs = library_files(opts.output)
    else:
        outputs = [Path(opts.output)]
        if outputs[0].is_dir():
            raise KilnError("K0602", f"cannot write an ONNX file to {opts.output}: it is a "
                            "directory", hint=f"name the file: {outputs[0] / 'model.onnx'}")
    source = Path(opts.file).resolve()
    for out in outputs:
        if out.resolve() == source:
            raise KilnError("K0602", f"kiln compile would write {out} over the model's source",
                            hint="choose another output name")


def cmd_compile(opts) -> int:
    opts.target = compile_target(opts.target, opts.output)
    check_outputs(opts)
    # the graph and weights, to write out; an ONNX file is made by the ONNX pipeline
    model = compile_from_options(opts, "reference",
                                 "onnx" if opts.target == "onnx" else None)
    if opts.report:
        from kiln.compiler.report import report

        print(report(model.lowered(), opts.target))
    optional = {p.name for p in model.inputs if p.optional}
    for name in opts.omit:
        if opts.target != "native":
            raise KilnError("K0602", "--omit builds a native library without an optional input; "
                            "an ONNX file takes every input")
        if name not in optional:
            raise KilnError("K0602", f"--omit {name}: {model.model.name} has no optional input "
                            f"{name}", hint=f"its optional inputs: {', '.join(sorted(optional))}"
                            if optional else "it has no optional inputs")
    if opts.target == "native":
        from kiln.compiler.codegen.llvm import target as targets
        from kiln.runtime.aot import library_signature, write_library

        cpu = targets.named(opts.cpu) if opts.cpu else targets.host()
        present = frozenset(optional - set(opts.omit))
        built = model.lowered(present)
        files = write_library(built, model.params, opts.output, cpu, model.pass_stats)
        print(f"wrote {', '.join(str(f) for f in files)}: {library_signature(built)}, "
              f"for {cpu.cpu}")
        return 0
    model.export_onnx(opts.output)
    from kiln.compiler.codegen.onnx import OPSET

    print(f"wrote {opts.output}: {model.signature()}, ONNX opset {OPSET}")
    return 0


def parse_args_option(items: list[str]) -> dict:
    """--arg NAME=VALUE, VALUE written as in kiln: 256, 0.5, true, "relu", [1, 2], none.

    A bare word that is not a kiln literal is taken as a string (`--arg act=gelu`).
    """
    out = {}
    for item in items:
        name, sep, text = item.partition("=")
        if not sep or not name.strip().isidentifier():
            raise KilnError("K0602", f"--arg {item!r} must look like NAME=VALUE")
        out[name.strip()] = parse_literal(text)
    return out


def parse_literal(text: str):
    from kiln.compiler.syntax import ast as A
    from kiln.compiler.syntax.build import ASTBuilder
    from kiln.compiler.syntax.parser import parse

    def value(node):
        if isinstance(node, A.Literal):
            return node.value
        if isinstance(node, (A.ListLit, A.TupleLit)):
            items = [value(i) for i in node.items]
            return items if isinstance(node, A.ListLit) else tuple(items)
        if isinstance(node, A.UnaryOp) and node.op == "-":
            inner = value(node.operand)
            if isinstance(inner, (int, float)) and not isinstance(inner, bool):
                return -inner
        raise ValueError(text)

    try:
        return value(ASTBuilder("--arg", text).transform(parse(text, "--arg", start="test")))
    except (KilnError, ValueError):
        return text


def elaborate(opts):
    from kiln.api import load

    program = load(Path(opts.file))
    return program, program.elaborate(opts.model, parse_args_option(opts.arg))


def cmd_check(opts) -> int:
    _, model = elaborate(opts)
    print(f"{model.name}: ok")
    for p in model.inputs:
        print(f"  input  {p.name}: {p.type}{'  (optional)' if p.optional else ''}")
    for p in model.outputs:
        print(f"  output {p.name}: {p.type}")
    return 0


def format_count(n: int) -> str:
    for div, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= div:
            return f"{n / div:.3g}{suffix}"
    return str(n)


def cmd_params(opts) -> int:
    from kiln.compiler.summary import number

    _, model = elaborate(opts)
    rows = []
    total = 0
    for path, info in model.params.items():
        count = math.prod(info.shape)
        total += count if info.kind == "param" else 0
        kind = info.kind + ("" if info.persistent else " (not saved)")
        rows.append((path, kind, info.dtype, str(list(info.shape)), f"{count:,}"))
    for alias, canonical in model.aliases.items():
        rows.append((alias, f"tied to {canonical}", "", "", ""))
    headers = ("name", "kind", "dtype", "shape", "count")
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(5)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=False))
    print(line)
    print("-" * len(line))
    for r in rows:
        print(
            "  ".join(
                str(c).ljust(w) if i != 4 else str(c).rjust(w)
                for i, (c, w) in enumerate(zip(r, widths, strict=False))
            )
        )
    buffers = sum(
        math.prod(i.shape) for i in model.params.values() if i.kind == "buffer"
    )
    print(
        f"\ntotal parameters: {total:,} ({format_count(total)})"
        + (f"; buffers: {buffers:,}" if buffers else "")
    )
    macs = model.macs_by_scope()
    by_block: dict[str, Dim] = {}
    for scope, m in macs.items():
        top = scope.split(".")[0] if scope else "(model)"
        by_block[top] = by_block.get(top, Dim.of(0)) + m
    if by_block:
        print("\nmultiply-adds of one call:")
        for block, m in by_block.items():
            print(f"  {block:<24} {number(m, format_count)}")
        total_macs = sum(by_block.values(), Dim.of(0))
        print(f"  {'total':<24} {number(total_macs, format_count)}")
    return 0


def cmd_summary(opts) -> int:
    from kiln.compiler.summary import format_summary, summarise_model

    if opts.depth is not None and opts.depth < 1:
        raise KilnError("K0602", f"--depth {opts.depth}: the depth counts from 1 (the model's "
                        "own members)")
    _, model = elaborate(opts)
    sizes = parse_binds(opts.bind, model.inputs, model.name)
    print(format_summary(summarise_model(model, sizes, opts.depth)))
    return 0


def cmd_graph(opts) -> int:
    from kiln.compiler.printing import to_dot, to_dot_pair

    _, model = elaborate(opts)
    dot = to_dot(model.graph, model.name)
    if opts.passes:
        from kiln.compiler.elaborate.members import generate_params
        from kiln.compiler.pipelines import optimize

        optimized, _ = optimize(model, params=generate_params(model.params, 0))
        dot = to_dot_pair(model.graph, optimized, model.name)
    out = opts.output
    if out is None:
        print(dot)
        return 0
    if out.endswith(".svg"):
        exe = shutil.which("dot")
        if exe is None:
            raise KilnError(
                "K0602",
                "writing SVG needs Graphviz's `dot` program, which is not on PATH",
                hint="install Graphviz (e.g. apt-get install graphviz), or write DOT with "
                "-o graph.dot and render it elsewhere",
            )
        proc = subprocess.run([exe, "-Tsvg"], input=dot, capture_output=True, text=True)
        if proc.returncode != 0:
            raise KilnError("K0602", f"dot failed: {proc.stderr.strip()}")
        dot = proc.stdout
    write_atomically(out, dot.encode(), lambda why: KilnError("K0403", f"{out}: {why}"))
    print(f"wrote {out}")
    return 0


def cmd_run(opts) -> int:
    from kiln.runtime.weights import check_tensor_file, save_weights

    if opts.output:
        # before any work: a run whose outputs cannot be saved is refused before it is made
        check_tensor_file(opts.output, "outputs")
    model = compile_from_options(opts, opts.target)
    feeds = load_inputs(opts, model)
    outputs = model(**feeds)
    outputs = outputs if isinstance(outputs, tuple) else (outputs,)
    for port, value in zip(model.outputs, outputs, strict=False):
        print(f"{port.name}: {value.dtype}{list(value.shape)}  {summarise(value)}")
    if opts.output:
        save_weights(opts.output, {p.name: v for p, v in zip(model.outputs, outputs, strict=False)},
                     role="outputs")
        print(f"wrote {opts.output}")
    return 0


def load_inputs(opts, model) -> dict:
    """The arrays `kiln run` feeds: --input files (converted with --cast), then random values
    for the rest, sized by --bind and by the symbols the given arrays bind."""
    import numpy as np

    from kiln.runtime.weights import load_array

    binds = parse_binds(opts.bind, model.inputs, model.name)
    feeds = {}
    ports = {p.name: p for p in model.inputs}
    names = set(ports)
    for item in opts.input:
        if "=" not in item:
            raise KilnError("K0602", f"--input {item!r} must look like NAME=PATH.npy")
        name, path = item.split("=", 1)
        if name not in names:
            raise KilnError(
                "K0501",
                f"{model.name} has no input named {name!r}",
                hint=f"its inputs: {', '.join(sorted(names))}",
            )
        if name in feeds:  # the last one silently winning would run what was not meant
            raise KilnError("K0602", f"--input {name} is given twice",
                            hint="give each input once")
        feeds[name] = input_dtype(ports[name], load_array(path, name), path, opts.cast)
    sizes = sizes_of_given(model.inputs, feeds, binds)
    missing = [p for p in model.inputs if p.name not in feeds and not p.optional]
    if missing and not opts.random_inputs:
        raise KilnError(
            "K0501",
            "missing inputs: " + ", ".join(f"{p.name}: {p.type}" for p in missing),
            hint="give them with --input NAME=PATH.npy, or use --random-inputs",
        )
    randoms = [p for p in model.inputs if p.name not in feeds
               and (opts.random_optional if p.optional else opts.random_inputs)]
    shapes = {p.name: random_shape(p, sizes) for p in randoms}
    check_random_size(randoms, shapes)
    rng = np.random.default_rng(opts.seed)
    for p in randoms:
        feeds[p.name] = random_array(rng, shapes[p.name], p.type)
    left_out = [p for p in model.inputs if p.name not in feeds]
    if left_out:  # not silently: the model runs without them, which may change its result
        print("kiln: running without the optional inputs "
              + ", ".join(f"{p.name}: {p.type}" for p in left_out)
              + " (give them with --input NAME=PATH.npy, or --random-optional)", file=sys.stderr)
    return feeds


# a size written in ASCII digits: `--bind B=²` is no size (str.isdigit() says it is)
BIND = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*([0-9]+)\s*", re.ASCII)
MAX_SIZE = 2**31 - 1  # larger sizes could not be allocated as random inputs anyway


def input_symbols(ports) -> list[str]:
    """The symbolic sizes of a model's inputs, in the order they first appear."""
    seen: dict[str, None] = {}
    for p in ports:
        for d in p.type.shape:
            for s in sorted(d.symbols()):
                seen.setdefault(s, None)
    return list(seen)


def parse_binds(items: list[str], ports, model_name: str) -> dict[str, int]:
    """--bind SYM=N, each SYM a symbolic size of the model's inputs."""
    symbols = input_symbols(ports)
    binds: dict[str, int] = {}
    for item in items:
        m = BIND.fullmatch(item)
        if m is None:
            raise KilnError("K0602", f"--bind {item!r} must look like SYM=N, N a size written "
                            "in the digits 0-9", hint="e.g. --bind B=4")
        name, n = m.group(1), int(m.group(2))
        if name not in symbols:
            raise KilnError("K0602", f"--bind {name}: the inputs of {model_name} have no "
                            f"symbolic size {name}", hint=_symbols_hint(name, symbols))
        if n > MAX_SIZE:
            raise KilnError("K0602", f"--bind {name}={n}: sizes above {MAX_SIZE:,} are not "
                            "supported")
        if binds.get(name, n) != n:
            raise KilnError("K0602", f"--bind {name} is given twice: {binds[name]} and {n}")
        binds[name] = n
    return binds


def _symbols_hint(name: str, symbols: list[str]) -> str:
    if not symbols:
        return "every size of its inputs is fixed: there is nothing to bind"
    import difflib

    close = [s for s in symbols if s.lower() == name.lower()]
    close += [s for s in difflib.get_close_matches(name, symbols, n=2) if s not in close]
    mean = f"did you mean {' or '.join(close)}? " if close else ""
    return f"{mean}its symbolic sizes: {', '.join(symbols)}"


def sizes_of_given(ports, feeds: dict, binds: dict[str, int]) -> dict[str, int]:
    """--bind's sizes, with those of the symbols that axes of the given arrays are exactly
    (`x: f32[B, 784]` from a [3, 784] array gives B = 3); a --bind the arrays contradict is
    refused. Other mismatches are the model's to report when it is called."""
    sizes = dict(binds)
    source = {name: f"--bind {name}={n}" for name, n in binds.items()}
    for p in ports:
        if p.name not in feeds or feeds[p.name].ndim != p.type.rank:
            continue
        for axis, (d, n) in enumerate(zip(p.type.shape, feeds[p.name].shape, strict=True)):
            sym = d.symbol
            if sym is None:
                continue
            if sizes.get(sym, n) != n:
                raise KilnError("K0503", f"input {p.name} has {sym} = {n} (axis {axis} of "
                                f"shape {list(feeds[p.name].shape)}), but {source[sym]}")
            sizes[sym] = n
            source.setdefault(sym, f"input {p.name} has {sym} = {n}")
    return sizes


def random_shape(port, sizes: dict[str, int]) -> tuple[int, ...]:
    """The shape of a random input: symbols not bound are 1."""
    env = {s: sizes.get(s, 1) for d in port.type.shape for s in d.symbols()}
    shape = tuple(d.evaluate(env) for d in port.type.shape)
    bad = [(d, n) for d, n in zip(port.type.shape, shape, strict=True) if n < 0]
    if bad:
        raise KilnError("K0602", f"random input {port.name}: {port.type} has {bad[0][0]} = "
                        f"{bad[0][1]} with these sizes", hint="bind its symbols with --bind")
    return shape


def check_random_size(ports, shapes: dict) -> None:
    """Refuse random inputs larger than this machine's memory, rather than be killed."""
    import numpy as np

    from kiln.compiler.types import NUMPY_DTYPES

    total = 0
    for p in ports:
        total += NUMPY_DTYPES[p.type.dtype].itemsize * int(np.prod(shapes[p.name], dtype=object))
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not POSIX: no bound known
        return
    if total > memory:
        raise KilnError("K0602", f"the random inputs would take {total:,} bytes, more than this "
                        f"machine's {memory:,} bytes of memory", hint="bind smaller sizes with "
                        "--bind")


def input_dtype(port, value, path: str, cast: bool):
    """An --input array as the model takes it: as it is when the model accepts its dtype,
    converted when --cast is given and the conversion keeps every value, else refused."""
    import numpy as np

    from kiln.compiler.types import NUMPY_DTYPES, dtype_of_numpy

    want = port.type.dtype
    target = NUMPY_DTYPES[want]
    got = dtype_of_numpy(value.dtype)
    if value.dtype == target or (not cast and got is not None
                                 and np.can_cast(value.dtype, target, "safe")):
        return value  # the model takes it, or widens it (f16 -> f32, i32 -> i64)
    if not cast:
        raise KilnError("K0502", f"input {port.name} from {path} is {value.dtype}, but the "
                        f"model takes {want}", hint="pass --cast to convert it (values the "
                        "conversion would change are refused)")
    return cast_array(value, want, f"--cast: input {port.name} from {path}")


def cast_array(value, want: str, what: str):
    """`value` converted to kiln dtype `want`; KilnError K0502 when a value would not survive:
    out of range (1e39 to f32, 2**40 to i32), not whole (0.5 to i64), NaN to an int, not 0 or 1
    to bool, an int a float cannot hold exactly. Rounding a float to a narrower float is the
    conversion asked for, and is kept."""
    import warnings

    import numpy as np

    from kiln.compiler.types import FLOAT_DTYPES, NUMPY_DTYPES, dtype_of_numpy

    if dtype_of_numpy(value.dtype) == "bf16":
        value = value.astype(np.float32)  # exact; numpy knows f32's kind, not bf16's
    kind = value.dtype.kind
    if kind not in "biuf":
        raise KilnError("K0502", f"{what}: cannot convert {value.dtype} to {want}")
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # out-of-range casts warn; they are refused below
        out = value.astype(NUMPY_DTYPES[want])
        if want == "bool":
            bad = (value != 0) & (value != 1)
            why = "is neither 0 nor 1"
        elif want in FLOAT_DTYPES and kind == "f":
            bad = np.isfinite(value) & ~np.isfinite(out)
            why = f"is out of {want}'s range"
        elif want in FLOAT_DTYPES:
            bad = ~np.isfinite(out)
            bad |= np.where(bad, 0, out).astype(value.dtype) != value
            why = f"is not exactly a {want}"
        elif kind == "f":
            info = np.iinfo(NUMPY_DTYPES[want])
            bad = ~np.isfinite(value) | (value != np.trunc(value))
            # -min, not max: max (2**63 - 1) rounds up to 2**63 as a float
            bad |= (value < info.min) | (value >= -float(info.min))
            why = f"is not a whole number in {want}'s range"
        else:
            bad = (out.astype(value.dtype) != value) | ((out < 0) != (value < 0))
            why = f"is out of {want}'s range"
    if bad.any():
        at = tuple(int(i) for i in np.argwhere(bad)[0])
        raise KilnError("K0502", f"{what}: {value[at].item()!r} at index {list(at)} {why}",
                        hint="convert it yourself if the change is intended")
    return out


def random_array(rng, shape, ttype):
    """Random values of a kiln type: floats ~ N(0, 1), ints in [0, 2), bools."""
    if ttype.dtype == "bool":
        return rng.random(shape) < 0.5
    if ttype.dtype in ("i32", "i64"):
        return rng.integers(0, 2, size=shape).astype(ttype.np_dtype)
    return rng.standard_normal(shape).astype(ttype.np_dtype)


def summarise(a) -> str:
    """One line about an output array: mean, std, min, max (or the count of trues)."""
    import numpy as np

    if a.size == 0:
        return "(empty)"
    if a.dtype == np.bool_:
        return f"true: {int(a.sum())} of {a.size}"
    f = a.astype(np.float64)
    with np.errstate(invalid="ignore"):  # inf - inf in the std of an output holding inf
        return f"mean {f.mean():.4g}  std {f.std():.4g}  min {f.min():.4g}  max {f.max():.4g}"


if __name__ == "__main__":
    sys.exit(main())
