"""One pass's effect on native speed, measured in one process: each model compiled with the
native pipeline whole and without the named passes, the builds called in alternating rounds.

    python benchmarks/pass_ab.py --without strided_products [--models transformer mlp]
                                 [--batches 1 32] [--threads 1] [--rounds 11]
    python benchmarks/pass_ab.py --without strided_products --file examples/gpt.kiln
        --arg n_embd=768 --arg n_head=12 --arg block_size=1024 --bind B=1 --bind T=1024
    python benchmarks/pass_ab.py --without fuse.splits --models lstm gru --threads 2

Besides whole passes, `--without` takes a rule of one (SWITCHES): fuse.splits, the fuse
pass's joining of a split to the group that reads its parts (which then reads them in place).

The models are benchmarks/models.py's twins (TWIN_SOURCES), or a model file (--file, its
arguments set with --arg, random inputs of the sizes --bind gives, as `kiln run
--random-inputs`), with kiln's initial weights, the same in every build. Each build gets a
compile cache of its own. Per model and batch: the median over rounds of each round's median
call (and the fastest round), without / with the passes, their ratio (below 1: the passes
made it faster), the largest |difference| between the builds' outputs, and the kernels each
build runs. Progress goes to stderr. One process, so that the builds share the machine's
state minute to minute (this VM's speed drifts by up to 20 %); compare the ratios, not the
times across runs.
"""

from __future__ import annotations

import argparse
import importlib
import os
import statistics
import sys
import tempfile
import time

import numpy as np
from models import TWIN_SOURCES, twin_input  # benchmarks/models.py

import kiln
from kiln.compiler.codegen.llvm.pipeline import NATIVE_PIPELINE
from kiln.compiler.passes.edit import count_kernels

CALLS = 0.15  # seconds of calls per build per round (at least 3 calls)
# rules within a pass that --without may leave out: name -> (module, function made a no-op)
SWITCHES = {"fuse.splits": ("kiln.compiler.codegen.llvm.fuse", "_take_splits")}


def build(name: str, threads: int, without: list[str], weights: dict | None, cache: str,
          args: dict | None = None):
    """The twin `name` (or the model file at path `name`, with `args`) compiled natively with
    the passes `without` left out of the pipeline (restored afterwards), into its own compile
    cache."""
    saved = list(NATIVE_PIPELINE)
    NATIVE_PIPELINE[:] = [p for p in saved if p.name not in without]
    switched = [(importlib.import_module(SWITCHES[w][0]), SWITCHES[w][1]) for w in without
                if w in SWITCHES]
    rules = [getattr(module, attr) for module, attr in switched]
    for module, attr in switched:
        setattr(module, attr, lambda *_args: None)
    previous = os.environ.get("KILN_CACHE_DIR")
    os.environ["KILN_CACHE_DIR"] = cache
    try:
        model = kiln.compile(TWIN_SOURCES.get(name, name), target="native", threads=threads,
                             weights=weights, args=args)
        kernels = count_kernels(model.lowered().graph)
    finally:
        NATIVE_PIPELINE[:] = saved
        for (module, attr), rule in zip(switched, rules, strict=True):
            setattr(module, attr, rule)
        if previous is None:
            os.environ.pop("KILN_CACHE_DIR", None)
        else:
            os.environ["KILN_CACHE_DIR"] = previous
    return model, kernels


def round_ms(model, inputs: dict, seconds: float) -> float:
    """The median call of a round of `seconds` (at least 3 calls), in milliseconds."""
    times: list[float] = []
    began = time.perf_counter()
    while len(times) < 3 or time.perf_counter() - began < seconds:
        start = time.perf_counter()
        model(**inputs)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def file_inputs(model, binds: list[str]) -> dict:
    """Random inputs for a model file's model, sized by `binds` (["B=1", "T=1024"]), as
    `kiln run --random-inputs --bind ...` makes them."""
    from kiln.inputs import load_inputs

    opts = argparse.Namespace(input=[], bind=binds, cast=False, random_inputs=True,
                              random_optional=False, seed=0)
    return load_inputs(opts, model)


