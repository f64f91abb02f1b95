"""Gallery store encoding over a cluster: submitit's local executor (the SLURM code path: one job array) and
Ray tasks on a local Ray cluster, each with one worker killed mid-way; the store still ends complete, the
dead worker's shards redone and the finished ones not."""

from __future__ import annotations

import os

import pytest
import torch
from conftest import REPO, requires
from helpers.gallery_backbone import MarkedBackbone, row

from visa.cache.runner import StageStats
from visa.core.errors import VisaError
from visa.data import Item
from visa.method.cluster_encode import encode_on_cluster
from visa.method.gallery import open_store, stored_gallery


def gallery(tmp_path, n: int) -> list[Item]:
    folder = tmp_path / "media"
    folder.mkdir()
    out = []
    for i in range(n):
        (folder / f"{i}.jpg").write_bytes(b"x")
        out.append(Item(id=f"img{i}", path=str(folder / f"{i}.jpg")))
    return out


@pytest.fixture
def worker_path(monkeypatch):
    """The workers import the test backbone from tests/helpers."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO), str(REPO / "tests")]))


def check_complete(store, items, encoded):
    assert store.complete() and encoded == len(items)
    stats = StageStats()
    rows = stored_gallery(store, MarkedBackbone(), items, stats, progress=False)
    assert (stats.computed, stats.cached) == (0, len(items))
    torch.testing.assert_close(
        rows[0 : len(items)], torch.stack([row(i.id) for i in items]), atol=1e-3, rtol=1e-3
    )


@pytest.mark.parametrize("launcher", ["local", "ray"])
def test_cluster_workers_fill_the_store_though_one_dies(tmp_path, worker_path, launcher):
    requires("submitit" if launcher == "local" else "ray", launcher)
    items = gallery(tmp_path, 24)
    marker = tmp_path / "die-once"
    marker.write_text("")
    backbone = MarkedBackbone(die_marker=str(marker), die_after=4)  # dies in its 2nd shard
    store = open_store(tmp_path / "cache", backbone, items, "float32", shard_size=3)  # 8 shards
    options = {"timeout_min": 5} if launcher == "local" else {"address": "local", "num_cpus": 1}
    if launcher == "ray":
        import ray

        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        encoded = encode_on_cluster(store, backbone, items, launcher, workers=2, options=options, rounds=2)
    finally:
        if launcher == "ray":
            ray.shutdown()
    assert not marker.exists()  # one worker died ...
    check_complete(store, items, encoded)  # ... and its shards were dealt out again


def test_unknown_launcher_is_one_line(tmp_path):
    items = gallery(tmp_path, 2)
    store = open_store(tmp_path / "cache", MarkedBackbone(), items, "float32", 1)
    with pytest.raises(VisaError, match="retrieval.gallery_launcher='mpi'"):
        encode_on_cluster(store, MarkedBackbone(), items, "mpi", 2)
