"""The `kiln` command line: check, params, summary, graph, run, compile, train, import.

Only the subcommand that runs imports the compiler and numpy (`kiln --help` and `kiln
--version` need neither): heavy imports live inside the functions that use them.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

from kiln.compiler.dims import Dim
from kiln.compiler.errors import KilnError, KilnWarning
from kiln.compiler.files import write_atomically
from kiln.compiler.version import __version__
from kiln.inputs import load_inputs, parse_args_option, parse_binds, parse_literal
from kiln.train_options import train_options


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """A KilnWarning as `kiln: warning: ...` (not Python's file:line and source text)."""
    if issubclass(category, KilnWarning):
        print(f"kiln: warning: {message}", file=sys.stderr if file is None else file)
    else:
        _PYTHON_SHOW(message, category, filename, lineno, file, line)


_PYTHON_SHOW = warnings.showwarning


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    opts = parser.parse_args(argv)
    warnings.showwarning = _show_warning
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
        # argparse %-formats a subcommand's help (its line in `kiln --help`: "%%" there is
        # "%"), not its description
        c = sub.add_parser(name, help=help_, description=help_.replace("%%", "%"))
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
        c.add_argument("--precision", choices=["f32", "bf16"], default="f32",
                       help="bf16: matmul and convolution multiply bf16-rounded operands with "
                       "f32 sums (native; needs AVX512_BF16, and uses AMX tiles where the CPU has "
                       "them); f32 (default)")

    def bind_option(c, what):
        c.add_argument("--bind", action="append", default=[], metavar="SYM=N",
                       help=f"the size of a symbolic dimension of the inputs, e.g. --bind B=4 "
                       f"(repeatable; a symbol they do not have is refused): {what}")

    def input_options(c):
        """How `run` and `profile` take inputs and weights."""
        c.add_argument("--input", action="append", default=[], metavar="NAME=PATH.npy",
                       help="read input NAME from a .npy file (repeatable); its symbolic sizes "
                       "also size the random inputs")
        c.add_argument("--cast", action="store_true",
                       help="convert --input arrays to the dtypes the model takes (float64 "
                       "to f32, ...); values the conversion would change beyond rounding are "
                       "refused")
        c.add_argument("--random-inputs", action="store_true",
                       help="feed random values to the required inputs not given with --input "
                       "(floats ~ N(0, 1), ints in [0, 2), random bools)")
        c.add_argument("--random-optional", action="store_true",
                       help="feed random values to the optional inputs not given with --input "
                       "too (by default they are left out, and kiln says which)")
        bind_option(c, "it sizes the random inputs (default: the size the --input arrays "
                    "give it, else 1)")
        c.add_argument("--weights", help="a .safetensors or .npz file of weights")
        c.add_argument("--no-strict", action="store_true",
                       help="load weights non-strictly: missing ones keep their initial values "
                       "and unexpected ones are ignored (shapes must still match)")
        c.add_argument("--seed", type=int, default=0,
                       help="seed of the initial weights and of the random inputs")

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
    input_options(r)
    r.add_argument("-o", "--output", help="save the outputs to this .npz or .safetensors file")
    optimizer_options(r)
    prof = model_cmd("profile", "time each native kernel of a call: its source lines, time "
                  "share, GFLOP/s and %% of this CPU's measured FMA peak", cmd_profile)
    input_options(prof)
    prof.add_argument("--repeat", type=int, default=20, metavar="N",
                   help="calls to time, after one warm-up call (default 20)")
    prof.add_argument("--threads", type=int, default=None, metavar="T",
                   help="threads the kernels may use (default: as kiln.compile)")
    prof.add_argument("--top", type=int, default=None, metavar="N",
                   help="list only the N slowest kernels (in run order; totals are the whole "
                   "call's)")
    optimizer_options(prof)
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
    c.add_argument("--c-arrays", action="store_true",
                   help="native: also store the arrays derived from the weights (packed for "
                   "the GEMM, BatchNorm folded in) in model.safetensors, for a C caller; by "
                   "default each weight is stored once and kiln's loader derives the rest")
    optimizer_options(c)
    c.add_argument("--report", action="store_true",
                   help="list the kernels the backend runs with the source of the ops fused "
                   "into each, why neighbouring ops were not fused, and the planned peak "
                   "activation memory")
    c.add_argument("--train", action="store_true",
                   help="with --report: also report the train step (forward, loss, backward, "
                   "update) and its peak memory per step (docs/training.md)")
    c.add_argument("--loss", default="cross_entropy",
                   help="--train: the loss, a std.losses name or FILE.kiln:NAME (default: "
                   "cross_entropy)")
    c.add_argument("--optimizer", default="adam",
                   help="--train: sgd, adam, adamw or rmsprop (default: adam)")
    c.add_argument("--weights", help="a .safetensors or .npz file of weights")
    c.add_argument("--no-strict", action="store_true", help="load weights non-strictly")
    c.add_argument("--seed", type=int, default=0, help="seed of the initial weights")
    train = model_cmd("train", "train a model on a dataset (docs/training.md)", cmd_train)
    train_options(train)
    gan_options(train)
    tune_options(model_cmd("tune", "search hyperparameters with Ray Tune (docs/scale-out.md)",
                           cmd_tune))
    i = sub.add_parser("import", help="write an ONNX model as kiln source, with its weights",
                       description="write an ONNX model as kiln source (model.kiln) and its "
                       "weights (model.safetensors beside it)")
    i.add_argument("file", help="the .onnx model file")
    i.add_argument("-o", "--output", required=True,
                   help="the kiln file to write (model.kiln; model.safetensors beside it)")
    i.add_argument("--arg", action="append", default=[], metavar="NAME=SIZE",
                   help="fix an input's symbolic size (by dim_param), e.g. --arg seq=128")
    i.set_defaults(handler=cmd_import)
    cache_options(sub)
    return p


def cache_options(sub) -> None:
    """`kiln cache info` and `kiln cache clear`: the compile cache's entries and bound."""
    c = sub.add_parser("cache", help="show or empty the compile cache ($KILN_CACHE_DIR)",
                       description="show (info) or empty (clear) the compile cache: its "
                       "directory, entries, size and size bound ($KILN_CACHE_SIZE)")
    c.add_argument("action", choices=["info", "clear"], help="info or clear")
    c.set_defaults(handler=cmd_cache)


def cmd_cache(opts) -> int:
    """`kiln cache info`: where the cache is, its entries and bytes against the bound;
    `kiln cache clear`: remove every entry (a process loading one misses and rebuilds it)."""
    from kiln.compiler.codegen.llvm import cache, evict
    from kiln.compiler.files import format_bytes

    bound = evict.limit()  # K0975 for a $KILN_CACHE_SIZE that is no size, before any change
    if opts.action == "clear":
        print(f"removed {format_bytes(evict.clear(cache.cache_dir()))} from {cache.cache_dir()}")
        return 0
    found = evict.entries(cache.cache_dir())
    total = sum(e.size for e in found)
    models = sum(1 for e in found if e.kind == "model")
    print(f"directory: {cache.cache_dir()}" + ("" if cache.enabled() else " (KILN_CACHE=0: off)"))
    print(f"entries:   {models} models, {len(found) - models} object files")
    print(f"size:      {format_bytes(total)} of at most {format_bytes(bound)} "
          f"(KILN_CACHE_SIZE)")
    return 0


def cmd_import(opts) -> int:
    """`kiln import model.onnx -o model.kiln`: the source and its weights, both or neither."""
    output = Path(opts.output)
    if output.suffix != ".kiln":
        raise KilnError("K0602", f"kiln import writes kiln source: {opts.output!r} does not end "
                        "in .kiln", hint=f"name it {output.with_suffix('.kiln').name}")
    if output.is_dir():
        raise KilnError("K0602", f"cannot write kiln source to {opts.output}: it is a directory")
    from kiln.api import write_kiln_source

    written = write_kiln_source(Path(opts.file), output, parse_args_option(opts.arg))
    print(f"wrote {', '.join(written)}")
    return 0



def cmd_train(opts) -> int:
    from kiln.train.loop import check_train_outputs

    check_train_outputs(opts)  # before hours of training, not after
    if opts.gan:
        if opts.ray_workers is not None:
            raise KilnError("K0955", "--ray-workers trains one model; a GAN (--gan) trains in "
                            "one process")
        from kiln.train.gan_loop import fit_gan

        return fit_gan(opts)
    opts.loss = opts.loss or "cross_entropy"  # None: the default of both forms
    if opts.ray_workers is not None:
        from kiln.ray_train import fit_options

        fit_options(opts, parse_args_option(opts.arg))
        return 0
    from kiln.train.loop import fit

    return fit(opts, parse_args_option(opts.arg))


def gan_options(t) -> None:
    """The options `kiln train --gan` adds (docs/training.md, "Training a GAN")."""
    t.add_argument("--gan", action="store_true",
                   help="train a generator and a discriminator in alternation (kiln.GANTrainer)"
                   " on the real examples of --data (or gaussians8)")
    t.add_argument("--generator", default="Generator", help="--gan: the generator model")
    t.add_argument("--discriminator", default="Discriminator",
                   help="--gan: the discriminator model")


def train_report_of(opts) -> str:
    """`kiln compile --report --train`: the report of the model's train step."""
    from kiln.compiler.train.optim import by_name
    from kiln.train import Trainer
    from kiln.train.report import train_report

    trainer = Trainer(opts.file, loss=opts.loss, optimizer=by_name(opts.optimizer),
                      seed=opts.seed, model=opts.model, args=parse_args_option(opts.arg),
                      weights=opts.weights, opt_level=opts.opt_level)
    return train_report(trainer)


def tune_options(t) -> None:
    """The options of `kiln tune` (--arg fixes a model argument; --param varies one)."""
    t.add_argument("--param", action="append", default=[], required=True,
                   metavar="NAME=VALUES",
                   help="a dimension of the search (repeatable): lr, batch, weight_decay, "
                   "momentum or a model argument, with values V1,V2,... (a grid axis, or a "
                   "choice) or a range loguniform:LO:HI, uniform:LO:HI, randint:LO:HI "
                   "(random and optuna search), e.g. --param lr=loguniform:1e-4:1e-1 "
                   "--param hidden=64,128,256")
    t.add_argument("--search", choices=["grid", "random", "optuna"], default="grid",
                   help="grid: every combination once (default); random: --trials random "
                   "draws; optuna: --trials trials chosen by Optuna's TPE (Bayesian)")
    t.add_argument("--trials", type=int, metavar="N",
                   help="random and optuna: how many trials (default 10)")
    t.add_argument("--scheduler", choices=["asha", "none"], default="none",
                   help="asha: stop trials that fall behind after each epoch (default: none)")
    t.add_argument("--metric", default="val_accuracy",
                   help="what best means: train_loss, val_loss, val_accuracy, val_precision, "
                   "val_recall or val_f1 (default: val_accuracy)")
    t.add_argument("--mode", choices=["max", "min"], default="max",
                   help="whether the best trial has the largest metric or the smallest")
    t.add_argument("--data", required=True, metavar="NAME_OR_NPZ",
                   help="as kiln train takes it: digits, iris, ... or a .npz with x and y")
    t.add_argument("--loss", default="cross_entropy", help="as kiln train takes it")
    t.add_argument("--optimizer", default="adam", help="sgd, adam, adamw or rmsprop")
    t.add_argument("--epochs", type=int, default=5, help="epochs per trial (default: 5)")
    t.add_argument("--val-split", type=float, default=0.2,
                   help="the fraction of examples kept for validation (default: 0.2)")
    t.add_argument("--seed", type=int, default=0,
                   help="every trial's seed (initial weights, shuffling) and the search's")
    t.add_argument("--target", choices=["native", "reference"], default="native",
                   help="what each trial trains on (default: native)")
    t.add_argument("--max-concurrent", type=int, metavar="N",
                   help="trials at once (default: one per free CPU of the cluster)")
    t.add_argument("--storage", metavar="DIR",
                   help="where Ray Tune keeps the experiment (default: ~/ray_results)")
    t.add_argument("--name", help="the experiment's name (a folder of --storage)")
    t.add_argument("--address", help="an existing Ray cluster to run on (auto, or "
                   "ray://HOST:10001); default: a local cluster on this machine")
    t.add_argument("--retries", type=int, default=0, metavar="N",
                   help="start a failed trial again, from its last checkpoint, up to N times "
                   "(for workers lost on a cluster; default 0)")
    t.add_argument("--quiet", action="store_true",
                   help="no progress from Ray Tune while the trials run")
    t.add_argument("-o", "--output", help="write the best trial's weights (.safetensors or "
                   ".npz)")


def parse_param_option(items: list[str]) -> dict:
    """--param NAME=V1,V2,... (values written as --arg writes them) or NAME=KIND:LO:HI, a
    range of kiln.tune.RANGES."""
    from kiln import tune

    space: dict = {}
    for item in items:
        name, sep, text = item.partition("=")
        name = name.strip()
        kind, colon, ends = text.partition(":")
        if not sep or not name.isidentifier() or not text or name in space:
            raise KilnError("K0960", f"--param {item!r} must look like NAME=V1,V2,... or "
                            "NAME=loguniform:LO:HI, each NAME once",
                            hint="e.g. --param hidden=64,128 --param lr=loguniform:1e-4:1e-1")
        if colon and kind in tune.RANGES:
            bounds = [parse_literal(v) for v in ends.split(":")]
            if len(bounds) != 2:
                raise KilnError("K0960", f"--param {item!r}: a range is {kind}:LO:HI")
            space[name] = tune.RANGES[kind](*bounds)
        else:
            space[name] = [parse_literal(v) for v in text.split(",")]
    return space


def cmd_tune(opts) -> int:
    from kiln import tune

    space = parse_param_option(opts.param)
    result = tune.run(opts.file, data=opts.data, space=space, loss=opts.loss,
                      search=opts.search, num_samples=opts.trials,
                      scheduler=None if opts.scheduler == "none" else opts.scheduler,
                      metric=opts.metric, mode=opts.mode, epochs=opts.epochs, seed=opts.seed,
                      optimizer=opts.optimizer, model=opts.model,
                      args=parse_args_option(opts.arg), val_split=opts.val_split,
                      output=opts.output, storage=opts.storage, name=opts.name,
                      max_concurrent=opts.max_concurrent, target=opts.target,
                      address=opts.address, retries=opts.retries,
                      verbose=0 if opts.quiet else 1)
    print(f"\n{result.table()}")
    best = result.best
    print(f"\nbest: trial {best.id}, {opts.metric} {best.metrics[opts.metric]:.4g}: "
          + " ".join(f"{k}={v}" for k, v in best.config.items()))
    print(f"experiment: {result.path}")
    if opts.output:
        print(f"wrote {opts.output}")
    return 0


def compile_options(opts) -> dict:
    """The options of kiln.compile (and kiln.api.prepare) that `run` and `compile` share."""
    return dict(model=opts.model, seed=opts.seed, weights=opts.weights,
                args=parse_args_option(opts.arg), strict=not opts.no_strict,
                opt_level=opts.opt_level, precision=opts.precision)


def print_passes(stats: list | None) -> None:
    """What the optimizer's passes did (--print-passes)."""
    from kiln.compiler.passes import format_stats

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
    from kiln.compiler.driver import Weights

    opts.target = compile_target(opts.target, opts.output)
    check_outputs(opts)
    from kiln.api import load, prepare

    compilation, params = prepare(load(Path(opts.file)), **compile_options(opts),
                                  target=opts.target)
    weights = Weights.of(params)
    if opts.print_passes:  # an ONNX file is made by the ONNX pipeline
        compilation.lowered(weights, pipeline=compilation.pipeline)
        print_passes(compilation.pipeline_stats.get(compilation.pipeline))
    if opts.report:
        from kiln.compiler.report import report

        print(report(compilation.lowered(weights, pipeline="native"), opts.target))
        if opts.train:
            print()
            print(train_report_of(opts))
    elif opts.train:
        raise KilnError("K0602", "--train goes with --report (kiln compile --report --train)")
    model = compilation.model
    optional = {p.name for p in model.inputs if p.optional}
    for name in opts.omit:
        if opts.target != "native":
            raise KilnError("K0602", "--omit builds a native library without an optional input; "
                            "an ONNX file takes every input")
        if name not in optional:
            raise KilnError("K0602", f"--omit {name}: {model.name} has no optional input "
                            f"{name}", hint=f"its optional inputs: {', '.join(sorted(optional))}"
                            if optional else "it has no optional inputs")
    if opts.c_arrays and opts.target != "native":
        raise KilnError("K0602", "--c-arrays is for a native library's weights; an ONNX file "
                        "holds its weights as they are")
    if opts.target == "native":
        from kiln.compiler.codegen.llvm import target as targets
        from kiln.runtime.aot import library_signature, write_library

        cpu = targets.named(opts.cpu) if opts.cpu else targets.host()
        present = frozenset(optional - set(opts.omit))
        files = write_library(compilation, weights, opts.output, present, cpu,
                              c_arrays=opts.c_arrays)
        built = compilation.lowered(weights, present, "native")
        print(f"wrote {', '.join(str(f) for f in files)}: {library_signature(built)}, "
              f"for {cpu.cpu}")
        return 0
    compilation.write_onnx(weights, opts.output)
    from kiln.compiler.codegen.onnx import OPSET
    from kiln.runtime.signature import Signature

    print(f"wrote {opts.output}: {Signature.of(model)}, ONNX opset {OPSET}")
    return 0


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
    if opts.passes:  # optimized as native code and the reference run it, with seed 0
        from kiln.compiler.driver import Compilation, Weights
        from kiln.compiler.initializers import generate_params

        weights = Weights.of(generate_params(model.params, 0))
        optimized = Compilation(model, target="reference").lowered(weights).graph
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
    from kiln.api import compile as kiln_compile

    if Path(opts.file).suffix.lower() == ".so":  # a library from `kiln compile -o model.so`
        model = _library(opts)
    else:
        # the path, not a loaded program: a warm run loads the model from its compile cache
        # entry
        model = kiln_compile(Path(opts.file), **compile_options(opts), target=opts.target)
    if opts.print_passes:
        model.lowered()
        print_passes(model.pass_stats)
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


def _library(opts):
    """`kiln run model.so`: the library as it was compiled (kiln.load_compiled: its weights
    from model.safetensors beside it, or --weights over them). What only a source has (another
    model, arguments, a target, an optimizer level, a precision) is fixed in the library:
    asking for it is refused, not ignored."""
    from kiln.api import load_compiled

    fixed = [flag for flag, given in (
        ("--model", opts.model is not None), ("--arg", bool(opts.arg)),
        ("--target", opts.target != "native"), ("-O", opts.opt_level != 1),
        ("--print-passes", opts.print_passes), ("--precision", opts.precision != "f32"))
        if given]
    if fixed:
        raise KilnError("K0602", f"{opts.file} is a compiled library: {', '.join(fixed)} "
                        "cannot change it", hint="compile the model file again with those "
                        "options (kiln compile ... -o model.so), or run the model file itself")
    model = load_compiled(opts.file)
    if opts.weights:
        model.load_weights(opts.weights, strict=not opts.no_strict)
    return model


def cmd_profile(opts) -> int:
    from kiln.api import compile as kiln_compile
    from kiln.api import load
    from kiln.runtime.profile import format_profile

    for name, value in (("--repeat", opts.repeat), ("--threads", opts.threads),
                        ("--top", opts.top)):
        if value is not None and value < 1:
            raise KilnError("K0602", f"{name} must be at least 1, not {value}")
    extra = {} if opts.threads is None else {"threads": opts.threads}
    model = kiln_compile(load(Path(opts.file)), **compile_options(opts), target="native",
                         **extra)
    if opts.print_passes:
        model.lowered()
        print_passes(model.pass_stats)
    opts.random_inputs = True  # a profile needs every required input: random where not given
    feeds = load_inputs(opts, model)
    print(format_profile(model.profile(repeat=opts.repeat, **feeds), top=opts.top))
    return 0


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
