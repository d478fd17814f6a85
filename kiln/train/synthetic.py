"""Synthetic datasets for the training examples (examples/README.md), written as `kiln train`
.npz files:

    python -m kiln.train.synthetic majority majority.npz    # tokens [N, T] -> more 1s than 0s?
    python -m kiln.train.synthetic sbm sbm.npz              # a stochastic-block-model graph

Each generator is a pure function of its sizes and seed (numpy's Generator), so a run of the
examples is reproducible.

- `majority`: sequences of T tokens from {0, 1} (T odd, so there is no tie); the label is 1
  when the sequence holds more ones than zeros. A sequence model must count over the whole
  sequence; chance is 1/2.
- `sbm`: a graph of `nodes` nodes in `communities` equal communities; an edge joins two nodes
  with probability `p_in` inside a community and `p_out` across. Each node's features are
  its community's mean vector plus Gaussian noise, weak enough that the features alone
  classify it poorly and its neighbours must be read. The label is the community. It is one
  full batch: `x` [N, F] and `edge_index` [2, E] (both directions of each edge) serve the
  training and the validation; `y` holds the labels of the training nodes and -100 (the
  ignore_index of std.losses' nll_loss and cross_entropy) elsewhere, `y_val` those of the
  held-out nodes and -100 elsewhere.
"""

from __future__ import annotations

import argparse
import io
import sys

import numpy as np

from kiln.compiler.errors import KilnError
from kiln.compiler.files import write_atomically

IGNORE = -100  # std.losses' ignore_index: a node no loss or metric counts


def majority(n: int = 2000, length: int = 11, seed: int = 0) -> dict[str, np.ndarray]:
    """`n` token sequences [n, length] of 0s and 1s and whether each holds more 1s (y [n])."""
    if length % 2 == 0:
        raise KilnError("K0845", f"majority: the length must be odd (no ties), not {length}")
    tokens = np.random.default_rng(seed).integers(0, 2, size=(n, length), dtype=np.int64)
    return {"x": tokens, "y": (2 * tokens.sum(axis=1) > length).astype(np.int64)}


def sbm(nodes: int = 300, communities: int = 3, features: int = 16, p_in: float = 0.1,
        p_out: float = 0.01, noise: float = 3.0, train: float = 0.5,
        seed: int = 0) -> dict[str, np.ndarray]:
    """A stochastic-block-model graph as one full batch (see the module's docstring): x, edge_index,
    y (training nodes' labels, -100 elsewhere), x_val (= x) and y_val (held-out nodes' labels)."""
    if not (communities >= 2 and nodes >= 2 * communities and 0 < train < 1
            and 0 <= p_out <= p_in <= 1):
        raise KilnError("K0845", "sbm: needs communities >= 2, nodes >= 2 * communities, "
                        "0 < train < 1 and 0 <= p_out <= p_in <= 1")
    rng = np.random.default_rng(seed)
    label = rng.permutation(np.arange(nodes) % communities)
    centres = rng.normal(0.0, 1.0, size=(communities, features))
    x = (centres[label] + rng.normal(0.0, noise, size=(nodes, features))).astype(np.float32)
    same = label[:, None] == label[None, :]
    joined = rng.random((nodes, nodes)) < np.where(same, p_in, p_out)
    src, dst = np.nonzero(np.triu(joined, k=1))  # each pair once, then both directions
    edge_index = np.stack([np.concatenate([src, dst]), np.concatenate([dst, src])])
    held_out = rng.permutation(nodes)[: nodes - int(round(nodes * train))]
    y, y_val = label.astype(np.int64), np.full(nodes, IGNORE, np.int64)
    y_val[held_out] = y[held_out]
    y = np.where(y_val == IGNORE, y, IGNORE)
    return {"x": x, "edge_index": edge_index.astype(np.int64), "y": y, "x_val": x,
            "y_val": y_val}


GENERATORS = {"majority": majority, "sbm": sbm}


def write_npz(path: str, arrays: dict[str, np.ndarray]) -> None:
    """Write `arrays` as an .npz file, atomically and never through a symlink."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    write_atomically(path, buffer.getvalue(),
                     lambda why: KilnError("K0845", f"cannot write {path}: {why}"))


def main(argv: list[str] | None = None) -> int:
    """`python -m kiln.train.synthetic NAME OUT.npz [--seed S]`."""
    parser = argparse.ArgumentParser(prog="python -m kiln.train.synthetic",
                                     description="write a synthetic dataset for kiln train")
    parser.add_argument("name", choices=sorted(GENERATORS))
    parser.add_argument("output", help="the .npz file to write")
    parser.add_argument("--seed", type=int, default=0)
    opts = parser.parse_args(argv)
    try:
        write_npz(opts.output, GENERATORS[opts.name](seed=opts.seed))
    except KilnError as err:
        print(err, file=sys.stderr)
        return 1
    print(f"wrote {opts.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

__all__ = ["GENERATORS", "IGNORE", "majority", "sbm", "write_npz"]
