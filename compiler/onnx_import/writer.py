"""`kiln import model.onnx -o model.kiln`: an imported graph written back as kiln source, with
its weights in model.safetensors beside it.

    text, tensors = kiln_source(program, "model.kiln", "model.safetensors")
    kiln.api.write_kiln_source("model.onnx", "model.kiln")   # both files, or neither

The source is one `model` whose forward has one line per op of the imported graph, each a call
of the kiln primitive the converters built (`t3 = conv(t2, conv1.weight, stride = 2)`);
indexing, scans and sizes used as values are written in the language's own syntax. Each
initializer is a `param` named by its ONNX name, dots kept as paths (a part that is not an
identifier, such as PyTorch's `0` or `onnx::Conv_12`, is made one, and the header lists each
such rename); each constant the converters made is a `buffer`: written in the source when all
its elements are one number, else saved with the weights. A stretch of the forward that
repeats with the same structure (a ResNet's basic blocks, a Transformer's layers: blocks.py
finds them) is written once as a `block` whose forward takes the stretch's input and the
weights it reads, and called once per repetition with the model's params by their paths.

Loading the written file with its weights (`kiln.compile("model.kiln", weights =
"model.safetensors")`) gives the model the ONNX file computes.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..dims import Dim
from ..elaborate.scope import BUILTIN_FUNCTIONS, BUILTIN_VALUES, NAMESPACES
from ..errors import KilnError
from ..ir import Graph, Value
from ..ops import REGISTRY, Prop
from ..ops.registry import REQUIRED
from .blocks import Unit, repeated_units
from .importer import identifier

# the language's keywords (grammar/kiln.lark) and every name a file sees: never a member name
KEYWORDS = frozenset({
    "and", "as", "axis", "block", "buffer", "carry", "const", "emit", "false", "fn", "for",
    "forward", "if", "import", "in", "init", "model", "none", "not", "or", "param", "require",
    "return", "reverse", "scan", "tie", "true"})
RESERVED = KEYWORDS | BUILTIN_FUNCTIONS | set(BUILTIN_VALUES) | set(NAMESPACES) | set(REGISTRY)
INDENT = "  "


class Unwritable(Exception):
    """Something of the graph kiln source cannot say (an attribute value of no literal form)."""


def kiln_source(program: Any, source_name: str, weights_name: str
                ) -> tuple[str, dict[str, np.ndarray]]:
    """`program` (an OnnxProgram) as the text of a kiln file named `source_name`, and the
    tensors of its weights file `weights_name` (params, and the constants not written
    inline), by kiln path; K0907 when kiln source cannot say something of the graph."""
    try:
        return Writer(program, source_name, weights_name).source()
    except Unwritable as err:
        raise KilnError("K0907", f"cannot write {program.path} as kiln source: {err}",
                        hint="kiln.compile() runs the ONNX file itself") from None


class Names:
    """Kiln names of the model's top-level things, each an identifier, distinct, and none a
    keyword, builtin or op name (which a member of that name would hide)."""

    def __init__(self) -> None:
        self.taken: set[str] = set()

    def fresh(self, wanted: str, fallback: str = "t") -> str:
        base = identifier(wanted, fallback)
        if base in RESERVED or base.startswith("__"):
            base += "_"
        name, k = base, 2
        while name in self.taken:
            name, k = f"{base}_{k}", k + 1
        self.taken.add(name)
        return name

    def path(self, onnx_name: str, tops: dict[str, str]) -> str:
        """A parameter's kiln path: its ONNX name's dotted parts, each made an identifier; the
        first part shared by every path it starts (`fc1` of fc1.weight and fc1.bias)."""
        parts = [identifier(p, "_") for p in onnx_name.split(".")]
        parts = [p + "_" if p in KEYWORDS else p for p in parts]
        if parts[0] not in tops:
            tops[parts[0]] = self.fresh(parts[0], "p")
        return ".".join([tops[parts[0]], *parts[1:]])


class Writer:
    """The source of one imported model (see the module's docstring)."""

    def __init__(self, program: Any, source_name: str, weights_name: str):
        self.program = program
        self.source_name = source_name
        self.graph: Graph = program.graph
        self.weights_name = weights_name
        self.names = Names()
        self.members: list[str] = []
        self.tensors: dict[str, np.ndarray] = {}
        self.renamed: list[tuple[str, str]] = []
        self.counter = 0
        self.definitions: list[str] = []  # the blocks' source, before the model
        # symbols first: sizes are names the body uses
        for node in self.nodes_of(self.graph, "input"):
            for d in node["types"][0].shape:
                for s in d.symbols():
                    self.names.taken.add(s)

    @staticmethod
    def nodes_of(graph: Graph, op: str) -> Iterator[dict]:
        return (graph.node(n) for n in graph.order() if graph.op(n) == op)

    def source(self) -> tuple[str, dict[str, np.ndarray]]:
        """The file's text and the tensors its weights file holds."""
        env: dict[tuple[int, int], str] = {}
        tops: dict[str, str] = {}
        inputs = []
        for nid in self.graph.inputs:
            node = self.graph.node(nid)
            name = self.names.fresh(node["attrs"]["name"], "x")
            env[(nid, 0)] = Expr(name)
            inputs.append(f"{name}: {node['types'][0]}")
        for nid in self.graph.order():
            node = self.graph.node(nid)
            if node["op"] == "param":
                onnx_name = node["attrs"]["path"]
                path = self.names.path(onnx_name, tops)
                env[(nid, 0)] = Expr(path)
                if path != onnx_name:
                    self.renamed.append((onnx_name, path))
                t = node["types"][0]
                self.members.append(f"param {path}: {t}")
                self.tensors[path] = self.program.params[onnx_name]
        calls = self.blocks()
        body = self.body(self.graph, env, 2, calls)
        outs = []
        results = []
        for name, value in zip(self.graph.output_names, self.graph.outputs):
            outs.append(f"{self.names.fresh(name, 'y')}: {value.type}")
            results.append(env[(value.node, value.index)].text)
        lines = [f"# imported from {Path(self.program.path).name} by `kiln import`.",
                 f"# Its weights are in {self.weights_name}: kiln run {self.source_name} "
                 f"--weights {self.weights_name} --random-inputs"]
        if self.renamed:
            lines.append("# ONNX names that are not kiln paths, renamed:")
            lines += [f"#   {onnx_name} -> {path}" for onnx_name, path in self.renamed]
        lines += self.definitions
        lines.append(f"model {self.program.name} {{")
        lines += [INDENT + m for m in self.members]
        # the constraints calls are checked against (the `where X % k == 0` facts a file of
        # kiln's own records), in the language's own words
        where = ", ".join(c.text for c in self.graph.constraints)
        lines.append(f"{INDENT}forward({', '.join(inputs)}) -> ({', '.join(outs)})"
                     f"{' where ' + where if where else ''} {{")
        lines += body
        lines.append(f"{INDENT * 2}return {', '.join(results)}")
        lines += [f"{INDENT}}}", "}", ""]
        return "\n".join(lines), self.tensors

    # blocks -----------------------------------------------------------------------------------
    def blocks(self) -> dict[int, tuple[str, Unit] | None]:
        """Each repeated stretch of the forward (blocks.py) defined once as a block (its
        source in self.definitions) with one member instance: by node, the (instance,
        unit) whose result the node computes, or None for the other nodes of a unit."""
        calls: dict[int, tuple[str, Unit] | None] = {}
        member: dict[tuple, str] = {}
        for unit in repeated_units(self.graph):
            if unit.key not in member:
                block = self.names.fresh(f"Block{len(member) + 1}")
                member[unit.key] = self.names.fresh(f"block{len(member) + 1}")
                self.members.append(f"{member[unit.key]} = {block}")
                self.definitions += self.block_source(block, unit)
            calls.update({n: None for n in unit.nodes})
            calls[unit.result.node] = (member[unit.key], unit)
        return calls

    def block_source(self, name: str, unit: Unit) -> list[str]:
        """`block NAME { forward(x, w1, ...) { ... } }`: the unit's ops, its arguments the
        forward's inputs."""
        graph = Graph()
        values: dict[tuple[int, int], Value] = {}
        env: dict[tuple[int, int], Expr] = {}
        inputs, args = [], []
        for k, arg in enumerate(unit.args):
            arg_name = "x" if k == 0 else f"w{k}"
            args.append(graph.add_input(arg_name, arg.type, None))
            env[(args[-1].node, 0)] = Expr(arg_name)
            inputs.append(f"{arg_name}: {arg.type}")
        later = iter(args[1:])  # each outer read but the start's has its own, in order

        def operand(v: Value | None) -> Value | None:
            if v is None or (v.node, v.index) in values:
                return None if v is None else values[(v.node, v.index)]
            return args[0] if v.node == unit.args[0].node else next(later)

        for nid in unit.nodes:
            node = self.graph.node(nid)
            operands = [operand(v) for v in self.graph.operands(nid)]
            outs = graph.add(node["op"], operands, node["attrs"], node["types"])
            values.update({(nid, k): v for k, v in enumerate(outs)})
        result = values[(unit.result.node, unit.result.index)]
        graph.outputs = [result]
        lines = [f"block {name} {{",
                 f"{INDENT}forward({', '.join(inputs)}) -> {result.type} {{"]
        lines += self.body(graph, env, 2)
        lines += [f"{INDENT * 2}return {env[(result.node, 0)].text}", f"{INDENT}}}", "}", ""]
        return lines

    # the forward ------------------------------------------------------------------------------
    def body(self, graph: Graph, env: dict, depth: int,
             calls: dict[int, tuple[str, Unit] | None] | None = None) -> list[str]:
        """One line per op of `graph` (its inputs and params named in `env` already); an op
        whose one result is read once, by an op other than a scan, is written inline where
        it is read (`relu(x @ fc.weight.T + fc.bias)`), while the line stays short. The ops
        of a unit in `calls` are one call of its block's instance, where its result is."""
        lines: list[str] = []
        pad = INDENT * depth
        reads = _reads(graph)
        calls = calls or {}
        for nid in graph.order():
            node = graph.node(nid)
            op = node["op"]
            if op in ("input", "param"):
                continue
            if nid in calls:
                call = calls[nid]
                if call is None:
                    continue
                instance, unit = call
                args = ", ".join(env[(v.node, v.index)].text for v in unit.args)
                name = self.local()
                env[(nid, 0)] = Expr(name)
                lines.append(f"{pad}{name} = {instance}({args})")
                continue
            if op == "constant":
                env[(nid, 0)] = Expr(self.constant(node))
                continue
            operands = [None if v is None else env[(v.node, v.index)]
                        for v in graph.operands(nid)]
            if op == "scan":
                outs = [self.local() for _ in node["types"]]
                env.update({(nid, k): Expr(name) for k, name in enumerate(outs)})
                lines += self.scan(node, [o.text for o in operands], outs, depth)
                continue
            if len(node["types"]) > 1 or (op == "split"):
                outs = [self.local() for _ in node["types"]]
                env.update({(nid, k): Expr(name) for k, name in enumerate(outs)})
                text = call_text(op, [None if o is None else o.text for o in operands],
                                 node["attrs"])
                lines.append(f"{pad}{', '.join(outs)} = {text}")
                continue
            expr = expression(op, node["attrs"], operands)
            if reads.get((nid, 0)) == "inline" and len(expr.text) <= MAX_INLINE:
                env[(nid, 0)] = expr
                continue
            name = self.local()
            env[(nid, 0)] = Expr(name)
            lines.append(f"{pad}{name} = {expr.text}")
        return lines

    def local(self) -> str:
        self.counter += 1
        return self.names.fresh(f"t{self.counter}")

    def constant(self, node: dict) -> str:
        """A buffer holding a constant: written inline when one number fills it (not saved),
        else saved with the weights."""
        array = np.asarray(node["attrs"]["value"])
        t = node["types"][0]
        name = self.names.fresh(f"c{len(self.members)}", "c")
        first = array.reshape(-1)[:1]
        if array.size and (array == first[0]).all() and not np.isnan(first).any():
            self.members.append(f"buffer(persistent = false) {name}: {t} = "
                                f"{literal(first[0].item())}")
        else:
            self.members.append(f"buffer {name}: {t}")
            self.tensors[name] = array
        return name

    def scan(self, node: dict, operands: list[str], outs: list[str], depth: int) -> list[str]:
        """A scan node in the language's syntax: `ys, h = scan x in seq axis K carry (...)`."""
        attrs = node["attrs"]
        body: Graph = attrs["body"]
        n_carry, n_seq = attrs["n_carry"], attrs["n_seq"]
        inner: dict[tuple[int, int], str] = {}
        carries, steps = [], []
        for k, b in enumerate(body.inputs):
            if k < n_carry:
                name = self.local()
                carries.append(f"{name} = {operands[k]}")
            elif k < n_carry + n_seq:
                name = self.local()
                steps.append(name)
            elif attrs["has_index"] and k == n_carry + n_seq:
                name = self.local()
                steps[0] = f"({name}, {steps[0]})"
            else:  # a captured value: the body reads the enclosing name
                name = operands[n_carry + n_seq + k - attrs["n_fixed_inputs"]]
            inner[(b, 0)] = Expr(name)
        if len(set(attrs["axes"])) != 1:
            raise Unwritable("a scan over sequences on different axes")
        seqs = operands[n_carry:n_carry + n_seq]
        pad = INDENT * depth
        head = (f"{pad}{', '.join(outs)} = scan "
                f"{'reverse ' if attrs['reverse'] else ''}{', '.join(steps)} in "
                f"{', '.join(seqs)} axis {attrs['axes'][0]}")
        if carries:
            head += f" carry ({', '.join(carries)})"
        lines = [head + " {"]
        lines += self.body(body, inner, depth + 1)
        results = [inner[(v.node, v.index)].text for v in body.outputs]
        for k in range(n_carry):
            name = carries[k].split(" = ")[0]
            lines.append(f"{pad}{INDENT}{name} = {results[k]}")
        if results[n_carry:]:
            lines.append(f"{pad}{INDENT}emit {', '.join(results[n_carry:])}")
        lines.append(f"{pad}}}")
        return lines


# operators and how tightly they bind (docs/language.md, Precedence): higher binds tighter
SUM, PRODUCT, ATOM = 1, 2, 3
INFIX = {"add": ("+", SUM), "sub": ("-", SUM), "mul": ("*", PRODUCT), "div": ("/", PRODUCT),
         "matmul": ("@", PRODUCT)}
MAX_INLINE = 72  # the longest expression written inline


@dataclass(frozen=True)
class Expr:
    """A value's text in the source and how tightly it binds."""

    text: str
    precedence: int = ATOM

    def within(self, precedence: int) -> str:
        """The text as an operand where operators bind at least this tightly."""
        return self.text if self.precedence >= precedence else f"({self.text})"


def _reads(graph: Graph) -> dict[tuple[int, int], str]:
    """Each result that may be written inline ("inline": read once, by an op other than a
    scan, or as the graph's result) or must be named."""
    count: dict[tuple[int, int], int] = {}
    named: set[tuple[int, int]] = set()
    for _u, v, data in graph.g.edges(data=True):
        key = (_u, data["src"])
        count[key] = count.get(key, 0) + 1
        if graph.op(v) == "scan":
            named.add(key)
    for out in graph.outputs:
        key = (out.node, out.index)
        count[key] = count.get(key, 0) + 1
    return {k: "inline" if n == 1 and k not in named else "named" for k, n in count.items()}


def expression(op: str, attrs: dict, operands: list[Expr | None]) -> Expr:
    """One op applied to its operands, as the language writes it: `a + b`, `w.T`, `x[:, 0]`,
    a size used as a value, or a call."""
    if op in INFIX and len(operands) == 2 and None not in operands:
        symbol, precedence = INFIX[op]
        left, right = operands  # left-associative: the right operand binds tighter
        return Expr(f"{left.within(precedence)} {symbol} {right.within(precedence + 1)}",
                    precedence)
    if op == "permute" and list(attrs["perm"]) == [1, 0]:
        return Expr(f"{operands[0].within(ATOM)}.T")
    if op == "slice":
        return Expr(f"{operands[0].within(ATOM)}[{items_text(attrs['items'])}]")
    if op == "dim_value":  # a size read as an i64 scalar
        return Expr(f"({attrs['dim']})")
    return Expr(call_text(op, [None if o is None else o.text for o in operands], attrs))


def call_text(op: str, operands: list[str | None], attrs: dict) -> str:
    """`op(a, b, key = value)`: tensors by position while every argument before them is a
    tensor given, else by name; attributes by name, those at their default left out."""
    record = REGISTRY[op]
    if record.has(Prop.INTERNAL):
        raise Unwritable(f"the internal op {op}")
    tensors: list[str] = []
    keywords: list[str] = []
    positional = True
    n_single = sum(a.kind in ("tensor", "tensor?") for a in record.args)
    queue = list(operands)
    for arg in record.args:
        if arg.kind == "attr":
            positional = False  # keywords follow; a later tensor goes by name
            value = attrs.get(arg.name, arg.default)
            if arg.default is REQUIRED or not _same(value, arg.default):
                keywords.append(f"{arg.name} = {literal(value)}")
            continue
        if arg.kind == "tensors":  # a list: every operand but the single tensors after it
            count = len(queue) - (n_single - len(tensors))
            text, queue = f"[{', '.join(queue[:count])}]", queue[count:]
        else:
            text = queue.pop(0) if queue else None
            if text is None:
                positional = False
                continue
        (tensors if positional else keywords).append(text if positional
                                                     else f"{arg.name} = {text}")
    return f"{op}({', '.join(tensors + keywords)})"


def _same(a: Any, b: Any) -> bool:
    try:
        return type(a) is type(b) and bool(a == b)
    except (TypeError, ValueError):
        return False


def literal(value: Any) -> str:
    """A compile-time value in kiln syntax."""
    if value is None:
        return "none"
    if isinstance(value, (bool, np.bool_)):
        return "true" if value else "false"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        v = float(value)
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(value, str):
        if '"' in value or "\\" in value or "\n" in value:
            raise Unwritable(f"the string {value!r}")
        return f'"{value}"'
    if isinstance(value, Dim):
        return str(value)
    if isinstance(value, (list, tuple)):
        return f"[{', '.join(literal(v) for v in value)}]"
    raise Unwritable(f"an attribute value of type {type(value).__name__}")


def items_text(items) -> str:
    """A slice's items as the indexing that makes them: `:, 1:T - 1, none, ...`."""
    out = []
    for item in items:
        kind = item[0]
        if kind == "int":
            out.append(literal(item[1]))
        elif kind == "ellipsis":
            out.append("...")
        elif kind == "new":
            out.append("none")
        else:
            _, start, stop, step = item
            text = (f"{'' if start is None else literal(start)}:"
                    f"{'' if stop is None else literal(stop)}")
            out.append(text + (f":{literal(step)}" if step != 1 else ""))
    return ", ".join(out) if out else "..."


__all__ = ["Unwritable", "kiln_source"]
