"""The program a trainer elaborates: the user's model composed with a loss, in kiln.

For `Trainer("mlp.kiln", loss="cross_entropy")` it generates

    import "/abs/path/mlp.kiln" as user_model
    import std.losses

    model KilnTrain {
      net = user_model.MLP(hidden = 32)                   # the model's compile-time args
      forward(x: f32[B, 784], target: i64[B]) {
        out_0 = net(x)
        return (losses.cross_entropy(out_0, target), out_0)
      }
    }

and elaborates it like any model: in training mode for the train step, in inference mode for
evaluation. The loss is output 0; the model's outputs follow (for metrics). The model's
parameters are `net.<path>` there; the trainer strips the prefix. A loss of the user's own
(`--loss losses.kiln:elbo`) is a `fn` or a model of that file; it returns a 0-d tensor (a
std.losses loss takes the model's first output and the target, whatever other outputs the
model has). It
takes the model's outputs by name when every parameter of it but one is named as an output
(`fn kl(logvar, mu, target)` of a model `-> (recon: .., mu: .., logvar: ..)`: those outputs,
in its order, the others left out, and the target as the one other); else the outputs in
order, then the target. Names win where both would fit.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kiln.compiler.elaborate import ElaboratedModel, Program, load_program
from kiln.compiler.errors import KilnError
from kiln.compiler.types import TensorType

MEMBER = "net"  # the user's model inside the generated program
PREFIX = MEMBER + "."
TRAIN_MODEL = "KilnTrain"
# the stdlib losses whose target holds class indices (an integer array)
CLASS_INDEX_LOSSES = frozenset({"cross_entropy", "nll_loss"})
STD_LOSSES = ("cross_entropy", "nll_loss", "mse_loss", "l1_loss", "smooth_l1_loss",
              "huber_loss", "binary_cross_entropy", "binary_cross_entropy_with_logits")
# short names the CLI accepts for them
LOSS_ALIASES = {"mse": "mse_loss", "l1": "l1_loss", "nll": "nll_loss", "huber": "huber_loss",
                "smooth_l1": "smooth_l1_loss", "bce": "binary_cross_entropy",
                "bce_with_logits": "binary_cross_entropy_with_logits",
                # torch.nn's loss modules: the same functions, with the same inputs
                "CrossEntropyLoss": "cross_entropy", "NLLLoss": "nll_loss",
                "MSELoss": "mse_loss", "L1Loss": "l1_loss", "SmoothL1Loss": "smooth_l1_loss",
                "HuberLoss": "huber_loss", "BCELoss": "binary_cross_entropy",
                "BCEWithLogitsLoss": "binary_cross_entropy_with_logits",
                # Keras's names of the same
                "mean_squared_error": "mse_loss", "mean_absolute_error": "l1_loss",
                "mae": "l1_loss"}
# Keras's names, not aliased: its cross entropies take probabilities by default
# (from_logits=False), std.losses' cross_entropy takes scores
KERAS_LOSSES = {
    "categorical_crossentropy": "cross_entropy (on scores: leave out a final softmax) with "
    "one-hot float targets",
    "sparse_categorical_crossentropy": "cross_entropy (on scores: leave out a final softmax) "
    "with integer labels",
    "binary_crossentropy": "binary_cross_entropy on probabilities, "
    "binary_cross_entropy_with_logits on logits"}


# a std.losses loss that applies an activation itself: the op that activation is, what the
# loss wants instead of that op's output, and what to do
_ACTIVATED = {
    "cross_entropy": ("softmax", "logits (it applies log_softmax itself, as "
                      "torch.nn.CrossEntropyLoss does)",
                      "return the scores before the softmax, or use nll_loss on log_softmax"),
    "nll_loss": ("softmax", "log-probabilities (log_softmax's output, as torch.nn.NLLLoss "
                 "does)", "end the model with log_softmax instead of softmax"),
    "binary_cross_entropy_with_logits": ("sigmoid", "logits (it applies the sigmoid itself)",
                                         "return the scores before the sigmoid, or use "
                                         "binary_cross_entropy"),
}


def loss_on_activation(loss: LossSpec, model: ElaboratedModel) -> str | None:
    """Why a std.losses loss most likely gets the wrong thing from the model's first output
    (a softmax fed to cross_entropy: PyTorch and Keras users write it, and it trains slowly,
    its gradients shrunk by a second softmax), or None."""
    if loss.path is not None or loss.name not in _ACTIVATED:
        return None
    op, wants, instead = _ACTIVATED[loss.name]
    where = output_made_by(model, op)
    if where is None:
        return None
    return f"{loss.name} takes {wants}, but {model.name}'s output is {where}; {instead}"


def output_made_by(model: ElaboratedModel, op: str) -> str | None:
    """Where `op` makes the model's first output ("a softmax of body.1 (file:line:col)"), or
    None when another op makes it."""
    graph = model.graph
    if not graph.outputs or graph.op(graph.outputs[0].node) != op:
        return None
    data = graph.node(graph.outputs[0].node)
    scope = f" of {data['scope']}" if data.get("scope") else ""
    return f"a {op}{scope}" + (f" ({data['span']})" if data.get("span") is not None else "")


@dataclass(frozen=True)
class LossSpec:
    """A loss: a std.losses fn by name, or a fn or model `name` of the kiln file `path`."""

    name: str
    path: str | None = None

    @staticmethod
    def parse(text: str) -> LossSpec:
        """`cross_entropy` (std.losses), or `FILE.kiln:NAME`."""
        if not isinstance(text, str) or not text:
            raise KilnError("K0837", f"a loss is a std.losses name or FILE.kiln:NAME, not "
                            f"{text!r}", hint=f"std.losses: {', '.join(STD_LOSSES)}")
        if ":" in text:
            path, _, name = text.rpartition(":")
            if not path.endswith(".kiln") or not name.isidentifier():
                raise KilnError("K0837", f"loss {text!r}: write FILE.kiln:NAME")
            return LossSpec(name, os.path.abspath(path))
        text = LOSS_ALIASES.get(text, text)
        if text not in STD_LOSSES:
            keras = KERAS_LOSSES.get(text)
            raise KilnError("K0837", f"unknown loss {text!r}",
                            hint=f"Keras's {text} is {keras}" if keras else
                            f"std.losses: {', '.join(STD_LOSSES)}; or FILE.kiln:NAME")
        return LossSpec(text)

    @property
    def class_index(self) -> bool:
        """Whether the target holds class indices (classification: metrics of the argmax)."""
        return self.path is None and self.name in CLASS_INDEX_LOSSES

    @property
    def probabilities(self) -> bool:
        """Whether the target may hold class probabilities instead (a float array)."""
        return self.path is None and self.name == "cross_entropy"

    def __str__(self) -> str:
        return self.name if self.path is None else f"{self.path}:{self.name}"


def literal(value: Any) -> str:
    """A compile-time argument as kiln source."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(literal(v) for v in value) + "]"
    raise KilnError("K0602", f"cannot pass {value!r} as a model argument to a trainer")


