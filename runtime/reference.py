"""The reference target: runs the graph with numpy, op by op. Clear before fast; the oracle."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..compiler.elaborate import ElaboratedModel
from ..compiler.evaluate import run_graph
from .model import CompiledModel


class ReferenceModel(CompiledModel):
    """A model run by the numpy interpreter.

    A model with optional inputs has one graph per set of inputs given; `variant` builds the
    graph for a set the first time it is called with it.
    """

    target = "reference"

    def __init__(
        self,
        model: ElaboratedModel,
        params: dict[str, np.ndarray],
        variant: Callable[[frozenset[str]], ElaboratedModel] | None = None,
    ):
        super().__init__(model, params)
        self._variant = variant
        self._variants = {model.present: model}

    def run(self, arrays, dims):
        present = frozenset(p.name for p in self.inputs if p.optional and p.name in arrays)
        model = self._variants.get(present)
        if model is None:
            model = self._variants[present] = self._variant(present)
        feed = [arrays[model.graph.node(n)["attrs"]["name"]] for n in model.graph.inputs]
        return run_graph(model.graph, feed, self.params, dims)
