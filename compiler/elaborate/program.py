"""Loading source files: parsing, imports (stdlib and local files), and module scopes."""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from ..errors import KilnError, Span, did_you_mean
from ..sources import (  # noqa: F401  (re-exported)
    MAX_SOURCE_BYTES,
    SOURCE_SUFFIX,
    decode_source,
    import_path,
    read_source_file,
)
from ..syntax import ast as A
from ..syntax.build import parse_module
from ..syntax.shipped import std_module
from .values import BlockRef, FnRef, Namespace


@dataclass
class ModuleScope:
    """The top-level names of one source file: blocks, fns, consts, and imports."""

    path: str
    ast: A.Module
    directory: Path | None
    names: dict[str, Any] = field(default_factory=dict)
    consts: dict[str, A.Const] = field(default_factory=dict)  # evaluated lazily
    requires: list[A.Require] = field(default_factory=list)
    const_values: dict[str, Any] = field(default_factory=dict)
    evaluating: set[str] = field(default_factory=set)

    def blocks(self) -> list[A.BlockDef]:
        return [it for it in self.ast.items if isinstance(it, A.BlockDef)]

    def models(self) -> list[A.BlockDef]:
        return [b for b in self.blocks() if b.kind == "model"]


class Loader:
    """Parses files once each and resolves their imports; detects import cycles."""

    def __init__(self):
        self.modules: dict[str, ModuleScope] = {}
        # the text each module was parsed from, by the same key: what the compile cache
        # hashes (runtime/modelcache.py), so an entry says exactly which sources it was built from
        self.texts: dict[str, str] = {}
        self.loading: list[str] = []

    def load_text(self, text: str, filename: str, directory: Path | None) -> ModuleScope:
        key = f"<text>:{filename}:{hash(text)}"
        return self._load(key, lambda: text, filename, directory, None)

    def load_path(self, path: Path, span: Span | None = None) -> ModuleScope:
        try:
            path = path.resolve() if path.exists() else path
        except (OSError, RuntimeError, ValueError):
            pass  # reading it says why it cannot be read
        return self._load(
            str(path), lambda: read_source_file(path, span), str(path), path.parent, span
        )

    def load_std(self, name: tuple[str, ...], span: Span) -> ModuleScope:
        if len(name) != 2 or name[0] != "std":
            raise KilnError(
                "K0104",
                f"unknown module {'.'.join(name)}",
                span,
                hint="standard library modules are named std.NAME; local files are imported "
                'with a string: import "blocks.kiln"',
            )
        res = resources.files("kiln.stdlib").joinpath(f"{name[1]}.kiln")
        if not res.is_file():
            known = sorted(
                p.name[:-5]
                for p in resources.files("kiln.stdlib").iterdir()
                if p.name.endswith(".kiln")
            )
            raise KilnError(
                "K0104",
                f"no standard library module std.{name[1]}",
                span,
                hint=f"available: {', '.join('std.' + k for k in known) or 'none'}",
            )
        display = f"<std>/{name[1]}.kiln"
        return self._load(display, lambda: res.read_text(encoding="utf-8"), display, None, span,
                          lambda text, filename: std_module(name[1], text, filename))

    def _load(self, key, read, filename, directory, span, parse=parse_module) -> ModuleScope:
        if key in self.loading:
            cycle = self.loading[self.loading.index(key) :] + [key]
            raise KilnError(
                "K0105",
                "import cycle: " + " -> ".join(Path(k).name for k in cycle),
                span,
            )
        if key in self.modules:
            return self.modules[key]
        self.loading.append(key)
        try:
            text = read()
            self.texts[key] = text
            ast = parse(text, filename)
            scope = ModuleScope(filename, ast, directory)
            self._bind(scope)
        finally:
            self.loading.pop()
        self.modules[key] = scope
        return scope

    def _bind(self, scope: ModuleScope) -> None:
        errors: list[KilnError] = []
        for item in scope.ast.items:
            try:
                self._bind_item(scope, item)
            except KilnError as err:
                errors.append(err)
        if errors:
            from ..errors import combine

            raise combine(errors)

    def _bind_item(self, scope: ModuleScope, item) -> None:
        if isinstance(item, A.Import):
            self._bind_import(scope, item)
            return
        if isinstance(item, A.Require):
            scope.requires.append(item)
            return
        name = item.name
        if name in scope.names or name in scope.consts:
            raise KilnError("K0106", f"{name} is defined twice in this file", item.span)
        if isinstance(item, A.Const):
            scope.consts[name] = item
        elif isinstance(item, A.BlockDef):
            scope.names[name] = BlockRef(item, scope)
        elif isinstance(item, A.FnDef):
            scope.names[name] = FnRef(item, scope)

    def _bind_import(self, scope: ModuleScope, item: A.Import) -> None:
        if item.module is not None:
            target = self.load_std(item.module, item.span)
            default_name = item.module[-1]
        else:
            target = self.load_path(import_path(item.file, scope.directory, item.span), item.span)
            default_name = Path(item.file).stem
        if item.names:
            for name in item.names:
                if name not in target.names and name not in target.consts:
                    raise KilnError(
                        "K0101",
                        f"{name} is not defined in {target.path}",
                        item.span,
                        hint=did_you_mean(name, [*target.names, *target.consts]),
                    )
                scope.names[name] = ("import", target, name)
        if item.alias or not item.names:
            scope.names[item.alias or default_name] = Namespace("module", target)

