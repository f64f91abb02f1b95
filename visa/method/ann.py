"""Approximate top-K search through FAISS (`retrieval.index=hnsw|ivf_flat|ivf_pq|faiss:<factory string>`).

The index is built once from the gallery's embeddings (a gallery store's memory-mapped shards, read block
by block, or the embeddings in memory) and, for a gallery store, written beside it
(`gallery/<store>/index-<key>.faiss`) and read back by the next run; its key covers the index settings
that change what is built (the factory string, `hnsw_m`, `train_size`) and the normaliser's bias, if any.
The search settings (`nprobe`, `ef_search`) are applied at search time, so changing them rebuilds nothing.
Processes that reach an unbuilt index together (the shards of a sharded run) build it once: the first takes
an exclusive lock file beside it, the others wait for the index file (a lock its builder stopped touching
for STALE_SECONDS is taken over).

All indexes use the inner product. A normaliser's per-item bias (NNN, QB-Norm) is carried as one more
dimension: the items get their bias there, a query 1 when the bias applies to it and 0 when it does not
(QB-Norm's gate, and the gate's own unbiased first search), so the approximate scores are those of the
exact search. The vectors are padded with zeros to a multiple of 8 dimensions (IVF-PQ's sub-quantisers
need the dimension to divide; zeros change no inner product).

What the approximation costs is measured and reported in metrics.json: `retrieval/index_build_s` (or
`retrieval/index_load_s`), `retrieval/index_search_s`, `retrieval/index_bytes`, and
`retrieval/ann_recall@K`: the share of the exact top-K (depth K of the run) found in the approximate top-K,
averaged over `retrieval.ann_recall_queries` queries spread evenly over the run's queries.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import socket
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from visa.cache.gallery import StoredRows
from visa.core.errors import VisaError
from visa.method.retrieval import _import_faiss, is_approximate, topk_search

log = logging.getLogger("visa.method.ann")

ADD_BLOCK = 65536  # items added to the index per call


def factory_string(index: str, dim: int, count: int, nlist: int = 0, pq_m: int = 0, hnsw_m: int = 32) -> str:
    """The FAISS index_factory string of `retrieval.index` for `count` vectors of `dim` dimensions."""
    if index.startswith("faiss:"):
        return index[len("faiss:") :]
    lists = nlist or max(1, min(int(4 * math.sqrt(count)), count // 39 or 1))
    if index == "hnsw":
        return f"HNSW{hnsw_m},Flat"
    if index == "ivf_flat":
        return f"IVF{lists},Flat"
    if index == "ivf_pq":
        m = pq_m or max(1, dim // 8)
        if dim % m:
            raise VisaError(
                f"retrieval.pq_m={m} must divide the index's dimension {dim} (the embedding, plus one for a "
                "normaliser's bias, padded to a multiple of 8); choose e.g. retrieval.pq_m=0 (dimension / 8)"
            )
        return f"IVF{lists},PQ{m}"
    raise VisaError(f"retrieval.index={index!r} is not an approximate index")


def _padded(dim: int) -> int:
    return (dim + 7) // 8 * 8


class ApproximateIndex:
    """A built FAISS index over [items, dim (+1 for a bias)] padded vectors."""

    def __init__(self, index: Any, dim: int, with_bias: bool, settings: Any):
        self.index, self.dim, self.with_bias = index, dim, with_bias
        self.width = _padded(dim + int(with_bias))
        self.nprobe, self.ef_search = settings.nprobe, settings.ef_search
        self.search_seconds = 0.0

    def vectors(self, rows: np.ndarray | torch.Tensor, bias: torch.Tensor | None) -> np.ndarray:
        """Rows as the index's float32 vectors: the bias (or 0) in the extra column, zero padding."""
        rows = rows.detach().cpu().numpy() if isinstance(rows, torch.Tensor) else rows
        out = np.zeros((rows.shape[0], self.width), dtype=np.float32)
        out[:, : self.dim] = rows
        if bias is not None:
            out[:, self.dim] = bias.float().numpy()
        return out

    def _set_search_parameters(self) -> None:
        faiss = _import_faiss()
        space = faiss.ParameterSpace()
        for name, value in (("nprobe", self.nprobe), ("efSearch", self.ef_search)):
            try:
                space.set_index_parameter(self.index, name, value)
            except RuntimeError:  # the index has no such parameter (HNSW has no nprobe, ...)
                pass

    def search(
        self, queries: torch.Tensor, k: int, gate: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(scores, item indices) [queries, k], best first; `gate` [queries]: 1 where the bias applies (None:
        nowhere). A query for which the index finds fewer than k items (an IVF search whose probed lists hold
        fewer) gets them from an exact search, so every row has k real items."""
        self._set_search_parameters()
        q = self.vectors(queries.float(), None)
        if self.with_bias and gate is not None:
            q[:, self.dim] = gate.float().numpy()
        t0 = time.perf_counter()
        scores, indices = self.index.search(q, k)
        self.search_seconds += time.perf_counter() - t0
        short = np.flatnonzero((indices < 0).any(axis=1))
        if short.size:
            log.warning(
                "%d queries got fewer than %d items from the approximate index (raise retrieval.nprobe); "
                "searched exactly for them",
                short.size,
                k,
            )
            exact_s, exact_i = self._every_list(q[short], k)
            scores[short], indices[short] = exact_s, exact_i
        return torch.from_numpy(scores.astype(np.float32)), torch.from_numpy(indices.astype(np.int64))

    def _every_list(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """An IVF index's search with every list probed (all items are candidates)."""
        faiss = _import_faiss()
        try:
            ivf = faiss.extract_index_ivf(self.index)
            saved = ivf.nprobe
            ivf.nprobe = ivf.nlist
            try:
                return self.index.search(q, k)
            finally:
                ivf.nprobe = saved
        except RuntimeError:
            return self.index.search(q, k)


def index_key(factory: str, width: int, count: int, bias: torch.Tensor | None, settings: Any) -> str:
    blob: dict[str, Any] = {"factory": factory, "width": width, "count": count, "train": settings.train_size}
    if bias is not None:
        blob["bias"] = hashlib.sha256(bias.float().numpy().tobytes()).hexdigest()
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:16]