def target_name(input_names: list[str]) -> str:
    """The target's input name: `target`, with underscores added while the model has an
    input of that name."""
    name = "target"
    while name in input_names:
        name += "_"
    return name


def loss_arguments(parameters: list[str] | None, outputs: list[str], target: str) -> list[str]:
    """What the loss is called with (see the module's docstring): of the model's outputs
    `out_<i>` (`outputs`: their names) and `target`, by the loss's parameter names where
    every one but one names an output, else by position. `parameters`: the loss's parameter
    names (None: not known, as for a loss imported into its file)."""
    positional = [f"out_{i}" for i in range(len(outputs))] + [target]
    if parameters is None:
        return positional
    others = [p for p in parameters if p not in outputs]
    if len(others) != 1 or len(set(parameters)) != len(parameters):
        return positional
    return [target if p == others[0] else f"out_{outputs.index(p)}" for p in parameters]


def loss_parameters(lib: Program, name: str) -> list[str] | None:
    """The names of the parameters of the loss `name` (a fn, or a model's forward inputs)
    defined in the file `lib`; None when it is not defined there (imported)."""
    from kiln.compiler.syntax import ast as A

    for item in lib.module.ast.items:
        if isinstance(item, A.FnDef) and item.name == name:
            return [p.name for p in item.params]
        if isinstance(item, A.BlockDef) and item.name == name:
            forward = next((m for m in item.members if isinstance(m, A.Forward)), None)
            return None if forward is None else [i.name for i in forward.inputs]
    return None


