"""The public Python API: kiln.load and kiln.compile."""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kiln.compiler import progress
from kiln.compiler.errors import KilnError

if TYPE_CHECKING:  # the compiler's back half loads when a model is compiled, not before
    import numpy as np

    from kiln.compiler.codegen.llvm.target import Target
    from kiln.compiler.driver import Compilation
    from kiln.compiler.elaborate import Program
    from kiln.compiler.onnx_import import OnnxProgram

TARGETS = ("reference", "onnx", "native")
ONNX_SUFFIX = ".onnx"


def is_onnx_path(source: Any) -> bool:
    """Whether `source` names an ONNX file: a path (str or os.PathLike) ending in .onnx."""
    if isinstance(source, os.PathLike) or (isinstance(source, str) and "\n" not in source
                                           and "{" not in source):
        return Path(os.fspath(source)).suffix.lower() == ONNX_SUFFIX
    return False


def is_onnx_proto(source: Any) -> bool:
    """Whether `source` is an onnx.ModelProto (onnx is not imported for a kiln file)."""
    onnx = sys.modules.get("onnx")
    return onnx is not None and isinstance(source, onnx.ModelProto)


def load(source: str | os.PathLike) -> Program | OnnxProgram:
    """Parse a model file (a path) or model source text, resolving its imports; an ONNX file
    (a path ending in .onnx, or an onnx.ModelProto) is imported (an OnnxProgram).

    The result lists the file's models (`program.model_names`) and elaborates any of them
    (`program.elaborate("MLP", args={"hidden": 256})`), raising KilnError on any mistake.
    """
    if is_onnx_path(source) or is_onnx_proto(source):
        from kiln.compiler.onnx_import import load_onnx

        return load_onnx(source)
    if isinstance(source, os.PathLike):
        source = Path(source)
    elif not isinstance(source, str):  # bytes, None, a number: neither a path nor source text
        raise KilnError("K0602", f"kiln.load takes source text (str) or a path (os.PathLike), "
                        f"not {type(source).__name__}",
                        hint="for a path held in bytes: kiln.load(os.fsdecode(path))")
    from kiln.compiler.elaborate import load_program  # the parser: on use

    return load_program(source)


def _is_onnx_program(x: Any) -> bool:
    """Whether x is an imported ONNX model, without importing onnx for a kiln file (onnx
    imports ml_dtypes, which takes longer than numpy): one exists only once the importer is."""
    module = sys.modules.get("kiln.compiler.onnx_import")
    return module is not None and isinstance(x, module.OnnxProgram)


def compile(
    source: str | os.PathLike | Program,
    model: str | None = None,
    target: str = "native",
    seed: int = 0,
    weights: str | os.PathLike | dict | None = None,
    args: dict[str, Any] | None = None,
    strict: bool = True,
    providers: list[str] | None = None,
    opt_level: int = 1,
    threads: int | None = None,
    training: bool = False,
    precision: str = "f32",
):
    """Compile one model of a file into a callable taking and returning numpy arrays.

    model: the model's name (default: the file's last `model`); args: its compile-time
    arguments; seed: initial weights are a pure function of (seed, parameter path);
    weights: a .safetensors or .npz file (or a dict) loaded by dotted path.
    target: "native" (the default: machine code for this CPU), "reference" (numpy) or
    "onnx" (onnxruntime; `providers` picks its execution providers, by default CUDA or
    TensorRT when the installed onnxruntime has them, else CPU).
    opt_level: 1 runs the graph optimizer (constant folding, simplification, BatchNorm
    folding, CSE, DCE); 0 compiles the graph as elaborated. What it did is `model.pass_stats`.
    threads: native code's parallelism (default: every core this process may use).
    training: elaborate with `training = true` (docs/training.md, "Training mode"): dropout
    draws its mask from the extra input `rng_key` ([seed, step], i64[2]) and batch_norm uses
    batch statistics, returning its buffers' new values as extra outputs (`model.updates`).
    precision: "f32" (the default) or, for target="native", "bf16": matmul and convolution
    multiply bf16-rounded operands with f32 sums (AVX512_BF16; K0971 on a CPU without it;
    docs/language.md, "Reduced precision").
    """

    request = _cache_request(source, model, target, args, opt_level, training, precision)
    if request is not None:  # a model entry of the compile cache, keyed without elaborating
        from kiln.runtime import modelcache

        hit = modelcache.load(request, seed, weights, strict, threads)
        if hit is not None:
            return hit
        source = load(source)
    compilation, params = prepare(source, model, target, seed, weights, args, strict, opt_level,
                                  training=training, precision=precision)
    if target == "onnx":
        from kiln.runtime.onnx import OnnxModel

        return OnnxModel(compilation, params, providers)
    if target == "native":
        from kiln.runtime.native import NativeModel

        native = NativeModel(compilation, params, threads=threads)
        if request is not None:
            modelcache.store(request, native, source, seed, weights is None)
        return native
    from kiln.runtime.reference import ReferenceModel

    return ReferenceModel(compilation, params)


