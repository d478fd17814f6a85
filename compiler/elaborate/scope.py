"""Name scopes: forward locals -> block members -> block arguments -> file -> builtins."""

from __future__ import annotations

import math
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from ..ops import REGISTRY, Prop
from .program import ModuleScope
from .values import ABSENT, Builtin, Instance, MemberPrefix, Namespace

# names every file sees unless it defines them itself
BUILTIN_FUNCTIONS = frozenset(
    {
        "range",
        "len",
        "int",
        "float",
        "bool",
        "str",
        "list",
        "enumerate",
        "zip",
        "reversed",
        "round",
        "defined",
        "dim",
        "shape",
        "rank",
        "min",
        "max",
        "sum",
        "abs",
        "is_list",
        "known",
    }
)
BUILTIN_VALUES = {"inf": math.inf, "nan": math.nan, "pi": math.pi, "training": False}
# the value of `training` in the model being elaborated (Elaborator.elaborate_model sets it)
TRAINING: ContextVar[bool] = ContextVar("training", default=False)
NAMESPACES = {"init": Namespace("init"), "ops": Namespace("ops")}


class Unbound(LookupError):
    """A name that no scope defines."""


@dataclass
class Scope:
    """One level of names. `instance` makes a block's members visible at this level."""

    vars: dict[str, Any]
    parent: Scope | None = None
    module: ModuleScope | None = None
    instance: Instance | None = None
    in_fn: bool = False  # inside a `fn`: no members, no block instances
    resolve_const: Any = field(default=None, repr=False)  # callback: evaluates file consts

    def child(self, **vars) -> Scope:
        return Scope(dict(vars), self, self.module, None, self.in_fn, self.resolve_const)

    def set(self, name: str, value: Any) -> None:
        self.vars[name] = value

    def find_local(self, name: str) -> tuple[bool, Any]:
        """(found, value) looking through locals, members and block arguments only."""
        scope: Scope | None = self
        while scope is not None:
            if name in scope.vars:
                return True, scope.vars[name]
            inst = scope.instance
            if inst is not None:
                if name in inst.members:
                    return True, inst.members[name]
                prefix = name + "."
                if any(m.startswith(prefix) for m in inst.members):
                    return True, MemberPrefix(inst, name)
                if name in inst.undefined:  # a conditional member not taken shadows too
                    return True, ABSENT
            scope = scope.parent
        return False, None

    def lookup(self, name: str) -> Any:
        found, value = self.find_local(name)
        if found:
            return value
        return lookup_global(self.module, name, self.resolve_const)

    def names(self) -> list[str]:
        """Every visible name, for 'did you mean' hints."""
        out: list[str] = []
        scope: Scope | None = self
        while scope is not None:
            out.extend(scope.vars)
            if scope.instance is not None:
                out.extend(scope.instance.members)
            scope = scope.parent
        if self.module is not None:
            out.extend(self.module.names)
            out.extend(self.module.consts)
        out.extend(BUILTIN_FUNCTIONS)
        out.extend(BUILTIN_VALUES)
        out.extend(n for n, r in REGISTRY.items() if not r.has(Prop.INTERNAL))
        return out


def lookup_global(module: ModuleScope | None, name: str, resolve_const) -> Any:
    """A name at file level, then a builtin; raises Unbound."""
    if module is not None:
        if name in module.names:
            value = module.names[name]
            if isinstance(value, tuple) and value and value[0] == "import":
                _, target, inner = value
                return lookup_global(target, inner, resolve_const)
            return value
        if name in module.consts:
            return resolve_const(module, name)
    if name == "training":
        return TRAINING.get()
    if name in BUILTIN_VALUES:
        return BUILTIN_VALUES[name]
    if name in NAMESPACES:
        return NAMESPACES[name]
    if name in BUILTIN_FUNCTIONS:
        return Builtin(name)
    from .values import OpRef

    if name in REGISTRY and not REGISTRY[name].has(Prop.INTERNAL):
        return OpRef(REGISTRY[name])
    raise Unbound(name)
