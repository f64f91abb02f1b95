import multiprocessing

import numpy as np
import pytest

from visa.cache import SQLiteStore, StageRunner, batched, make_key


def test_key_covers_stage_identity_and_inputs():
    base = make_key("answer", {"model": "m", "temperature": 0.0}, {"q": "a"})
    assert base == make_key(
        "answer", {"temperature": 0.0, "model": "m"}, {"q": "a"}
    )  # key order is irrelevant
    assert base != make_key("ask", {"model": "m", "temperature": 0.0}, {"q": "a"})
    assert base != make_key("answer", {"model": "m", "temperature": 0.2}, {"q": "a"})
    assert base != make_key("answer", {"model": "m", "temperature": 0.0}, {"q": "b"})


def test_values_round_trip(tmp_path):
    cache = SQLiteStore(tmp_path)
    vec = np.arange(6, dtype=np.float32).reshape(2, 3)
    cache.put_many("s", {"a": "text", "b": [1.5, None], "c": vec})
    got = cache.get_many(["a", "b", "c", "missing"])
    assert got["a"] == "text" and got["b"] == [1.5, None] and "missing" not in got
    np.testing.assert_array_equal(got["c"], vec)
    assert got["c"].dtype == np.float32


def test_stage_runner_computes_only_missing_and_dedupes(tmp_path):
    cache = SQLiteStore(tmp_path)
    calls: list[list[int]] = []

    def square(xs):
        calls.append(list(xs))
        return [x * x for x in xs]

    runner = StageRunner(cache, progress=False)
    keys = [f"k{x}" for x in [1, 2, 2, 3]]
    assert runner.run("sq", keys, [1, 2, 2, 3], batched(square, 2)) == [1, 4, 4, 9]
    assert (runner.stats["sq"].computed, runner.stats["sq"].cached) == (3, 0)
    assert sorted(x for c in calls for x in c) == [1, 2, 3]

    again = StageRunner(cache, progress=False)
    out = again.run("sq", ["k3", "k4"], [3, 4], batched(square, 2))
    assert out == [9, 16] and (again.stats["sq"].computed, again.stats["sq"].cached) == (1, 1)
    report = again.report(["sq", "other"])
    assert report["calls/sq/computed"] == 1 and report["calls/other/cached"] == 0 and "time/sq" in report


def test_interrupted_stage_keeps_finished_results(tmp_path):
    cache = SQLiteStore(tmp_path)

    def stream(xs):
        for i, x in enumerate(xs):
            if x == 3:
                raise KeyboardInterrupt  # Ctrl-C in the middle of the stage
            yield i, x * 10

    keys = [f"k{x}" for x in range(5)]
    with pytest.raises(KeyboardInterrupt):
        StageRunner(cache, progress=False).run("s", keys, list(range(5)), stream)
    assert cache.get_many(keys) == {"k0": 0, "k1": 10, "k2": 20}

    runner = StageRunner(cache, progress=False)
    done = runner.run("s", keys, list(range(5)), batched(lambda xs: [x * 10 for x in xs], 8))
    assert done == [0, 10, 20, 30, 40] and (runner.stats["s"].computed, runner.stats["s"].cached) == (2, 3)


def _writer(root: str, worker: int) -> None:
    cache = SQLiteStore(root)
    for start in range(0, 200, 20):
        cache.put_many("w", {f"{worker}-{i}": i for i in range(start, start + 20)})


def test_two_processes_write_at_once(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), w)) for w in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    got = SQLiteStore(tmp_path).get_many([f"{w}-{i}" for w in range(2) for i in range(200)])
    assert len(got) == 400


def test_a_cache_from_before_the_model_column_opens_twice_and_keeps_its_results(tmp_path):
    import sqlite3

    db = sqlite3.connect(tmp_path / "visa-cache.sqlite")
    db.execute("CREATE TABLE results (key TEXT PRIMARY KEY, stage TEXT, value BLOB, created REAL)")
    db.commit()
    db.close()
    first, second = SQLiteStore(tmp_path), SQLiteStore(tmp_path)  # the second finds the column added
    first.put("s", "a", 1.5, model="m")
    assert second.get_many(["a"]) == {"a": 1.5}


class CountingStore(SQLiteStore):
    """A SQLite store that counts its writes (and can be made to fail them)."""

    def __init__(self, root, fail: bool = False):
        super().__init__(root)
        self.writes: list[int] = []
        self.fail = fail

    def put_many(self, stage, items, model="", costs=None):
        if self.fail:
            from visa.core.errors import VisaError

            raise VisaError("cannot write to the cache: disk full")
        self.writes.append(len(items))
        super().put_many(stage, items, model=model, costs=costs)


def test_results_are_written_in_batches(tmp_path):
    """An instant stage of 1000 results is a few transactions, not 1000 (one per result costs more than a
    cached call), and every result is in the store at the end."""
    from visa.cache.runner import FLUSH_RESULTS

    store = CountingStore(tmp_path)
    keys = [f"k{i}" for i in range(1000)]
    StageRunner(store, progress=False).run("s", keys, list(range(1000)), batched(lambda xs: xs, 50))
    assert sum(store.writes) == 1000 and max(store.writes) <= FLUSH_RESULTS
    assert len(store.writes) <= 1000 // FLUSH_RESULTS + 2
    assert store.get_many(keys) == {k: i for i, k in enumerate(keys)}


def test_a_slow_stage_writes_within_the_flush_interval(tmp_path, monkeypatch):
    """Results that come slowly are written once FLUSH_SECONDS have passed, not held for a full batch: a
    kill loses at most that much. (The clock is the runner's, stepped by hand.)"""
    from visa.cache import runner as runner_module

    clock = iter(float(t) for t in range(100))
    monkeypatch.setattr(runner_module.time, "monotonic", lambda: next(clock))
    store = CountingStore(tmp_path)
    keys = [f"k{i}" for i in range(4)]
    StageRunner(store, progress=False).run("s", keys, list(range(4)), batched(lambda xs: xs, 1))
    assert store.writes == [1, 1, 1, 1]  # each result came a "second" after the last write


def test_an_error_or_ctrl_c_mid_stage_writes_what_was_received(tmp_path):
    store = CountingStore(tmp_path)

    def stream(xs):
        for i, x in enumerate(xs):
            if x == 7:
                raise RuntimeError("the model failed")
            yield i, x

    keys = [f"k{i}" for i in range(10)]
    with pytest.raises(RuntimeError):
        StageRunner(store, progress=False).run("s", keys, list(range(10)), stream)
    assert store.get_many(keys) == {f"k{i}": i for i in range(7)} and store.writes == [7]


def test_a_store_that_cannot_write_stops_the_stage_once(tmp_path):
    """A failed write (a full disk) is not tried again on the way out: one error, as it came."""
    from visa.core.errors import VisaError

    store = CountingStore(tmp_path, fail=True)
    keys = [f"k{i}" for i in range(300)]
    with pytest.raises(VisaError, match="disk full"):
        StageRunner(store, progress=False).run("s", keys, list(range(300)), batched(lambda xs: xs, 300))
    assert store.writes == []
