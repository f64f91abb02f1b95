"""Shard arithmetic and the wait for other shards' results (fake clock; no sleeping)."""

from __future__ import annotations

import pytest

from visa.core.errors import VisaError
from visa.method.shard import Shard, wait_for_others


def test_shares_are_disjoint_and_cover_everything():
    shares = [Shard(3, i).mine(10) for i in range(3)]
    assert shares == [[0, 3, 6, 9], [1, 4, 7], [2, 5, 8]]
    assert Shard().mine(4) == [0, 1, 2, 3] and not Shard().active


@pytest.mark.parametrize("count, index", [(2, 2), (0, 0), (3, -1)])
def test_bad_shard_settings(count, index):
    with pytest.raises(VisaError, match="shard.index"):
        Shard(count, index)


class World:
    """A cache that other shards fill over (fake) time."""

    def __init__(self, arrivals: dict[str, float]):
        self.arrivals, self.now, self.computed = arrivals, 0.0, []

    def fetch(self, keys):
        return {k: f"v{k}" for k in keys if self.arrivals.get(k, float("inf")) <= self.now}

    def sleep(self, seconds):
        self.now += seconds

    def compute(self, keys):
        self.computed.extend(keys)
        return {k: f"v{k}" for k in keys}


def test_waits_while_others_make_progress():
    world = World({"a": 0, "b": 50, "c": 500})
    shard = Shard(2, 0, idle_seconds=600, poll_seconds=10)
    got = wait_for_others(
        shard, "describe", ["a", "b", "c"], world.fetch, world.compute, lambda: world.now, world.sleep
    )
    assert got == {"a": "va", "b": "vb", "c": "vc"} and world.computed == []


def test_computes_the_rest_when_others_stall():
    world = World({"a": 0, "b": 50})  # c never arrives: its shard never started
    shard = Shard(2, 0, idle_seconds=100, poll_seconds=10)
    got = wait_for_others(
        shard, "describe", ["a", "b", "c"], world.fetch, world.compute, lambda: world.now, world.sleep
    )
    assert got["c"] == "vc" and world.computed == ["c"]
    assert world.now == pytest.approx(150)  # last progress at 50, then 100 s idle


def _run(tmp_path, index: int, idle: float = 30.0):
    from visa.cache import SQLiteStore
    from visa.data import Dataset
    from visa.method.settings import Settings
    from visa.method.stages import Run

    shard = Shard(2, index, idle_seconds=idle, poll_seconds=0.02)
    return Run(Dataset("d", [], []), Settings(progress=False, shard=shard), SQLiteStore(tmp_path))


def _square(calls: list):
    from visa.cache import batched

    def compute(batch):
        calls.extend(batch)
        return [x * x for x in batch]

    return batched(compute, 3)


def test_two_shards_of_a_shared_stage_each_compute_half_and_both_get_everything(tmp_path):
    import threading

    keys, inputs = [f"k{i}" for i in range(10)], list(range(10))
    calls, out = [[], []], [None, None]

    def shard(i):
        run = _run(tmp_path, i)
        out[i] = run.stage("encode_text", keys, inputs, _square(calls[i]))

    threads = [threading.Thread(target=shard, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert out[0] == out[1] == [x * x for x in inputs]
    assert sorted(calls[0]) == [0, 2, 4, 6, 8] and sorted(calls[1]) == [1, 3, 5, 7, 9]


def test_a_shard_alone_computes_the_rest_after_the_idle_time(tmp_path):
    calls: list = []
    run = _run(tmp_path, 1, idle=0.2)
    assert run.stage("describe", ["a", "b", "c"], [1, 2, 3], _square(calls)) == [1, 4, 9]
    assert calls == [2, 1, 3] and run.runner.stats["describe"].computed == 3
    # a stage split by query is not shared: the caller passes only this shard's inputs
    assert run.stage("answer", ["x"], [5], _square(calls)) == [25]