def _cache_request(source, model, target: str, args, opt_level, training, precision="f32"):
    """The compile cache's model-entry request (runtime/modelcache.py) for a native compile
    of a model file, or None: source text, a Program, an ONNX model, other targets, or options
    the entry's key cannot spell compile the long way (a precision other than f32: its code
    is still found in the graph- and IR-keyed caches, whose keys hold the precision)."""
    if target != "native" or not isinstance(source, str | os.PathLike) or is_onnx_path(source):
        return None
    if precision != "f32":
        return None
    from kiln.runtime.modelcache import Request

    return Request.of(source, model, args, opt_level, training)


def prepare(source: str | os.PathLike | Program, model: str | None = None,
            target: str = "native", seed: int = 0,
            weights: str | os.PathLike | dict | None = None, args: dict[str, Any] | None = None,
            strict: bool = True, opt_level: int = 1, cpu: Target | None = None,
            training: bool = False, precision: str = "f32"
            ) -> tuple[Compilation, dict[str, np.ndarray]]:
    """What `compile` builds a model from: the model's Compilation for `target` (`cpu`: the
    CPU of native code, default this machine's) and its parameter values (initial ones from
    `seed`, then `weights` loaded over them). The options as `compile` takes them, checked
    alike."""
    if target not in TARGETS:
        raise KilnError(
            "K0602", f"unknown target {target!r}", hint=f"targets: {', '.join(TARGETS)}"
        )
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise KilnError("K0602", f"seed must be a non-negative int, not {seed!r}")
    if opt_level not in (0, 1):
        raise KilnError("K0602", f"opt_level must be 0 or 1, not {opt_level!r}")
    if not isinstance(training, bool):
        raise KilnError("K0602", f"training must be True or False, not {training!r}")
    from kiln.compiler.codegen.llvm import bf16

    bf16.check(precision, target)  # before elaborating: a wrong option costs nothing
    from kiln.compiler.driver import Compilation
    from kiln.compiler.elaborate import Program
    from kiln.compiler.initializers import generate_params
    program = source if isinstance(source, Program) or _is_onnx_program(source) \
        else load(source)
    if _is_onnx_program(program):  # checks the arguments as a kiln file's
        program.elaborate(model, args, training=training)
        compilation = Compilation.of_graph(program.name, program.graph, program.params,
                                           target, cpu, opt_level, precision)
    else:
        compilation = Compilation.of(program, model, args, target, cpu, opt_level, training,
                                     precision)
    elaborated = compilation.model
    loaded: dict[str, np.ndarray] = {}
    if weights is not None:  # load before building a backend, so it is built once
        from kiln.runtime.weights import apply_weights

        loaded = apply_weights({}, elaborated.params, elaborated.aliases, weights, strict)
    # initial values only for what the weights leave out (each is drawn from (seed, path)
    # alone, so a subset draws the same values): nothing to draw for a full set of weights
    drawn = {p: i for p, i in elaborated.params.items() if p not in loaded}
    count = sum(math.prod(i.shape) for i in drawn.values())
    with progress.step(f"initialising {count:,} parameter values"):
        initial = generate_params(drawn, seed)
    params = {p: loaded[p] if p in loaded else initial[p] for p in elaborated.params}
    return compilation, params


def write_kiln_source(source: str | os.PathLike, output: str | os.PathLike,
                      args: dict | None = None) -> list[str]:
    """Write the ONNX model in file `source` as kiln source at `output` (model.kiln) and its
    weights beside it (model.safetensors): both files or neither (`kiln import`). `args` fix
    symbolic sizes of its inputs first, as `kiln.compile(path, args=...)` does. Returns the
    paths written; K0907 when they cannot be written."""
    from kiln.compiler.files import staged_writes
    from kiln.compiler.onnx_import import load_onnx
    from kiln.compiler.onnx_import.writer import kiln_source
    from kiln.runtime.weights import save_weights

    program = load_onnx(source)
    if args:
        program.elaborate(args=args)  # checks them, and converts with those sizes fixed
    output = Path(output)
    weights = output.with_suffix(".safetensors")
    text, tensors = kiln_source(program, output.name, weights.name)

    def refuse(why: str) -> KilnError:
        return KilnError("K0907", f"{output}: {why}")

    with staged_writes(refuse) as staging:
        staging.write(output, text.encode("utf-8"))
        save_weights(weights, tensors, staging)
    return [str(output), str(weights)]


def load_compiled(path: str | os.PathLike):
    """A native library written by `kiln compile --target native -o model.so`, ready to call
    (its weights from model.safetensors beside it); no recompilation."""
    from kiln.runtime.aot import load_compiled as load

    return load(path)