def index_path(
    folder: Path | str, spec: str, settings: Any, count: int, dim: int, bias: torch.Tensor | None = None
) -> Path:
    """Where `build_index` keeps the index `spec` of `count` x `dim` embeddings (+ `bias`) in `folder`."""
    width = _padded(dim + int(bias is not None))
    factory = factory_string(spec, width, count, settings.nlist, settings.pq_m, settings.hnsw_m)
    return Path(folder) / f"index-{index_key(factory, width, count, bias, settings)}.faiss"


def build_index(
    spec: str,
    settings: Any,
    gallery: torch.Tensor | StoredRows,
    bias: torch.Tensor | None = None,
    folder: Path | None = None,
    progress: bool = True,
) -> tuple[ApproximateIndex, dict[str, Any]]:
    """The approximate index `spec` over `gallery` (+ `bias`): read from `folder` (a gallery store) when
    built before, else built (and written there); with the metrics that say what it cost."""
    _import_faiss()  # a clear error when FAISS is missing
    if not is_approximate(spec):
        raise VisaError(f"retrieval.index={spec!r} is not an approximate index")
    count, dim = int(gallery.shape[0]), int(gallery.shape[1])
    width = _padded(dim + int(bias is not None))
    factory = factory_string(spec, width, count, settings.nlist, settings.pq_m, settings.hnsw_m)
    path = None if folder is None else index_path(folder, spec, settings, count, dim, bias)
    shell = ApproximateIndex(None, dim, bias is not None, settings)
    metrics: dict[str, Any] = {"retrieval/index": spec, "retrieval/index_factory": factory}
    t0 = time.perf_counter()
    owner = False  # this process holds the build lock (several run shards reaching the index at once)
    if path is not None and not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        owner = claim_build(path) or await_build(path)
    try:
        _load_or_build(shell, spec, factory, settings, gallery, bias, path, owner, progress, metrics, t0)
    finally:
        if owner and path is not None:
            build_lock(path).unlink(missing_ok=True)
    metrics["retrieval/index_bytes"] = (
        path.stat().st_size if path is not None else _serialized_bytes(shell.index)
    )
    return shell, metrics


# A build lock untouched this long belongs to a process that died (the builder touches it as it adds).
STALE_SECONDS = 600.0
POLL_SECONDS = 2.0


def build_lock(path: Path) -> Path:
    return path.with_name(path.name + ".building")


def claim_build(path: Path) -> bool:
    """Take the build lock of the index file `path` (created exclusively); False when another process holds
    it and has touched it within STALE_SECONDS."""
    lock = build_lock(path)
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        try:
            age = time.time() - lock.stat().st_mtime
        except FileNotFoundError:
            return claim_build(path)
        if age <= STALE_SECONDS:
            return False
        log.warning("%s: a build lock %.0f s old (its process died); building here", path.name, age)
        lock.unlink(missing_ok=True)
        return claim_build(path)
    os.write(fd, f"{socket.gethostname()} {os.getpid()}".encode())
    os.close(fd)
    return True


def await_build(path: Path) -> bool:
    """Wait while another process builds the index; True when the lock came to this process instead (its
    builder died), False when the index is there to read."""
    log.info("%s: another process is building this index; waiting for it", path.name)
    while not path.is_file():
        if claim_build(path):
            return True
        time.sleep(POLL_SECONDS)
    return False


