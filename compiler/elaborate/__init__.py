"""Elaboration: imports, block instantiation, shape checking, and graph construction."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import KilnError
from .elaborator import ElaboratedModel, Elaborator, Port, default_output_names
from .program import Loader, ModuleScope
from .scope import lookup_global
from .values import BlockRef, Namespace


def _no_consts(module, name):
    raise LookupError(name)  # a const is not a model


@dataclass
class Program:
    """A loaded source file with its imports resolved; models are elaborated on demand."""

    module: ModuleScope
    loader: Loader

    @property
    def path(self) -> str:
        return self.module.path

    @property
    def model_names(self) -> list[str]:
        return [m.name for m in self.module.models()]

    def model_ref(self, name: str | None = None) -> BlockRef:
        """The named model or block (defined here, or imported: `cnn.ResNet18`, or a name
        brought in by `import std.cnn: ResNet18`), or the file's last `model`."""
        models = self.module.models()
        if name is None:
            if not models:
                raise KilnError(
                    "K0601",
                    f"{self.path} defines no model",
                    None,
                    hint="declare one with `model Name { forward(...) -> ... { ... } }`",
                )
            return BlockRef(models[-1], self.module)
        value = None
        try:
            value = lookup_global(self.module, name.split(".")[0], _no_consts)
            for part in name.split(".")[1:]:
                if not (isinstance(value, Namespace) and value.kind == "module"):
                    value = None
                    break
                value = lookup_global(value.target, part, _no_consts)
        except LookupError:  # Unbound, or a const
            value = None
        if isinstance(value, BlockRef):
            return value
        raise KilnError(
            "K0601",
            f"{self.path} has no model or block named {name}",
            None,
            hint=f"models here: {', '.join(self.model_names) or 'none'}",
        )

    def elaborate(
        self,
        model: str | None = None,
        args: dict[str, Any] | None = None,
        present: frozenset[str] | None = None,
        training: bool = False,
    ) -> ElaboratedModel:
        """Check and build the graph of one model (all optional inputs present by default),
        with `training` true or false (elaborate/training.py: what training mode adds)."""
        ref = self.model_ref(model)
        defn = ref.defn
        try:
            return Elaborator(self.module, training).elaborate_model(ref, dict(args or {}),
                                                                     present)
        except RecursionError:
            raise KilnError("K0201", "the model nests too deeply to elaborate", defn.span) from None


def load_program(source: str | Path, filename: str | None = None) -> Program:
    """Parse a file (a path) or source text (a string containing a newline or a brace)."""
    loader = Loader()
    if isinstance(source, Path) or (
        isinstance(source, str)
        and "\n" not in source
        and "{" not in source
        and source.strip() != ""
    ):
        module = loader.load_path(Path(source))
    else:
        name = filename or "<source>"
        module = loader.load_text(source, name, Path(filename).parent if filename else None)
    return Program(module, loader)


__all__ = ["ElaboratedModel", "Port", "Program", "default_output_names", "load_program"]
