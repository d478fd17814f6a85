"""Datasets and augmentations for `kiln train`.

A dataset is one of scikit-learn's bundled ones by name (no download), or a .npz file with
arrays `x` and `y` (and optionally `x_val`, `y_val`, and arrays named after the model's other
inputs, given whole to every step: a graph's `edge_index`), read with the bounds every kiln
tensor file is read with. Examples are shaped to the model's input (a digits row of 64 pixels
becomes [1, 8, 8] for a model taking f32[B, 1, 8, 8]) and converted to its dtype.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Collection
from dataclasses import dataclass

import numpy as np

from kiln.compiler.errors import KilnError

# name -> (loader in sklearn.datasets, scaling): digits' pixels 0..16 scaled to [0, 1]; the
# tabular ones standardised with the training split's mean and deviation
SKLEARN = {"digits": ("load_digits", "unit"), "iris": ("load_iris", "standard"),
           "wine": ("load_wine", "standard"),
           "breast_cancer": ("load_breast_cancer", "standard"),
           "diabetes": ("load_diabetes", "standard")}


@dataclass
class Dataset:
    """Training and validation examples (the validation arrays may be empty), the arrays of
    a .npz for the model's other inputs given whole by name, and those given per example
    (split like x) as (training, validation) by name."""

    x: np.ndarray
    y: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    inputs: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    examples: dict[str, tuple[np.ndarray, np.ndarray]] = dataclasses.field(
        default_factory=dict)


def load_dataset(name: str, val_split: float = 0.2, seed: int = 0,
                 per_example: Collection[str] = ()) -> Dataset:
    """The dataset `name` (a scikit-learn name, or a .npz path), split (when it has no
    validation arrays of its own) into a shuffled training part and the last `val_split`
    of the shuffled examples for validation. The .npz's arrays named in `per_example` (the
    model's inputs after the first that take one row per example) are split with x; with
    `x_val` given, each comes with its own `NAME_val`."""
    if not 0 <= val_split < 1:
        raise KilnError("K0830", f"--val-split must be in [0, 1), not {val_split}")
    if name in SKLEARN:
        x, y, scaling = _sklearn(name)
        given, inputs, examples = None, {}, {}
    elif name.endswith(".npz") or os.path.exists(name):
        x, y, given, inputs = _npz(name)
        scaling = None
        examples = _per_example(name, x, given, inputs, per_example)
    else:
        raise KilnError("K0830", f"unknown dataset {name!r}",
                        hint=f"a .npz file with x and y, or one of {', '.join(SKLEARN)}")
    if len(x) != len(y):
        raise KilnError("K0830", f"dataset {name}: x has {len(x)} examples but y {len(y)}")
    if not len(x):
        raise KilnError("K0830", f"dataset {name}: x holds no examples")
    if given is None and inputs:
        # arrays given whole (a graph's edge_index) number the examples: keep their order
        if val_split > 0:
            raise KilnError("K0830", f"dataset {name} holds {', '.join(inputs)}, given whole, "
                            "which number its examples: a random validation split would "
                            "renumber them", hint="give x_val and y_val in the .npz (a graph: "
                            "the same x, y_val labelling the held-out nodes, -100 elsewhere), "
                            "or --val-split 0")
        data = Dataset(x, y, x[:0], y[:0], inputs,
                       {k: (a, a[:0]) for k, a in examples.items()})
    elif given is None:
        order = np.random.default_rng(seed).permutation(len(x))
        # a split above 0 keeps at least one example for validation, and one for training
        n_val = max(int(round(len(x) * val_split)), 1 if val_split > 0 else 0)
        cut = len(x) - n_val
        if cut < 1:
            raise KilnError("K0830", f"--val-split {val_split} of dataset {name}'s {len(x)} "
                            "examples leaves none to train on",
                            hint="a smaller --val-split, or x_val and y_val in the .npz")
        train, val = order[:cut], order[cut:]
        data = Dataset(x[train], y[train], x[val], y[val], inputs,
                       {k: (a[train], a[val]) for k, a in examples.items()})
    else:
        data = Dataset(x, y, given["x"], given["y"], inputs,
                       {k: (a, given[k]) for k, a in examples.items()})
    if scaling == "unit":
        data.x, data.x_val = data.x / 16.0, data.x_val / 16.0
    elif scaling == "standard":
        mean, std = data.x.mean(axis=0), data.x.std(axis=0)
        std[std == 0] = 1
        data.x, data.x_val = (data.x - mean) / std, (data.x_val - mean) / std
    return data


def _per_example(path: str, x: np.ndarray, given: dict | None, inputs: dict,
                 names: Collection[str]) -> dict[str, np.ndarray]:
    """The arrays of `names` taken out of `inputs` (their `NAME_val` into `given`), each
    checked to hold one row per example of x (K0830)."""
    examples = {}
    for name in names:
        if name not in inputs:
            continue  # the loop says what is missing (K0846)
        examples[name] = array = inputs.pop(name)
        if array.ndim == 0 or len(array) != len(x):
            raise KilnError("K0830", f"dataset {path}: the model takes {name} per example, "
                            f"but it holds {len(array) if array.ndim else 0} rows and x "
                            f"{len(x)}")
        val = inputs.pop(name + "_val", None)
        if (val is None) != (given is None):
            raise KilnError("K0830", f"dataset {path}: x_val and {name}_val come together",
                            hint=f"the model takes {name} per example: its validation rows "
                            f"are {name}_val")
        if val is not None:
            if val.ndim == 0 or len(val) != len(given["x"]):
                raise KilnError("K0830", f"dataset {path}: {name}_val holds "
                                f"{len(val) if val.ndim else 0} rows and x_val "
                                f"{len(given['x'])}")
            given[name] = val
    return examples


def _sklearn(name: str) -> tuple[np.ndarray, np.ndarray, str]:
    try:
        import sklearn.datasets
    except ImportError:
        raise KilnError("K0830", f"dataset {name} comes with scikit-learn, which is not "
                        "installed", hint="pip install 'kiln[train]'") from None
    loader, scaling = SKLEARN[name]
    bunch = getattr(sklearn.datasets, loader)()
    return np.asarray(bunch.data), np.asarray(bunch.target), scaling


def _npz(path: str) -> tuple[np.ndarray, np.ndarray, dict | None, dict]:
    from kiln.runtime.weights import load_weights

    if os.path.splitext(path)[1].lower() not in (".npz", ".safetensors"):
        raise KilnError("K0830", f"dataset {path}: kiln train reads a .npz file (or "
                        ".safetensors) of arrays x and y",
                        hint="np.savez('data.npz', x=x, y=y) (a CSV: np.loadtxt or pandas "
                        "first)")
    try:
        arrays = load_weights(path)
    except KilnError as err:  # the reason, without load_weights' "weights file PATH: "
        why = err.message.removeprefix(f"weights file {path}: ")
        raise KilnError("K0830", f"dataset {path}: {why}") from None
    missing = [k for k in ("x", "y") if k not in arrays]
    if missing:
        raise KilnError("K0830", f"dataset {path} has no array {missing[0]!r}",
                        hint=f"its arrays: {', '.join(arrays) or 'none'}; a dataset holds x "
                        "and y (and optionally x_val and y_val)")
    if ("x_val" in arrays) != ("y_val" in arrays):
        raise KilnError("K0830", f"dataset {path}: x_val and y_val come together")
    given = {"x": arrays["x_val"], "y": arrays["y_val"]} if "x_val" in arrays else None
    inputs = {k: a for k, a in arrays.items() if k not in ("x", "y", "x_val", "y_val")}
    return arrays["x"], arrays["y"], given, inputs


def shape_examples(x: np.ndarray, port) -> np.ndarray:
    """Examples `x` ([N, ...]) reshaped to the model input `port`'s fixed sizes (its axis 0
    is the batch) and converted to its dtype."""
    from kiln.compiler.dims import Dim, known_value
    from kiln.compiler.types import NUMPY_DTYPES

    dims = [known_value(Dim.of(d)) for d in port.type.shape[1:]]
    if None not in dims and tuple(dims) != x.shape[1:]:
        if math.prod(dims) != math.prod(x.shape[1:]):
            raise KilnError("K0830", f"the dataset's examples are {list(x.shape[1:])}, which "
                            f"cannot be shaped to input {port}")
        kept = [d for d in x.shape[1:] if d != 1]
        if len(dims) == x.ndim - 1 and kept != [d for d in dims if d != 1]:
            # the same rank, the sizes in another order: a reshape would mix the elements
            last = x.ndim == 4 and x.shape[1:] == (dims[1], dims[2], dims[0])
            raise KilnError("K0830", f"the dataset's examples are {list(x.shape[1:])}, which "
                            f"input {port} takes in another order: reshaping would mix "
                            "their elements", hint="images channels last ([N, H, W, C], "
                            "Keras's layout): x.transpose(0, 3, 1, 2) makes them [N, C, H, W]"
                            if last else "reorder the axes of x (np.transpose)")
        x = x.reshape((len(x), *dims))
    return np.ascontiguousarray(x, dtype=NUMPY_DTYPES[port.type.dtype])


# ------------------------------------------------------------------ augmentations
# Each takes a batch of images [N, C, H, W] (a batch of another rank is left alone) and the
# epoch's numpy Generator, so a run is reproducible from its seed.


def flip(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Mirror each image left-right with probability 1/2."""
    if x.ndim != 4:
        return x
    mask = rng.random(len(x)) < 0.5
    out = x.copy()
    out[mask] = out[mask][..., ::-1]
    return out


def crop(x: np.ndarray, rng: np.random.Generator, padding: int = 2) -> np.ndarray:
    """Pad each image by `padding` zeros and crop it back at a random offset."""
    if x.ndim != 4:
        return x
    h, w = x.shape[2:]
    padded = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    out = np.empty_like(x)
    offsets = rng.integers(0, 2 * padding + 1, size=(len(x), 2))
    for i, (dy, dx) in enumerate(offsets):
        out[i] = padded[i, :, dy:dy + h, dx:dx + w]
    return out


def noise(x: np.ndarray, rng: np.random.Generator, std: float = 0.05) -> np.ndarray:
    """Add Gaussian noise of deviation `std`."""
    return (x + rng.normal(0.0, std, size=x.shape)).astype(x.dtype)


AUGMENTATIONS = {"flip": flip, "crop": crop, "noise": noise}


def augment(x: np.ndarray, names: list[str], rng: np.random.Generator) -> np.ndarray:
    """The batch with the augmentations `names` applied in order."""
    for name in names:
        x = AUGMENTATIONS[name](x, rng)
    return x


__all__ = ["AUGMENTATIONS", "Dataset", "augment", "crop", "flip", "load_dataset", "noise",
           "shape_examples"]