def compare(name: str, batch: int, threads: int, without: list[str], rounds: int,
            seconds: float = CALLS, args: dict | None = None,
            binds: list[str] | None = None) -> dict:
    """Both builds of one twin at one batch size (or of the model file `name` with `args`,
    on inputs sized by `binds`), timed in alternating rounds."""
    unknown = sorted(set(without) - {p.name for p in NATIVE_PIPELINE} - set(SWITCHES))
    if unknown:
        raise SystemExit(f"no such pass: {', '.join(unknown)}; the native pipeline's are "
                         + ", ".join(p.name for p in NATIVE_PIPELINE)
                         + "; rules within one: " + ", ".join(SWITCHES))
    with tempfile.TemporaryDirectory() as tmp:
        base, base_kernels = build(name, threads, without, None, os.path.join(tmp, "without"),
                                   args)
        whole, kernels = build(name, threads, [], base.state_dict(), os.path.join(tmp, "with"),
                               args)
        inputs = (twin_input(name, batch, np.random.default_rng(0)) if name in TWIN_SOURCES
                  else file_inputs(base.model, binds or []))
        outs = [m(**inputs) for m in (base, whole)]
        outs = [o if isinstance(o, tuple) else (o,) for o in outs]
        diff = max(float(np.abs(a - b).max()) for a, b in zip(*outs, strict=True))
        times: dict[str, list[float]] = {"without": [], "with": []}
        for _ in range(rounds):
            times["without"].append(round_ms(base, inputs, seconds))
            times["with"].append(round_ms(whole, inputs, seconds))
    return {"without": statistics.median(times["without"]), "with": statistics.median(
        times["with"]), "without_min": min(times["without"]), "with_min": min(times["with"]),
            "diff": diff, "kernels": (base_kernels, kernels)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--without", nargs="+", required=True, metavar="PASS",
                        help="native pipeline passes (or rules of one: SWITCHES) to leave out "
                             "of the first build")
    parser.add_argument("--models", nargs="+", default=["transformer"], choices=TWIN_SOURCES)
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 32])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument("--file", help="a model file to time instead of the twins")
    parser.add_argument("--arg", action="append", default=[], metavar="NAME=VALUE",
                        help="(--file) set a model argument, e.g. --arg n_layer=2")
    parser.add_argument("--bind", action="append", default=[], metavar="SYM=N",
                        help="(--file) a symbolic size of the random inputs, e.g. --bind B=1")
    opts = parser.parse_args()
    print(f"{'model':<13}{'batch':>6}{'without ms':>18}{'with ms':>18}{'ratio':>7}"
          f"{'max |diff|':>12}{'kernels':>10}")
    if opts.file:
        from kiln.inputs import parse_args_option

        print(f"{opts.file}: {' '.join(opts.bind)}, {opts.threads} thread(s)...",
              file=sys.stderr, flush=True)
        r = compare(opts.file, 0, opts.threads, opts.without, opts.rounds,
                    args=parse_args_option(opts.arg), binds=opts.bind)
        report(os.path.basename(opts.file), " ".join(opts.bind), r)
        return 0
    for name in opts.models:
        for batch in opts.batches:
            print(f"{name}: batch {batch}, {opts.threads} thread(s)...", file=sys.stderr,
                  flush=True)
            report(name, batch, compare(name, batch, opts.threads, opts.without, opts.rounds))
    return 0


def report(name: str, batch, r: dict) -> None:
    print(f"{name:<13}{batch:>6}{r['without']:>10.3f} ({r['without_min']:.3f})"
          f"{r['with']:>10.3f} ({r['with_min']:.3f}){r['with'] / r['without']:>7.3f}"
          f"{r['diff']:>12.1e}{r['kernels'][0]:>5} ->{r['kernels'][1]:>3}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
