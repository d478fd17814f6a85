"""The reference target: runs the graph with numpy, op by op. Clear before fast; the oracle."""

from __future__ import annotations

from ..compiler.evaluate import run_graph
from .model import CompiledModel


class ReferenceModel(CompiledModel):
    """A model run by the numpy interpreter.

    A model with optional inputs has one graph per set of inputs given, built the first time
    it is called with that set.
    """

    target = "reference"

    def run(self, arrays, dims):
        present = frozenset(p.name for p in self.inputs if p.optional and p.name in arrays)
        state = self._state  # one set of weights for the whole call
        model = self.compilation.lowered(state.weights, present)
        self.check_sizes(model.present, model.graph, dims)
        feed = [arrays[model.graph.node(n)["attrs"]["name"]] for n in model.graph.inputs]
        return run_graph(model.graph, feed, state.params, dims)
