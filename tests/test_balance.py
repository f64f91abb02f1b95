"""ServerPool: least outstanding requests, failover with back-off, recovery."""

from __future__ import annotations

import pytest

from visa.core.errors import VisaError
from visa.generation.balance import ServerPool


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_least_outstanding_requests():
    pool = ServerPool(["a", "b", "c"], clock=Clock())
    first = [pool.acquire() for _ in range(3)]
    assert sorted(first) == ["a", "b", "c"]  # one each before any gets a second
    pool.release("b", ok=True)
    assert pool.acquire() == "b"  # the only one with nothing in flight
    pool.release("a", ok=True)
    pool.release("c", ok=True)
    # a and c have 0 in flight, b has 1: the next two go to a and c
    assert sorted([pool.acquire(), pool.acquire()]) == ["a", "c"]


def test_failed_server_is_out_for_its_backoff_then_tried_again():
    clock = Clock()
    pool = ServerPool(["a", "b"], backoff=10, clock=clock)
    assert pool.acquire() == "a"
    pool.release("a", ok=False)
    assert [pool.acquire() for _ in range(4)] == ["b"] * 4  # a is out
    clock.now += 10
    assert pool.acquire() == "a"  # back in: fewest in flight
    pool.release("a", ok=False)  # fails again: out twice as long
    clock.now += 15
    assert "a" not in {s.url for s in pool.up()}
    clock.now += 5
    assert pool.acquire() == "a"
    pool.release("a", ok=True)
    assert pool.servers["a"].failed_in_row == 0


def test_all_down_means_no_server_and_a_wait():
    clock = Clock()
    pool = ServerPool(["a", "b"], backoff=4, clock=clock)
    for url in ("a", "b"):
        assert pool.acquire() == url
        pool.release(url, ok=False)
        clock.now += 1
    assert pool.acquire() is None
    assert pool.wait_seconds() == pytest.approx(2.0)  # a (out at 100 for 4 s) comes back first


def test_counts_and_bad_lists():
    pool = ServerPool(["a", "b"], clock=Clock())
    url = pool.acquire()
    pool.release(url, ok=True)
    assert pool.counts() == {"a": 1, "b": 0}
    with pytest.raises(VisaError, match="empty list"):
        ServerPool([])
    with pytest.raises(VisaError, match="twice"):
        ServerPool(["a", "a"])
