"""The gallery store (memory-mapped shards, resumable) and approximate search over it (FAISS)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import requires

from visa.cache.admin import main as cache_main
from visa.cache.gallery import GalleryStore, StoredRows, list_stores
from visa.cache.runner import StageStats
from visa.core.errors import VisaError
from visa.data import Item
from visa.method.gallery import encode_shards, open_store, stored_gallery
from visa.method.retrieval import check_index, ranked_candidates, topk_search
from visa.method.settings import RetrievalSettings
from visa.method.shard import Shard

DIM = 8


class Killed(Exception):
    pass


@dataclass
class CountingBackbone:
    """Deterministic embeddings from each item's id; counts what it encodes; can die after `die_after`."""

    batch_size: int = 4
    encoded: int = 0
    die_after: int | None = None

    def identity(self) -> dict:
        return {"model": "counting", "dim": DIM}

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        return torch.stack([self._row(t) for t in texts])

    def encode_visual(self, items: list[Item]) -> torch.Tensor:
        if self.die_after is not None and self.encoded + len(items) > self.die_after:
            raise Killed
        self.encoded += len(items)
        return torch.stack([self._row(i.id) for i in items])

    @staticmethod
    def _row(text: str) -> torch.Tensor:
        seed = int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)
        v = torch.randn(DIM, generator=torch.Generator().manual_seed(seed))
        return v / v.norm()


def items(tmp_path: Path, n: int) -> list[Item]:
    folder = tmp_path / "media"
    folder.mkdir(exist_ok=True)
    out = []
    for i in range(n):
        path = folder / f"{i}.jpg"
        path.write_bytes(b"x")
        out.append(Item(id=f"img{i}", path=str(path)))
    return out


def test_store_writes_shards_and_reads_them_as_one_array(tmp_path):
    gallery = items(tmp_path, 10)
    backbone = CountingBackbone()
    store = open_store(tmp_path / "cache", backbone, gallery, "float32", shard_size=4)
    assert store.num_shards == 3 and store.missing() == [0, 1, 2]
    stats = StageStats()
    rows = stored_gallery(store, backbone, gallery, stats, progress=False)
    assert (stats.computed, stats.cached) == (10, 0)
    expected = backbone.encode_visual(gallery)
    assert isinstance(rows, StoredRows) and rows.shape == (10, DIM)
    torch.testing.assert_close(rows[0:10], expected)
    torch.testing.assert_close(rows[3:9], expected[3:9])  # across shard boundaries
    torch.testing.assert_close(rows[torch.tensor([9, 0, 4, 4])], expected[[9, 0, 4, 4]])
    assert store.ids() == [i.id for i in gallery]
    # a second run finds everything: nothing encoded
    again = open_store(tmp_path / "cache", backbone, gallery, "float32", shard_size=999)
    assert again.folder == store.folder and again.shard_size == 4  # an existing store keeps its shards
    stats = StageStats()
    stored_gallery(again, backbone, gallery, stats, progress=False)
    assert (stats.computed, stats.cached) == (0, 10)


def test_store_key_follows_model_dtype_and_items(tmp_path):
    gallery = items(tmp_path, 3)
    a = open_store(tmp_path, CountingBackbone(), gallery, "float16", 2)
    assert open_store(tmp_path, CountingBackbone(), gallery, "float32", 2).folder != a.folder
    assert open_store(tmp_path, CountingBackbone(), gallery[:2], "float16", 2).folder != a.folder
    Path(gallery[0].path).write_bytes(b"changed")  # a changed file is a new store, as it is a new cache key
    assert open_store(tmp_path, CountingBackbone(), gallery, "float16", 2).folder != a.folder


def test_a_killed_encoding_resumes_with_the_missing_shards_only(tmp_path):
    gallery = items(tmp_path, 11)
    dying = CountingBackbone(die_after=6)  # dies inside the second shard of 4
    store = open_store(tmp_path / "cache", dying, gallery, "float16", shard_size=4)
    with pytest.raises(Killed):
        stored_gallery(store, dying, gallery, StageStats(), progress=False)
    assert store.missing() == [1, 2]  # the first shard is whole, the second absent (not half-written)
    with pytest.raises(VisaError, match="lacks 2 of 3 shards"):
        store.rows()
    resumed = CountingBackbone()
    stats = StageStats()
    rows = stored_gallery(store, resumed, gallery, stats, progress=False)
    assert resumed.encoded == 7 and (stats.computed, stats.cached) == (7, 4)
    torch.testing.assert_close(rows[0:11], CountingBackbone().encode_visual(gallery), atol=1e-3, rtol=1e-3)
    assert rows.shards[0].dtype == np.float16 and not list(store.folder.rglob("*.part"))