def _load_or_build(
    shell: ApproximateIndex,
    spec: str,
    factory: str,
    settings: Any,
    gallery: torch.Tensor | StoredRows,
    bias: torch.Tensor | None,
    path: Path | None,
    owner: bool,
    progress: bool,
    metrics: dict[str, Any],
    t0: float,
) -> None:
    faiss = _import_faiss()
    count, width = int(gallery.shape[0]), shell.width
    if path is not None and path.is_file():
        shell.index = faiss.read_index(str(path))
        if shell.index.ntotal != count or shell.index.d != width:
            raise VisaError(
                f"{path} holds {shell.index.ntotal} x {shell.index.d}, not {count} x {width}; remove it"
            )
        metrics["retrieval/index_load_s"] = round(time.perf_counter() - t0, 3)
        log.info("approximate index %s read from %s", factory, path)
    else:
        try:
            shell.index = faiss.index_factory(width, factory, faiss.METRIC_INNER_PRODUCT)
        except RuntimeError as e:
            raise VisaError(
                f"retrieval.index={spec}: FAISS cannot build {factory!r}: {str(e).strip()[:200]}"
            ) from e
        _train(shell, gallery, bias, settings.train_size)
        reserve(shell.index, count)
        with tqdm(
            total=count, desc=f"index {factory}", unit="item", disable=not progress, dynamic_ncols=True
        ) as bar:
            for start in range(0, count, ADD_BLOCK):
                rows = _rows(gallery, start, start + ADD_BLOCK)
                part = None if bias is None else bias[start : start + len(rows)]
                shell.index.add(shell.vectors(rows, part))
                bar.update(len(rows))
                if owner and path is not None:  # alive: the lock is not stale
                    os.utime(build_lock(path))
        metrics["retrieval/index_build_s"] = round(time.perf_counter() - t0, 3)
        if path is not None:
            partial = path.with_name(f"{path.name}.{os.getpid()}.part")
            faiss.write_index(shell.index, str(partial))
            os.replace(partial, path)


def reserve(index: Any, count: int) -> None:
    """Allocate an empty index's flat vector storage (a Flat index's, HNSW's) for `count` items at once.
    Added to block by block, the storage's buffer doubles as it grows and holds the old and the new buffer
    while it copies: 1.8x the final size at its peak (16 GB for the 10 GB of 5,000,000 x 512 float32) where
    this reservation keeps it at the final size. IVF indexes keep one buffer per list and need nothing."""
    faiss = _import_faiss()
    storage = getattr(index, "storage", None)  # an HNSW index's vectors
    flat = faiss.downcast_index(storage if storage is not None else index)
    if isinstance(flat, faiss.IndexFlatCodes) and flat.ntotal == 0:
        flat.codes.resize(count * flat.code_size)  # an empty vector grows to exactly this capacity
        flat.codes.resize(0)  # and keeps it: the adds fill it without reallocating


def _rows(gallery: torch.Tensor | StoredRows, start: int, stop: int) -> np.ndarray:
    if isinstance(gallery, StoredRows):
        return np.asarray(gallery.block(start, stop), dtype=np.float32)
    return gallery[start:stop].float().numpy()


def _train(shell: ApproximateIndex, gallery: Any, bias: torch.Tensor | None, train_size: int) -> None:
    if shell.index.is_trained:
        return
    count = int(gallery.shape[0])
    rng = np.random.default_rng(0)
    sample = np.sort(rng.choice(count, size=min(count, train_size), replace=False))
    if isinstance(gallery, StoredRows):
        rows = np.asarray(gallery.take(sample), dtype=np.float32)
    else:
        rows = gallery[torch.from_numpy(sample)].float().numpy()
    shell.index.train(shell.vectors(rows, None if bias is None else bias[torch.from_numpy(sample)]))


def _serialized_bytes(index: Any) -> int:
    """The index's size as a file, counted as it is written out in chunks (serialize_index would hold a
    growing copy of it and then a second one: 3x a 10 GB index at its peak)."""
    faiss = _import_faiss()
    size = 0

    def count(chunk: bytes) -> int:
        nonlocal size
        size += len(chunk)
        return len(chunk)

    faiss.write_index(index, faiss.PyCallbackIOWriter(count))
    return size


def ann_recall(
    approximate: ApproximateIndex,
    queries: torch.Tensor,
    gallery: torch.Tensor | StoredRows,
    k: int,
    sample: int,
    bias: torch.Tensor | None = None,
    bias_rows: torch.Tensor | None = None,
    gallery_chunk_size: int = 16384,
) -> dict[str, Any]:
    """`retrieval/ann_recall@k`: the share of each sampled query's exact top-k among its approximate top-k,
    in percent, over `sample` queries spread evenly over `queries` (exact: FAISS's flat search, blocked)."""
    n = queries.shape[0]
    rows = np.unique(np.linspace(0, n - 1, num=min(sample, n)).round().astype(np.int64))
    q = queries[torch.from_numpy(rows)]
    gate = None if bias_rows is None else bias_rows[torch.from_numpy(rows)]
    k = min(k, int(gallery.shape[0]))
    saved = approximate.search_seconds
    _, approx = topk_search(q, gallery, k, approximate=approximate, bias=bias, bias_rows=gate)
    approximate.search_seconds = saved  # the check is not the run's search
    _, exact = topk_search(
        q, gallery, k, index="faiss", gallery_chunk_size=gallery_chunk_size, bias=bias, bias_rows=gate
    )
    found = [len(set(a.tolist()) & set(e.tolist())) / max(len(e), 1) for a, e in zip(approx, exact)]
    return {
        f"retrieval/ann_recall@{k}": round(100.0 * sum(found) / len(found), 3),
        "retrieval/ann_recall_queries": len(found),
    }
