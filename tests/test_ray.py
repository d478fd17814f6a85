"""kiln.ray on a local Ray cluster (two CPUs): batch inference equals the single-process
result row for row, failed rows are reported, a library built ahead of time is shipped and
run, and each worker builds its model once however many batches it runs. The row-level
behaviour that needs no cluster is in test_ray_rows.py."""

from __future__ import annotations

import os

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="Ray is an optional extra (pip install 'kiln[ray]')")
pytest.importorskip("ray.data", reason="Ray Data is an optional extra (pip install 'kiln[ray]')")

import kiln  # noqa: E402
import kiln.ray  # noqa: E402
from kiln.cli import main  # noqa: E402

MLP = "examples/mlp.kiln"
ARGS = {"hidden": 32}  # small: the test is about rows, not FLOPs


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    # this module's classes (a Predictor that counts) travel by value to the workers
    ray.cloudpickle.register_pickle_by_value(__import__(__name__))
    yield
    ray.shutdown()


def rows(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    return np.arange(n), np.random.default_rng(seed).standard_normal((n, 784), np.float32)


def dataset(ids, x):
    import pyarrow as pa
    from ray.data.extensions import ArrowTensorArray

    # four blocks, so that both workers get some
    return ray.data.from_arrow([pa.table({"id": i, "pixels": ArrowTensorArray.from_numpy(p)})
                                for i, p in zip(np.array_split(ids, 4), np.array_split(x, 4))])


def by_id(result: list[dict] | dict) -> tuple[np.ndarray, np.ndarray]:
    """The ids and outputs of a consumed result, in id order (Ray keeps no order)."""
    ids, out = np.asarray(result["id"]), np.asarray(result["output"])
    order = np.argsort(ids)
    return ids[order], out[order]


def consume(ds) -> dict[str, np.ndarray]:
    """Every row of a dataset, by column."""
    batches = list(ds.iter_batches(batch_size=None, batch_format="numpy"))
    return {c: np.concatenate([b[c] for b in batches]) for c in batches[0]}


def test_predict_equals_single_process(cluster):
    ids, x = rows(10_000)
    out = kiln.ray.predict(dataset(ids, x), MLP, args=ARGS, batch_size=1000,
                           columns={"x": "pixels"}, concurrency=2)
    got_ids, got = by_id(consume(out))
    want = kiln.compile(MLP, args=ARGS)(x)
    assert got_ids.tolist() == ids.tolist()
    np.testing.assert_array_equal(got, want)


def test_failed_rows_fail_the_job_with_their_report(cluster):
    ids, x = rows(300)
    column = np.empty(300, dtype=object)
    column[:] = list(x)
    column[[17, 250]] = [x[17, :700], x[250, :10]]  # two rows of the wrong length
    ds = ray.data.from_items([{"id": int(i), "x": v} for i, v in zip(ids, column)])
    with pytest.raises(ray.exceptions.RayTaskError) as info:  # its text ends with the report
        consume(kiln.ray.predict(ds, MLP, args=ARGS, batch_size=100, key="id"))
    text = str(info.value)
    assert "K0950" in text and "row 17 (id = 17): input x must have shape [B, 784], but its " \
        "shape is [1, 700]" in text
    log = kiln.ray.FailureLog()
    out = consume(kiln.ray.predict(ds, MLP, args=ARGS, batch_size=100, key="id", on_error=log))
    got_ids, got = by_id(out)
    keep = np.setdiff1d(ids, [17, 250])
    assert got_ids.tolist() == keep.tolist()
    np.testing.assert_array_equal(got, kiln.compile(MLP, args=ARGS)(x[keep]))
    failures = sorted(log.rows(), key=lambda f: f.key)
    assert [f.key for f in failures] == [17, 250]
    assert [f.row for f in failures] == [17, 50] and failures[0].batch_rows == 100
    assert "[1, 10]" in failures[1].reason


def test_library_is_shipped_and_run(cluster, tmp_path):
    library = tmp_path / "mlp.so"
    assert main(["compile", MLP, "--arg", "hidden=32", "--target", "native",
                 "-o", str(library)]) == 0
    ids, x = rows(2_000, seed=1)
    out = kiln.ray.predict(dataset(ids, x), library, batch_size=500, columns={"x": "pixels"})
    _, got = by_id(consume(out))
    np.testing.assert_array_equal(got, kiln.load_compiled(library)(x))


class Counting(kiln.ray.Predictor):
    """A Predictor that writes a line per model build and per batch, with its process id."""

    def __init__(self, *args, journal: str, **options):
        self.journal = journal
        super().__init__(*args, **options)

    def _build(self, source, **options):
        self._note("build")
        return super()._build(source, **options)

    def __call__(self, batch):
        self._note("batch")
        return super().__call__(batch)

    def _note(self, what: str) -> None:
        with open(self.journal, "a") as f:
            f.write(f"{what} {os.getpid()}\n")


def test_each_worker_builds_once(cluster, tmp_path):
    journal = tmp_path / "journal"
    ids, x = rows(2_000, seed=2)
    out = dataset(ids, x).map_batches(
        Counting, fn_constructor_args=(MLP,),
        fn_constructor_kwargs={"args": ARGS, "columns": {"x": "pixels"}, "journal": str(journal)},
        batch_size=100, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=2))
    assert len(consume(out)["output"]) == 2_000
    lines = [line.split() for line in journal.read_text().splitlines()]
    builds = [pid for what, pid in lines if what == "build"]
    batches = [pid for what, pid in lines if what == "batch"]
    assert len(batches) == 20
    assert len(builds) == len(set(builds)) <= 2  # one build per worker, at most two workers
    assert set(batches) <= set(builds)  # every batch ran in a worker that had built once
