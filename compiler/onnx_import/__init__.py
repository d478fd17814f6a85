"""ONNX import: an ONNX model read into a kiln Graph, compiled like any kiln model.

    program = load_onnx("model.onnx")          # read (reader.py) and convert (importer.py)
    program.elaborate()                        # its ElaboratedModel: signature, graph, params
    Compilation.of_graph(program.name, program.graph, program.params)   # for any target

`kiln.load("model.onnx")` and `kiln.compile("model.onnx")` come here; the converters of each
ONNX op are in convert*.py, `kiln import`'s source writer in writer.py.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..elaborate import ElaboratedModel
from ..errors import KilnError
from ..ir import Graph
from .importer import ImportedModel, import_graph, model_name
from .reader import ReadModel, parse_model, read_model, validate


@dataclass
class OnnxProgram:
    """An imported ONNX model, offering what a loaded kiln file offers (`model_names`,
    `elaborate`), so every command that takes a model file takes an ONNX file too. The file is
    read and validated when loaded, converted on first use (`imported`): with its inputs'
    sizes fixed where `elaborate(args={"seq": 7})` fixes them."""

    source: ReadModel
    sizes: dict[str, int] = field(default_factory=dict)
    converted: ImportedModel | None = None

    @property
    def imported(self) -> ImportedModel:
        """The model converted (K0906 for nodes kiln cannot convert)."""
        if self.converted is None:
            self.converted = import_graph(self.source, sizes=self.sizes)
        return self.converted

    @property
    def path(self) -> str:
        return self.source.path

    @property
    def name(self) -> str:
        return model_name(self.source)

    @property
    def graph(self) -> Graph:
        return self.imported.graph

    @property
    def params(self) -> dict[str, np.ndarray]:
        """Each parameter's value in the file, by its ONNX name."""
        return self.imported.params

    @property
    def model_names(self) -> list[str]:
        return [self.name]

    def elaborate(self, model: str | None = None, args: dict[str, Any] | None = None,
                  present: frozenset[str] | None = None, training: bool = False
                  ) -> ElaboratedModel:
        """The model (an ONNX file holds one, which has no training mode: its graph is the
        one the file holds). `args` fix symbolic sizes of its inputs (`{"seq": 7}`, by
        dim_param or kiln symbol), as onnxruntime's free dimension overrides do."""
        if model is not None and model != self.name:
            raise KilnError("K0601", f"{self.path} has no model named {model}",
                            hint=f"an ONNX file holds one model: {self.name}")
        sizes = dict(args or {})
        for key, size in sizes.items():
            if not isinstance(size, int | np.integer) or isinstance(size, bool) or size < 1:
                raise KilnError("K0602", f"the size {key} of an ONNX model's input must be "
                                f"a positive int, not {size!r}",
                                hint="an ONNX model's arguments fix its inputs' symbolic "
                                "sizes: args={'seq': 128}")
        if sizes != self.sizes:
            self.sizes, self.converted = {k: int(v) for k, v in sizes.items()}, None
        if training:
            raise KilnError("K0602", f"{self.path}: an imported ONNX model has no training mode",
                            hint="import it as kiln source with `kiln import` first, or "
                            "compile it without training=True")
        return ElaboratedModel.of_graph(self.name, self.graph, self.params)


def load_onnx(source: str | os.PathLike | Any) -> OnnxProgram:
    """The ONNX model in file `source` (or an onnx.ModelProto), read with bounds and
    validated (KilnError K0901-K0905 for a file kiln cannot read); converted on first use
    (`elaborate`, `graph`: K0906 lists every node kiln cannot convert at once)."""
    onnx = sys.modules.get("onnx")
    if onnx is not None and isinstance(source, onnx.ModelProto):
        copy = type(source)()
        copy.CopyFrom(source)  # external data is read into the tensors: never the caller's
        model = validate(parse_model(copy.SerializeToString(), "<model>"), "<model>", None)
    else:
        model = read_model(source)
    return OnnxProgram(model)


__all__ = ["ImportedModel", "OnnxProgram", "ReadModel", "import_graph", "load_onnx",
           "read_model"]