def training_source(model_path: str, model_name: str, args: dict[str, Any],
                    inputs: list, outputs: list[str], target_type: TensorType | str,
                    loss: LossSpec, loss_is_model: bool,
                    loss_params: list[str] | None = None) -> str:
    """The generated program (see the module's docstring). `inputs`: the model's input Ports;
    `outputs`: its output names; `target_type`: the target's type, as kiln writes it;
    `loss_params`: the parameter names of a loss of the user's own (loss_arguments)."""
    names = [p.name for p in inputs]
    target = target_name(names)
    lines = [f"import {json.dumps(model_path)} as user_model", "import std.losses"]
    if loss.path is not None:
        lines.append(f"import {json.dumps(loss.path)} as user_loss")
    call_args = ", ".join(f"{k} = {literal(v)}" for k, v in args.items())
    lines += ["", f"model {TRAIN_MODEL} {{", f"  {MEMBER} = user_model.{model_name}({call_args})"]
    if loss_is_model:
        lines.append(f"  loss_fn = user_loss.{loss.name}()")
        fn = "loss_fn"
    else:
        fn = f"losses.{loss.name}" if loss.path is None else f"user_loss.{loss.name}"
    params = ", ".join([str(p) for p in inputs] + [f"{target}: {target_type}"])
    lines.append(f"  forward({params}) {{")
    outs = ", ".join(f"out_{i}" for i in range(len(outputs)))
    lines.append(f"    {outs} = {MEMBER}({', '.join(names)})")
    # a std.losses loss compares the model's first output with the target (as the metrics
    # read it); a loss of one's own takes the outputs it names, or all of them
    given = (["out_0", target] if loss.path is None else
             loss_arguments(loss_params, outputs, target))
    lines.append(f"    return ({fn}({', '.join(given)}), {outs})")
    lines += ["  }", "}", ""]
    return "\n".join(lines)


def training_program(model_path: str, model_name: str, args: dict[str, Any],
                     inputs: list, outputs: list[str], target: TensorType | str,
                     loss: LossSpec) -> Program:
    """The generated program, loaded (its source names the model file's directory).
    `outputs`: the model's output names."""
    loss_is_model, loss_params = False, None
    if loss.path is not None:
        lib = load_program(Path(loss.path))
        loss_is_model = loss.name in lib.model_names
        loss_params = loss_parameters(lib, loss.name)
    source = training_source(model_path, model_name, args, inputs, outputs, target, loss,
                             loss_is_model, loss_params)
    return load_program(source, filename=os.path.join(os.path.dirname(model_path),
                                                      f"<training {Path(model_path).name}>"))


def strip_prefix(model: ElaboratedModel) -> dict:
    """The generated model's parameters by the user model's paths."""
    return {p[len(PREFIX):] if p.startswith(PREFIX) else p: info
            for p, info in model.params.items()}


__all__ = ["CLASS_INDEX_LOSSES", "LOSS_ALIASES", "LossSpec", "MEMBER", "PREFIX", "TRAIN_MODEL",
           "loss_arguments", "loss_parameters", "strip_prefix", "target_name",
           "training_program", "training_source"]
