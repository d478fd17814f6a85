"""`kiln run`'s inputs: arrays from --input files (converted with --cast), random values for
the rest (--random-inputs, --random-optional), sized by --bind and by the given arrays.

Like the CLI, it imports numpy and the compiler inside the functions that use them.
"""

from __future__ import annotations

import os
import re
import sys

from kiln.compiler.errors import KilnError


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