def test_run_shards_split_the_store_and_make_up_for_a_dead_one(tmp_path):
    gallery = items(tmp_path, 10)
    store = open_store(tmp_path / "cache", CountingBackbone(), gallery, "float32", shard_size=2)
    # shard 1 of 2 runs alone: it encodes its own store shards (1, 3), waits, then the others' (0, 2, 4)
    backbone = CountingBackbone()
    stats = StageStats()
    shard = Shard(count=2, index=1, idle_seconds=0.0, poll_seconds=0.0)
    stored_gallery(store, backbone, gallery, stats, shard=shard, progress=False)
    assert backbone.encoded == 10 and store.complete()
    # a finished store: another run shard encodes nothing
    other = CountingBackbone()
    stored_gallery(store, other, gallery, StageStats(), shard=Shard(count=2, index=0), progress=False)
    assert other.encoded == 0


def test_encode_shards_only_the_shards_given(tmp_path):
    gallery = items(tmp_path, 9)
    backbone = CountingBackbone()
    store = open_store(tmp_path / "cache", backbone, gallery, "float32", shard_size=3)
    assert encode_shards(store, backbone, gallery, [2], progress=False) == 3
    assert store.missing() == [0, 1]
    assert encode_shards(store, backbone, gallery, [2, 0], progress=False) == 3  # 2 is done already


def test_bad_store_settings_are_one_line(tmp_path):
    with pytest.raises(VisaError, match="retrieval.gallery_store='sometimes'"):
        RetrievalSettings(gallery_store="sometimes")
    with pytest.raises(VisaError, match="retrieval.gallery_dtype='int8'"):
        RetrievalSettings(gallery_dtype="int8")
    with pytest.raises(VisaError, match="retrieval.nprobe=0"):
        RetrievalSettings(nprobe=0)
    assert not RetrievalSettings().uses_store(25_000)  # today's path for today's galleries
    assert RetrievalSettings().uses_store(5_000_000)
    assert RetrievalSettings(gallery_store="on").uses_store(3)
    assert not RetrievalSettings(gallery_store="off").uses_store(5_000_000)


def test_cache_show_and_prune_list_the_stores(tmp_path, capsys):
    gallery = items(tmp_path, 5)
    cache = tmp_path / "cache"
    store = open_store(cache, CountingBackbone(), gallery, "float16", shard_size=2)
    encode_shards(store, CountingBackbone(), gallery, [0], progress=False)
    assert cache_main(["show", str(cache)]) == 0
    out = capsys.readouterr().out
    assert "gallery stores in gallery/: 1" in out and "counting" in out and "1/3 (partial)" in out
    assert cache_main(["prune", str(cache), "--model", "someone-else"]) == 0
    assert len(list_stores(cache)) == 1
    assert cache_main(["prune", str(cache), "--store", store.folder.name[:8]]) == 0
    assert "1 gallery store(s) removed" in capsys.readouterr().out
    assert list_stores(cache) == []


