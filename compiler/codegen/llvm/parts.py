"""A large module compiled in parts, in parallel: one object file per part.

LLVM optimises and compiles one module on one thread, and llvmlite holds a lock around every
call into LLVM, so threads would take turns: the parts are compiled in processes instead, the
first here and each other one by a child Python (`python -m` this module: it imports llvmlite
and nothing of the compiler, and reads its part's IR on stdin, writing the object to stdout).

How the module is cut (`split`): the *roots* are the functions `run` calls (a node's kernel)
and every function defined with outside linkage (`run`, a GEMM entry, `kiln_set_threads`...);
each part defines some roots and declares the others it calls, so a root is compiled once.
An internal root that another part calls becomes an external symbol of default visibility
(not hidden: other parts then reach it through the GOT and PLT stubs, which stay in range
wherever the JIT maps each part's object; a library binds them to itself, -Bsymbolic);
`run` calls the kernels of other parts instead of inlining them (a call per kernel costs
nothing next to its work: module.py's MAX_INLINED_KERNELS). Everything a root
reaches that is not a root (a GEMM driver, its micro-kernels, the thread pool's worker) stays
internal and is copied into every part that reaches it: each kernel is optimised with the
same callees, inlined as before; except a large helper (SHARED_COST) that several roots reach
(a GEMM driver, a convolution's shared transform): it becomes a root itself, compiled once.
Globals: a constant that names no symbol is copied into every part (its loads fold as
before); every other global (`kiln_threads`, the pool's state, the AMX state, the profile
counters) is defined once, in the first part, and declared `external` in the others that
name it, so all parts share one. Parts are balanced by an estimate of
LLVM's time (`BRANCH_COST`), the largest roots first.
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
import threading

import llvmlite.binding as llvm
from llvmlite import ir

from . import target as targets

MAX_PARTS = 8
# LLVM's time on a function grows with its lines and, faster, with its loops (a small
# permute's loop nest takes as long as a GEMM driver's thousand lines of vector code): a
# function's cost is its lines and BRANCH_COST per conditional branch (ResNet-18, GPT, UNet:
# within a third of the time taken for half the kernels); a part costs at least PART_COST
# (~1 s of LLVM), or is not worth a process
BRANCH_COST = 20
PART_COST = 6000
# a helper at least this costly, reached from several roots, is a root: compiled once, not
# copied into each part that reaches it (micro-kernels, GEMM drivers and threads' helpers are
# noinline, and the rest are called once a call or a sample, so nothing hot loses inlining).
# ResNet-18 cold, 2 parts, LLVM: at 1000 3.8 + 2.9 s (6.7 s against 5.3 in one part: the
# copies), at 100 2.3 + 2.2 s; its calls, GPT's and DCGAN's within noise
SHARED_COST = 100
CHILD_TIMEOUT = 900  # seconds: a child stuck longer than any part takes is given up on (the
# parent then compiles its part)
_SYMBOL = re.compile(r'@("(?:[^"\\]|\\.)*"|[-\w.$]+)')
_LOCAL = ("internal", "private")


def part_count() -> int:
    """The most parts to compile a module in: one per usable core, at most MAX_PARTS;
    $KILN_LLVM_PARTS sets it (1: the module whole, in this process)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    most = os.environ.get("KILN_LLVM_PARTS", "")
    return int(most) if most.isdigit() and int(most) > 0 else min(cores or 1, MAX_PARTS)


def bodies_of(module: ir.Module) -> dict[str, str]:
    """The IR text of each function `module` defines (printing is the costly part of a
    module's text: done once, for the whole module's text and its parts alike)."""
    return {f.name: str(f) for f in module.functions if not f.is_declaration}


def module_text(module: ir.Module, bodies: dict[str, str]) -> str:
    """`str(module)`, the text of its defined functions taken from `bodies` (bodies_of)."""
    lines = [f'; ModuleID = "{module.name}"', f'target triple = "{module.triple}"',
             f'target datalayout = "{module.data_layout}"', '']
    lines += [t.get_declaration() for t in module.get_identified_types().values()]
    lines += [bodies.get(v.name) if isinstance(v, ir.Function) and not v.is_declaration
              else str(v) for v in module.globals.values()]
    lines += module._get_metadata_lines()
    return "\n".join(lines)


