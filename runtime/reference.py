"""The reference target: runs the graph with numpy, op by op. Clear before fast; the oracle."""

from __future__ import annotations

import numpy as np

from ..compiler.elaborate import ElaboratedModel
from ..compiler.evaluate import run_graph
from .model import CompiledModel, State


class ReferenceModel(CompiledModel):
    """A model run by the numpy interpreter.

    A model with optional inputs has one graph per set of inputs given, built the first time
    it is called with that set.
    """

    target = "reference"

    def run(self, arrays, dims):
        state = self._state  # one set of weights for the whole call
        model = self.compilation.lowered(state.weights, self._present(arrays))
        self.check_sizes(model.present, model.graph, dims)
        return _run(model, arrays, state, dims)

    def run_gradient(self, state, present, arrays, dims):
        model = self.compilation.gradient(state.weights, present).model
        self.check_sizes((present, "vjp"), model.graph, dims)
        return _run(model, arrays, state, dims)


def _run(model: ElaboratedModel, arrays: dict[str, np.ndarray], state: State,
         dims: dict[str, int]) -> list[np.ndarray]:
    """The model's graph run on its inputs by name, with `state`'s weights."""
    feed = [arrays[model.graph.node(n)["attrs"]["name"]] for n in model.graph.inputs]
    return run_graph(model.graph, feed, state.params, dims)