# -- search over a stored gallery ----------------------------------------------------------------------------
def clustered(n: int, dim: int, clusters: int, seed: int = 0) -> np.ndarray:
    """Unit vectors around `clusters` random centres (random but clustered, like real embeddings)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    x = centres[rng.integers(0, clusters, n)] + 0.35 * rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def stored(tmp_path: Path, array: np.ndarray, shard_size: int, dtype: str = "float32") -> GalleryStore:
    ids = [str(i) for i in range(len(array))]
    store = GalleryStore.open(tmp_path, {"model": "synthetic"}, ids, ids, dtype, shard_size)
    for n in range(store.num_shards):
        store.write_shard(n, array[store.shard_rows(n).start : store.shard_rows(n).stop])
    return store


@pytest.mark.parametrize("index", ["torch", "faiss"])
def test_exact_search_over_the_store_equals_the_tensor(tmp_path, index):
    if index == "faiss":
        requires("faiss", "faiss")
    gallery = clustered(500, 16, 10)
    queries = torch.from_numpy(clustered(7, 16, 10, seed=1))
    rows = stored(tmp_path, gallery, shard_size=64).rows()
    bias = torch.linspace(-0.1, 0.1, 500)
    gate = torch.tensor([True, False, True, True, False, True, True])
    for b, g in ((None, None), (bias, gate)):
        s1, i1 = topk_search(
            queries, torch.from_numpy(gallery), 10, 3, gallery_chunk_size=50, bias=b, bias_rows=g
        )
        s2, i2 = topk_search(queries, rows, 10, 3, gallery_chunk_size=5, index=index, bias=b, bias_rows=g)
        assert torch.equal(i1, i2)
        torch.testing.assert_close(s1, s2, atol=1e-5, rtol=1e-5)


def test_unknown_approximate_index_is_one_line():
    with pytest.raises(VisaError, match="retrieval.index='annoy' is not one of torch, faiss, hnsw"):
        check_index("annoy")
    with pytest.raises(VisaError, match="needs a FAISS index_factory string"):
        check_index("faiss:")


# Approximate recall bound of the test (2 x 10^4 clustered 32-d items, the default search settings).
RECALL_BOUND = {"hnsw": 90.0, "ivf_flat": 90.0, "ivf_pq": 40.0}


@pytest.mark.parametrize("index", ["hnsw", "ivf_flat", "ivf_pq"])
def test_approximate_recall_against_exact_and_the_index_is_kept(tmp_path, index):
    requires("faiss", "faiss")
    from visa.method.ann import ann_recall, build_index, index_path

    gallery = clustered(20_000, 32, 200)
    queries = torch.from_numpy(clustered(50, 32, 200, seed=7))
    store = stored(tmp_path, gallery, shard_size=4096)
    rows = store.rows()
    settings = RetrievalSettings(index=index, nprobe=16, train_size=10_000)
    ann, metrics = build_index(index, settings, rows, folder=store.folder, progress=False)
    assert metrics["retrieval/index_build_s"] >= 0 and metrics["retrieval/index_bytes"] > 0
    recall = ann_recall(ann, queries, rows, 20, sample=50)
    assert recall["retrieval/ann_recall_queries"] == 50
    assert recall["retrieval/ann_recall@20"] >= RECALL_BOUND[index], recall
    # the next run reads the index written beside the store
    again, metrics2 = build_index(index, settings, rows, folder=store.folder, progress=False)
    assert "retrieval/index_load_s" in metrics2 and "retrieval/index_build_s" not in metrics2
    assert list(store.folder.glob("index-*.faiss")) == [index_path(store.folder, index, settings, 20_000, 32)]
    s1, i1 = ann.search(queries, 5)
    s2, i2 = again.search(queries, 5)
    assert torch.equal(i1, i2)


@pytest.mark.parametrize("spec", ["faiss:Flat", "hnsw", "faiss:HNSW8,SQ8"])
def test_a_flat_storage_is_reserved_before_adding_block_by_block(tmp_path, monkeypatch, spec):
    """The flat vector storage is allocated for every item before the blocks are added (its buffer does
    not double as it grows), and the blocks land where they belong: exact Flat equals exact search."""
    requires("faiss", "faiss")
    import faiss

    from visa.method import ann

    index = faiss.index_factory(16, "HNSW8,Flat", faiss.METRIC_INNER_PRODUCT)
    ann.reserve(index, 1000)
    storage = faiss.downcast_index(index.storage)
    assert storage.ntotal == 0 and storage.codes.size() == 0  # reserved, empty
    ivf = faiss.index_factory(16, "IVF4,Flat", faiss.METRIC_INNER_PRODUCT)
    ann.reserve(ivf, 1000)  # nothing to reserve
    assert ivf.ntotal == 0

    monkeypatch.setattr(ann, "ADD_BLOCK", 128)  # 8 blocks, the last one short
    gallery = clustered(1000, 16, 20)
    queries = torch.from_numpy(clustered(10, 16, 20, seed=5))
    rows = stored(tmp_path, gallery, shard_size=300, dtype="float16").rows()
    built, metrics = ann.build_index(spec, RetrievalSettings(index=spec), rows, progress=False)
    assert built.index.ntotal == 1000
    assert metrics["retrieval/index_bytes"] == faiss.serialize_index(built.index).size  # counted, not copied
    _, exact = topk_search(queries, rows, 5, index="faiss")
    _, approx = built.search(queries, 5)
    if spec == "faiss:Flat":
        assert torch.equal(approx, exact)
    else:
        assert (approx[:, 0] == exact[:, 0]).float().mean() >= 0.9


def test_the_bias_rides_in_the_index(tmp_path):
    """IVF-Flat probing every list is exact: with a bias and a gate it equals the exact biased search."""
    requires("faiss", "faiss")
    from visa.method.ann import build_index

    gallery = clustered(3000, 16, 30)
    queries = torch.from_numpy(clustered(9, 16, 30, seed=3))
    bias = torch.from_numpy(np.random.default_rng(1).uniform(-0.3, 0.3, 3000).astype(np.float32))
    gate = torch.tensor([True, False] * 4 + [True])
    rows = stored(tmp_path, gallery, 1000).rows()
    settings = RetrievalSettings(index="ivf_flat", nlist=8, nprobe=8)
    ann, _ = build_index("ivf_flat", settings, rows, bias=bias, progress=False)
    search = {"index": "ivf_flat", "approximate": ann, "bias": bias, "bias_rows": gate}
    _, approx = ranked_candidates(queries, rows, 10, **search)
    _, exact = ranked_candidates(queries, rows, 10, bias=bias, bias_rows=gate)
    assert torch.equal(approx, exact)
    # without the bias (QB-Norm's first search): the unbiased exact ranking
    _, approx = ranked_candidates(queries, rows, 10, index="ivf_flat", approximate=ann)
    _, exact = ranked_candidates(queries, rows, 10)
    assert torch.equal(approx, exact)


def test_approximate_index_refuses_gallery_groups(tmp_path):
    requires("faiss", "faiss")
    from visa.method.ann import build_index

    gallery = torch.from_numpy(clustered(200, 16, 4))
    ann, _ = build_index("hnsw", RetrievalSettings(index="hnsw"), gallery, progress=False)
    with pytest.raises(VisaError, match="groups"):
        ranked_candidates(
            gallery[:2],
            gallery,
            3,
            groups={"a": [0, 1]},
            query_groups=["a", "a"],
            index="hnsw",
            approximate=ann,
        )


def test_one_process_builds_the_index_the_others_wait(tmp_path, monkeypatch):
    """Run shards reaching the index together: one holds the build lock, the others wait and read the file;
    a lock whose builder died (untouched for STALE_SECONDS) is taken over."""
    requires("faiss", "faiss")
    import os
    import threading
    import time

    from visa.method import ann

    monkeypatch.setattr(ann, "POLL_SECONDS", 0.05)
    gallery = clustered(500, 16, 5)
    store = stored(tmp_path, gallery, shard_size=200)
    rows = store.rows()
    settings = RetrievalSettings(index="hnsw")
    # the file the index will have, and a live lock on it held by "another process"
    built, _ = ann.build_index("hnsw", settings, rows, folder=tmp_path / "elsewhere", progress=False)
    name = next((tmp_path / "elsewhere").glob("index-*.faiss")).name
    target = store.folder / name
    ann.build_lock(target).write_text("other-host 1")

    def other_process_finishes():
        time.sleep(0.3)
        (tmp_path / "elsewhere" / name).replace(target)
        ann.build_lock(target).unlink()

    threading.Thread(target=other_process_finishes).start()
    _, metrics = ann.build_index("hnsw", settings, rows, folder=store.folder, progress=False)
    assert "retrieval/index_load_s" in metrics and "retrieval/index_build_s" not in metrics
    # a stale lock (its builder died): built here, and the lock is released
    target.unlink()
    ann.build_lock(target).write_text("dead-host 1")
    old = time.time() - ann.STALE_SECONDS - 5
    os.utime(ann.build_lock(target), (old, old))
    _, metrics = ann.build_index("hnsw", settings, rows, folder=store.folder, progress=False)
    assert "retrieval/index_build_s" in metrics and target.is_file() and not ann.build_lock(target).exists()