def split(module: ir.Module, parts: int, bodies: dict[str, str] | None = None) -> list[str]:
    """The IR text of `module` cut into at most `parts` modules (see the module's docstring),
    none costing less than PART_COST; the first holds `run` and the globals' definitions.
    `bodies`: bodies_of(module), when already made."""
    functions = {f.name: f for f in module.functions if not f.is_declaration}
    bodies = bodies if bodies is not None else bodies_of(module)
    names = {name: _symbols(text[text.index("{"):]) - {name} for name, text in bodies.items()}
    variables = {g.name: g for g in module.globals.values() if isinstance(g, ir.GlobalVariable)}
    copied = {name for name, g in variables.items() if _copyable(g)}
    named_by_globals = set().union(*(_symbols(str(g)) for name, g in variables.items()
                                     if name not in copied))
    by_run = names.get("run", set())
    roots = [name for name, f in functions.items()
             if name == "run" or name in by_run or name in named_by_globals
             or f.linkage not in _LOCAL]
    root_set = set(roots)

    def reach(root: str) -> set[str]:
        seen, todo = {root}, [root]
        while todo:
            for callee in names[todo.pop()]:
                if callee in functions and callee not in root_set and callee not in seen:
                    seen.add(callee)
                    todo.append(callee)
        return seen

    weight = {name: text.count("\n") + BRANCH_COST * text.count(" br i1 ")
              for name, text in bodies.items()}
    closures = {root: reach(root) for root in roots}
    # a large helper that several roots reach (a shared convolution transform, a GEMM
    # driver) becomes a root too: compiled once, in one part, not copied into each
    reached: dict[str, int] = {}
    for root in roots:
        for name in closures[root] - {root}:
            reached[name] = reached.get(name, 0) + 1
    promoted = [name for name, count in reached.items()
                if count > 1 and weight[name] >= SHARED_COST]
    if promoted:
        roots += promoted
        root_set |= set(promoted)
        closures = {root: reach(root) for root in roots}
    cost = {root: sum(weight[f] for f in closures[root]) for root in roots}
    parts = min(parts, sum(weight.values()) // PART_COST)
    # the largest roots first, each to the part it adds least to (LPT scheduling, counting
    # the copies of helpers a part already holds as free); `run` in the first part
    members: list[set[str]] = [set() for _ in range(max(1, parts))]
    loads = [0] * len(members)
    for root in sorted(roots, key=lambda r: (r != "run", -cost[r])):
        extra = [sum(weight[f] for f in closures[root] - held) for held in members]
        best = 0 if root == "run" else min(range(len(members)),
                                           key=lambda p: (loads[p] + extra[p], p))
        members[best] |= closures[root]
        loads[best] += extra[best]
    members = [m for m in members if m]
    named = [set().union(*(names[f] for f in m)) for m in members]
    # what another part names: a local root becomes exported, a global is defined in the
    # first part and declared where named; the rest stays as it was (inlined, folded)
    shared = {name for i, m in enumerate(members) for name in named[i] - m
              if name in root_set or (i and name in variables and name not in copied)}
    return [_part_text(module, bodies, variables, copied, defined, named[i] - defined, shared,
                       first=i == 0) for i, defined in enumerate(members)]


def _copyable(g: ir.GlobalVariable) -> bool:
    """A global each part may hold a copy of: an internal constant that names no symbol."""
    return (g.global_constant and g.linkage in _LOCAL and g.initializer is not None
            and not _symbols(g.initializer.get_reference()))


def _symbols(text: str) -> set[str]:
    return {m.strip('"') for m in _SYMBOL.findall(text)}


def _part_text(module: ir.Module, bodies: dict[str, str], variables: dict, copied: set[str],
               defined: set[str], declared: set[str], shared: set[str], first: bool) -> str:
    """One part's IR text: the `defined` functions in full and the `declared` functions and
    globals declared (the first part defines every global, the others the `copied`);
    `shared` local symbols, named across parts, are exported instead."""
    lines = [f'; ModuleID = "{module.name}"', f'target triple = "{module.triple}"',
             f'target datalayout = "{module.data_layout}"', '']
    lines += [t.get_declaration() for t in module.get_identified_types().values()]
    for name, g in module.globals.items():
        exported = name in shared and g.linkage in _LOCAL
        if isinstance(g, ir.GlobalVariable):
            if first or name in copied:
                lines.append(_exported(g) if exported else str(g))
            elif name in declared:
                lines.append(_external(g))
        elif g.is_declaration:
            lines.append(str(g))
        elif name in defined:
            text = bodies[name]
            if exported:
                text = _prototype(g, "") + text[text.index("\n") + 1:]
            lines.append(text)
        elif name in declared:
            lines.append(_prototype(g, "", declare=True))
    lines += module._get_metadata_lines()
    return "\n".join(lines)


def _exported(g: ir.GlobalVariable) -> str:
    """A local global's definition as an external symbol, which other parts link to."""
    other = copy.copy(g)
    other.linkage = ""  # default visibility: reached through the GOT (see `_external`)
    return other._to_string()  # (str() would give `g`'s, which llvmlite keeps)


def _external(g: ir.GlobalVariable) -> str:
    """The declaration of a global another part defines."""
    # default visibility, never hidden: a hidden symbol is dso_local, reached PC-relative
    # with 32 bits, and the JIT may map two parts' objects more than 2 GiB apart (a
    # "Delta32 fixup out of range" in CI); a default one goes through the GOT and PLT stubs,
    # which JITLink places beside the code that uses them
    visibility = ""
    kind = "constant" if g.global_constant else "global"
    align = f", align {g.align}" if g.align is not None else ""
    return f"{g.get_reference()} = external{visibility} {kind} {g.value_type}{align}\n"


def _prototype(fn: ir.Function, linkage: str, declare: bool = False) -> str:
    """The first line of `fn`'s definition (or its declaration) with `linkage`."""
    other = copy.copy(fn)
    other.linkage = linkage
    if declare:
        other.blocks = []
    buf: list[str] = []
    other.descr_prototype(buf)
    return "".join(buf)


def optimised(text: str, machine: llvm.TargetMachine) -> llvm.ModuleRef:
    """LLVM IR text parsed and optimised for `machine` (every part by the same pipeline)."""
    parsed = llvm.parse_assembly(text)
    parsed.verify()
    options = llvm.create_pipeline_tuning_options(speed_level=3)
    options.loop_vectorization = True
    options.slp_vectorization = True
    builder = llvm.create_pass_builder(machine, options)
    builder.getModulePassManager().run(parsed, builder)
    return parsed


def machine_code(text: str, machine: llvm.TargetMachine) -> bytes:
    """Optimised object code of LLVM IR text (`optimised`)."""
    return machine.emit_object(optimised(text, machine))


def compile_parts(texts: list[str], target: targets.Target,
                  machine: llvm.TargetMachine) -> tuple[bytes, ...]:
    """The object code of each part's IR text: the first compiled here, the others at the
    same time in child processes (one a part; a child that fails to start or to finish has
    its part compiled here after the first)."""
    children = [_Child(text, target) for text in texts[1:]]
    objects = [machine_code(texts[0], machine)]
    for child, text in zip(children, texts[1:], strict=True):
        code = child.result()
        objects.append(code if code is not None else machine_code(text, machine))
    return tuple(objects)


class _Child:
    """One part compiled by a child Python, fed and read by a thread of this process (it
    waits on pipes while LLVM runs here, which releases the GIL)."""

    def __init__(self, text: str, target: targets.Target):
        self.code: bytes | None = None
        header = json.dumps({"cpu": target.cpu, "features": target.features}).encode()
        self.thread = threading.Thread(target=self._run, args=(header + b"\n" + text.encode(),),
                                       daemon=True)
        self.thread.start()

    def _run(self, data: bytes) -> None:
        try:
            proc = subprocess.run([sys.executable, "-m", __name__], input=data,
                                  capture_output=True, check=False, timeout=CHILD_TIMEOUT)
        except (OSError, subprocess.TimeoutExpired):  # the parent compiles the part instead
            return
        if proc.returncode == 0 and proc.stdout:
            self.code = proc.stdout

    def result(self) -> bytes | None:
        self.thread.join()
        return self.code


def _serve() -> None:
    """A child's work: a part's IR on stdin (after a line of JSON naming the target), its
    object code on stdout."""
    header, _, text = sys.stdin.buffer.read().partition(b"\n")
    spec = json.loads(header)
    machine = targets.Target(spec["cpu"], spec["features"]).machine()
    sys.stdout.buffer.write(machine_code(text.decode(), machine))
    sys.stdout.buffer.flush()


if __name__ == "__main__":
    _serve()
