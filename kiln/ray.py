"""Batch inference over Ray Data: a Ray Dataset mapped through a compiled kiln model.

    import ray, kiln.ray
    ds = ray.data.read_parquet("s3://bucket/rows/")             # a column `x` per model input
    out = kiln.ray.predict(ds, "mlp.kiln", weights="mlp.safetensors", batch_size=1024)
    out.write_parquet("s3://bucket/scores/")                  # a column per model output

The same with `ds.map_batches` (what `predict` does, with the model shipped by value):

    out = ds.map_batches(kiln.ray.Predictor, fn_constructor_args=("mlp.kiln",),
                         fn_constructor_kwargs={"weights": "mlp.safetensors"},
                         batch_size=1024, batch_format="numpy",
                         compute=ray.data.ActorPoolStrategy(size=2))

Each Ray worker builds its model once, when its Predictor is made (map_batches runs a
callable class in a pool of actors, each calling it batch after batch): from a .kiln program
compiled there (its machine code from the worker's compile cache when the node has built it
before), or from a library built ahead of time (`kiln compile --target native -o model.so`),
whose files `predict` reads once and ships to each worker. A batch's rows are the leading
axis of every input and output (`x: f32[B, 784]`: one row is an f32[784]).

A row the model cannot take (a wrong shape or dtype, a value an op refuses) is reported by
its position in its batch, by its `key` column's value when `key` is given, and why;
`on_error` says what then: "raise" fails the job with that report (K0950), "skip" leaves the
failed rows out and logs the report, a FailureLog leaves them out and records it.

Ray is imported only here, and only when this module is used: `import kiln` and the CLI
never load it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from kiln.compiler.errors import KilnError

if TYPE_CHECKING:
    import ray.data

    from kiln.compiler.elaborate import Program
    from kiln.runtime.model import CompiledModel
    from kiln.runtime.signature import Signature

__all__ = ["FailureLog", "ModelSource", "Predictor", "RowFailure", "predict"]

log = logging.getLogger("kiln.ray")

ON_ERROR = ("raise", "skip")
LISTED = 10  # rows a report names one by one; the rest are counted
# a library's files read for shipping, after the library itself: its weights and metadata
# (the C header is for C callers only)
LIBRARY_COMPANIONS = (".safetensors", ".kiln.json")
LIBRARY_LIMIT = 16 << 30  # bytes of one library file read at most


def _ray():
    """The ray module, or K0953 when it is not installed."""
    try:
        import ray
        import ray.data  # noqa: F401  (Datasets: the part of Ray kiln.ray uses)
    except ImportError:
        raise KilnError("K0953", "kiln.ray needs Ray (with Ray Data), which is not installed",
                        hint="pip install 'kiln[ray]'  (or: pip install 'ray[data]')") from None
    return ray


# ---------------------------------------------------------------------- what workers build from


@dataclasses.dataclass(frozen=True)
class ModelSource:
    """What a worker builds its model from, by value: a loaded program (its imports resolved)
    to compile there, or the files of a library built ahead of time (`.so` and companions,
    as bytes) to write and load there. `name`: the path it came from, for messages."""

    name: str
    program: Program | None = None
    library: dict[str, bytes] | None = None

    @staticmethod
    def of(model: str | os.PathLike) -> ModelSource:
        """Read a model file (.kiln source) or a library (.so and its companions) once, here,
        so that workers need no shared file system."""
        path = Path(model)
        if path.suffix != ".so":
            from kiln.api import load

            return ModelSource(str(path), program=load(path))
        from kiln.compiler.files import read_bounded

        def refuse(why: str) -> KilnError:
            return KilnError("K0403", f"cannot read the library {path} to ship it: {why}")

        stem = path.with_suffix("")
        files = {".so": read_bounded(path, LIBRARY_LIMIT, refuse)}
        for suffix in LIBRARY_COMPANIONS:
            files[suffix] = read_bounded(Path(f"{stem}{suffix}"), LIBRARY_LIMIT, refuse)
        return ModelSource(str(path), library=files)

    def build(self, *, model: str | None, args: dict | None, seed: int, target: str,
              weights: Any, threads: int | None) -> CompiledModel:
        """The model, built here: compiled (machine code from the compile cache where it
        holds it), or the shipped library written to a private directory and loaded."""
        if self.program is not None:
            from kiln.api import compile

            native = {"threads": threads} if target == "native" else {}
            return compile(self.program, model, target=target, seed=seed, weights=weights,
                           args=args, **native)
        from kiln.runtime.aot import load_compiled

        if model is not None or args or target != "native":
            raise KilnError("K0602", f"{self.name} is a library built ahead of time: its model, "
                            "arguments and target were fixed when it was built",
                            hint="drop model_name=, args= and target=, or pass the .kiln file")
        # the loaded library must stay on disk only until dlopen has mapped it
        with tempfile.TemporaryDirectory(prefix="kiln-ray-") as tmp:
            for suffix, data in self.library.items():
                Path(tmp, f"model{suffix}").write_bytes(data)
            loaded = load_compiled(Path(tmp, "model.so"))
        if weights is not None:
            loaded.load_weights(weights)
        return loaded


def _source(model: str | os.PathLike | ModelSource) -> ModelSource:
    if isinstance(model, ModelSource):
        return model
    if type(model).__name__ == "ObjectRef":  # shipped through Ray's object store by predict
        model = _ray().get(model)
        if isinstance(model, ModelSource):
            return model
    if isinstance(model, (str, os.PathLike)):
        return ModelSource.of(model)
    raise KilnError("K0602", "the model must be a path to a .kiln file or a .so library, not "
                    f"{type(model).__name__}")


def _weights(weights: Any) -> Any:
    """A weights file read here (its arrays then travel by value); a dict as it is."""
    if weights is None or isinstance(weights, Mapping):
        return weights
    from kiln.runtime.weights import load_weights

    return load_weights(weights)


# ---------------------------------------------------------------------- failures


@dataclasses.dataclass(frozen=True)
class RowFailure:
    """One row a batch could not run: its position in its batch (of `batch_rows` rows), its
    `key` column's value when predict was given one, and why (the KilnError's text)."""

    row: int
    batch_rows: int
    reason: str
    key: Any = None
    batch: str = ""  # a digest of the batch's inputs: the same row seen twice (a retried task)
    key_column: str | None = None

    def __str__(self) -> str:
        named = f" ({self.key_column} = {self.key!r})" if self.key_column is not None else ""
        return f"row {self.row}{named}: {self.reason}"


class _Collector:
    """The Ray actor behind a FailureLog: failures by row, each once however often its batch
    was run (Ray retries a failed task)."""

    def __init__(self):
        self.failures: dict[tuple, RowFailure] = {}

    def add(self, failures: list[RowFailure]) -> None:
        for f in failures:
            self.failures.setdefault((f.batch, f.row), f)

    def rows(self) -> list[RowFailure]:
        return list(self.failures.values())


class FailureLog:
    """Where `predict(..., on_error=FailureLog())` records the rows it leaves out: a small
    Ray actor that workers report to, read on the driver with `rows()` (once the dataset
    has been consumed: Ray Data runs lazily)."""

    def __init__(self):
        ray = _ray()
        self._actor = ray.remote(num_cpus=0)(_Collector).remote()

    def add(self, failures: list[RowFailure]) -> None:
        """Record failures (called by workers; waits until they are recorded)."""
        _ray().get(self._actor.add.remote(failures))

    def rows(self) -> list[RowFailure]:
        """Every failure recorded so far."""
        return _ray().get(self._actor.rows.remote())


def _report(model: str, failures: list[RowFailure]) -> str:
    """The rows of one batch that failed and why: a line per reason (a column of the wrong
    dtype fails every row alike), naming its first LISTED rows."""
    total = failures[0].batch_rows
    by_reason: dict[str, list[RowFailure]] = {}
    for f in failures:
        by_reason.setdefault(f.reason, []).append(f)
    lines = [f"{len(failures)} of {total} rows of a batch cannot be run by {model}:"]
    for reason, rows in by_reason.items():
        if len(rows) == 1:
            lines.append(f"  {rows[0]}")
            continue
        shown = rows[:LISTED]
        more = f" and {len(rows) - LISTED} more" if len(rows) > LISTED else ""
        keys = (f" ({shown[0].key_column} = {', '.join(repr(f.key) for f in shown)}"
                f"{', ...' if more else ''})" if shown[0].key_column is not None else "")
        lines.append(f"  rows {', '.join(str(f.row) for f in shown)}{more}{keys}: {reason}")
    return "\n".join(lines)


# ---------------------------------------------------------------------- the callable class


class Predictor:
    """The callable class `ds.map_batches` runs: builds the model once (in __init__), then
    maps each batch (a dict of numpy arrays by column) to the batch's other columns plus one
    column per model output.

    model: a .kiln file or a .so library (the path must exist on every worker; `predict`
    ships the contents instead), or a ModelSource. model_name, args, seed, target: as
    kiln.compile takes them (a .kiln file only). weights: a file or a dict of arrays.
    columns: model input name -> dataset column (default: the input's own name).
    bind: sizes that symbols other than the batch axis must have (`{"T": 128}`); rows of
    other sizes fail. key: a column naming rows in failure reports. threads: native code's
    threads per worker (default 1: Ray runs one worker per CPU).
    """

    def __init__(self, model: str | os.PathLike | ModelSource, *, weights: Any = None,
                 model_name: str | None = None, args: dict[str, Any] | None = None,
                 seed: int = 0, target: str = "native", columns: Mapping[str, str] | None = None,
                 bind: Mapping[str, int] | None = None, key: str | None = None,
                 on_error: str | FailureLog = "raise", threads: int | None = 1):
        _check_on_error(on_error)
        source = _source(model)
        self.name = source.name
        self.model = self._build(source, model_name=model_name, args=args, seed=seed,
                                 target=target, weights=_weights(weights), threads=threads)
        signature: Signature = self.model._signature
        self.batch_axis = batch_symbol(signature, source.name)
        self.columns = _columns(signature, columns or {})
        self.bind = _binds(signature, bind or {}, self.batch_axis)
        self.key = key
        self.on_error = on_error

    def _build(self, source: ModelSource, **options) -> CompiledModel:
        """The model this worker runs, built once (a subclass may count or time it)."""
        return source.build(model=options.pop("model_name"), **options)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One batch's predictions: its columns but the model's inputs, plus the outputs."""
        inputs = self._inputs(batch)
        rows = len(next(iter(batch.values()))) if batch else 0
        results, failures = self._run(inputs, rows, batch)
        ok = np.ones(rows, dtype=bool)
        if failures:
            if self.on_error == "raise":
                raise KilnError("K0950", _report(self.name, failures),
                                hint="fix these rows, or pass on_error=\"skip\" (or a "
                                "kiln.ray.FailureLog) to leave them out")
            log.warning("%s", _report(self.name, failures))
            if isinstance(self.on_error, FailureLog):
                self.on_error.add(failures)
            ok[[f.row for f in failures]] = False
        used = set(self.columns.values())
        out = {c: v[ok] for c, v in batch.items() if c not in used}
        for port, values in zip(self.model.outputs, results):
            out[port.name] = values
        return out

    def _inputs(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The model's inputs by name, from their columns; K0951 for a missing column or an
        output column that would overwrite one of the batch's other columns."""
        missing = [f"{name} (column {col!r})" for name, col in self.columns.items()
                   if col not in batch]
        if missing:
            raise KilnError("K0951", f"the dataset has no column for input {', '.join(missing)} "
                            f"of {self.name}", hint=f"its columns: {', '.join(batch) or 'none'}; "
                            "map inputs to columns with columns={input: column}")
        used = set(self.columns.values())
        clash = [p.name for p in self.model.outputs if p.name in batch and p.name not in used]
        if clash:
            raise KilnError("K0951", f"output {', '.join(clash)} of {self.name} would overwrite "
                            "the dataset's column of that name",
                            hint="rename or drop that column first (ds.rename_columns)")
        if self.key is not None and self.key not in batch:
            raise KilnError("K0951", f"the dataset has no key column {self.key!r}",
                            hint=f"its columns: {', '.join(batch)}")
        return {name: batch[col] for name, col in self.columns.items()}

    def _run(self, inputs: dict[str, np.ndarray], rows: int, batch: dict
             ) -> tuple[list[np.ndarray], list[RowFailure]]:
        """The outputs of the rows that run, and why the others do not. The whole batch goes
        in one call; only when that call fails are rows checked one by one, the good ones
        then run together (rows are independent: that is what mapping batches assumes)."""
        try:
            if self._sizes_hold(inputs):
                return self._call(inputs), []
        except KilnError:
            pass
        failures: list[RowFailure] = []
        good: list[int] = []
        sizes: dict[str, int] = {}
        for i in range(rows):
            reason = self._check_row({n: a[i] for n, a in inputs.items()}, sizes)
            if reason is None:
                good.append(i)
            else:
                failures.append(self._failure(batch, i, rows, reason))
        if good:
            stacked = {n: np.stack([a[i] for i in good]) for n, a in inputs.items()}
            try:
                return self._call(stacked), failures
            except KilnError:  # a value an op refuses (K0505): find its rows, one call each
                pass
            results = []
            for i in good:
                try:
                    results.append(self._call({n: a[i][None] for n, a in inputs.items()}))
                except KilnError as exc:
                    failures.append(self._failure(batch, i, rows, exc.message))
            failures.sort(key=lambda f: f.row)
            if results:
                return [np.concatenate(r) for r in zip(*results)], failures
        return [self._empty(port) for port in self.model.outputs], failures

    def _call(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        result = self.model(**inputs)
        return [result] if len(self.model.outputs) == 1 else list(result)

    def _sizes_hold(self, inputs: dict[str, np.ndarray]) -> bool:
        """Whether the batch's arrays agree with `bind` (the rest the model checks)."""
        if not self.bind:
            return True
        _, dims = self.model.bind_inputs((), inputs)
        return all(dims.get(s, n) == n for s, n in self.bind.items())

    def _check_row(self, row: dict[str, Any], sizes: dict[str, int]) -> str | None:
        """Why one row cannot run (as a batch of one), or None. `sizes`: the symbols' sizes
        of the batch's first good row, which every other row must match to be stacked."""
        try:
            _, dims = self.model.bind_inputs((), {n: _one_row(v) for n, v in row.items()})
        except KilnError as exc:
            return exc.message
        dims.pop(self.batch_axis, None)
        for s, n in dims.items():
            want = self.bind.get(s, sizes.get(s, n))
            if want != n:
                source = "bind" if s in self.bind else "the batch's first row"
                return f"size {s} is {n}, but {want} by {source}"
        if not sizes:
            sizes.update(dims)
        return None

    def _failure(self, batch: dict, row: int, rows: int, reason: str) -> RowFailure:
        key = batch[self.key][row] if self.key is not None else None
        return RowFailure(row, rows, reason, key.item() if hasattr(key, "item") else key,
                          _digest(batch, self.columns.values()), self.key)

    def _empty(self, port) -> np.ndarray:
        """No rows of an output (every row of the batch failed): its per-row axes where they
        are known sizes, else one of size 0."""
        shape = [0] + [d.evaluate(self.bind) if d.symbols() <= set(self.bind) else 0
                       for d in port.type.shape[1:]]
        return np.zeros(shape, dtype=port.type.np_dtype)


def _one_row(value: Any) -> Any:
    """One row as a batch of one: an array gains the leading axis; anything else is left for
    the signature to refuse."""
    return np.asarray(value)[None] if isinstance(value, np.ndarray | np.generic) else [value]


def _digest(batch: dict, columns) -> str:
    """Which batch a failure came from: the digest of its input columns' bytes (object
    columns by their text), so a retried batch reports its rows once."""
    h = hashlib.sha256()
    for c in columns:
        v = batch.get(c)
        h.update(v.tobytes() if isinstance(v, np.ndarray) and v.dtype != object else
                 repr(v).encode())
    return h.hexdigest()[:16]


def batch_symbol(signature: Signature, name: str) -> str:
    """The symbol of the batch axis: the leading axis of every input and output (K0952 when
    the model has none, as a model over one fixed-size input has not)."""
    leads = {p.name: (p.type.shape[0].symbol if p.type.rank else None)
             for p in (*signature.inputs, *signature.outputs)}
    symbols = set(leads.values())
    if len(symbols) == 1 and None not in symbols:
        return symbols.pop()
    found = ", ".join(f"{p} with {s or 'a fixed size'}" for p, s in leads.items())
    raise KilnError("K0952", f"{signature.name} cannot be mapped over rows: every input and "
                    "output must lead with one symbolic batch axis (`x: f32[B, 784] -> "
                    f"f32[B, 10]`), but here {found}", hint=f"its signature: {signature}")


def _columns(signature: Signature, columns: Mapping[str, str]) -> dict[str, str]:
    """Every required input's column; K0602 for a mapping that names no input."""
    names = [p.name for p in signature.inputs]
    unknown = [n for n in columns if n not in names]
    if unknown:
        raise KilnError("K0602", f"columns= names {', '.join(unknown)}, which are not inputs "
                        f"of {signature.name}", hint=f"its inputs: {', '.join(names)}")
    return {p.name: columns.get(p.name, p.name) for p in signature.inputs
            if not p.optional or p.name in columns}


def _binds(signature: Signature, bind: Mapping[str, int], batch: str) -> dict[str, int]:
    """bind= as sizes of the inputs' symbols, the batch axis excepted (its size is a
    batch's)."""
    symbols = {s for p in signature.inputs for d in p.type.shape for s in d.symbols()}
    for s, n in bind.items():
        if s == batch or s not in symbols:
            raise KilnError("K0602", f"bind= cannot size {s}: " + (
                "it is the batch axis, sized by each batch" if s == batch else
                f"the inputs of {signature.name} have no such size"),
                hint=f"symbols it can size: {', '.join(sorted(symbols - {batch})) or 'none'}")
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise KilnError("K0602", f"bind= gives {s} the size {n!r}: sizes are ints >= 0")
    return dict(bind)


def _check_on_error(on_error: Any) -> None:
    if not (isinstance(on_error, FailureLog) or on_error in ON_ERROR):
        raise KilnError("K0602", f"on_error must be \"raise\", \"skip\" or a "
                        f"kiln.ray.FailureLog, not {on_error!r}")


# ---------------------------------------------------------------------- predict


def predict(ds: ray.data.Dataset, model: str | os.PathLike, *, weights: Any = None,
            batch_size: int = 1024, bind: Mapping[str, int] | None = None,
            target: str = "native", model_name: str | None = None,
            args: dict[str, Any] | None = None, seed: int = 0,
            columns: Mapping[str, str] | None = None, key: str | None = None,
            on_error: str | FailureLog = "raise", concurrency: int | tuple[int, int] = 1,
            num_cpus: float = 1, threads: int | None = 1) -> ray.data.Dataset:
    """`ds` mapped through a compiled model: the other columns of each row, plus a column per
    model output (named as the model names its outputs). Lazy, as Ray Data is: the work runs
    when the result is consumed (`take`, `write_parquet`, `materialize`).

    The model (a .kiln file, or a .so library and its companions) and the weights are read
    here, checked (a wrong model, weights or bind= fail now, not on the cluster) and sent to
    each worker by value through the object store; each of `concurrency` workers (Ray
    actors of `num_cpus` CPUs, native code on `threads` threads) builds it once.
    Other options as Predictor takes them.
    """
    ray = _ray()
    if not isinstance(ds, ray.data.Dataset):
        raise KilnError("K0602", f"predict maps a ray.data.Dataset, not {type(ds).__name__}",
                        hint="e.g. ray.data.from_numpy(x) or ray.data.read_parquet(path)")
    if not _positive(batch_size):
        raise KilnError("K0602", f"batch_size must be a positive int, not {batch_size!r}")
    _check_on_error(on_error)
    compute = actor_pool(concurrency)
    source, weights = ModelSource.of(model), _weights(weights)
    options = dict(weights=weights, model_name=model_name, args=args, seed=seed,
                   target=target, columns=columns, bind=bind, key=key, on_error=on_error,
                   threads=threads)
    _check_here(source, options)
    shipped = ray.put(source)  # once, not once per worker
    options["weights"] = ray.put(weights) if weights is not None else None
    return ds.map_batches(_Shipped, fn_constructor_args=(shipped,),
                          fn_constructor_kwargs=options, batch_size=batch_size,
                          batch_format="numpy", compute=compute,
                          num_cpus=num_cpus)


def actor_pool(concurrency: int | tuple[int, int]):
    """The pool of workers (Ray actors) that map batches: `n` of them, or from `lo` to `hi`
    as Ray's autoscaling sees fit."""
    ray = _ray()
    if isinstance(concurrency, tuple) and len(concurrency) == 2 and all(
            _positive(n) for n in concurrency) and concurrency[0] <= concurrency[1]:
        return ray.data.ActorPoolStrategy(min_size=concurrency[0], max_size=concurrency[1])
    if _positive(concurrency):
        return ray.data.ActorPoolStrategy(size=concurrency)
    raise KilnError("K0602", "concurrency must be a positive int or a (min, max) pair of them, "
                    f"not {concurrency!r}")


def _positive(n: Any) -> bool:
    return isinstance(n, int) and not isinstance(n, bool) and n >= 1


def _check_here(source: ModelSource, options: dict) -> None:
    """What a worker would refuse, refused on the driver first: the model, its arguments,
    the weights (against its parameters), the batch axis, columns= and bind=. A .kiln model
    is elaborated, not compiled; a library is loaded."""
    if source.program is not None:
        from kiln.api import prepare
        from kiln.runtime.signature import Signature

        compilation, _ = prepare(source.program, options["model_name"], options["target"],
                                 options["seed"], options["weights"], options["args"])
        signature = Signature.of(compilation.model)
    else:
        signature = source.build(model=options["model_name"], args=options["args"],
                                 seed=options["seed"], target=options["target"],
                                 weights=options["weights"], threads=1)._signature
    _binds(signature, options["bind"] or {}, batch_symbol(signature, source.name))
    _columns(signature, options["columns"] or {})


class _Shipped(Predictor):
    """A Predictor whose model and weights come through Ray's object store (predict)."""

    def __init__(self, source, *, weights=None, **options):
        if type(weights).__name__ == "ObjectRef":
            weights = _ray().get(weights)
        super().__init__(source, weights=weights, **options)
