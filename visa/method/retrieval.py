"""Top-K search without the full query x gallery score matrix.

Two exact engines, chosen by `retrieval.index`:

- `torch` (default): queries and gallery are scored block by block (`chunk_size` queries x
  `gallery_chunk_size` items), each block's top-k merged into a running top-k. It runs on the tensors'
  device or on `device` (a GPU: the gallery goes over block by block, so a gallery larger than the GPU's
  memory works too).
- `faiss`: FAISS's exact inner-product search (`faiss.knn`, the routine `IndexFlatIP.search` runs, called
  on the gallery array in place so the gallery is not copied into an index). Faster per core than the
  torch blocks on a CPU; an optional extra (`pip install visa-retrieval[faiss]`).

Both return the same candidates (exact search); scores agree to float rounding. Either reads a gallery
that is a tensor or a gallery store's memory-mapped rows (`visa.cache.gallery.StoredRows`), block by block.

Approximate indexes (`hnsw`, `ivf_flat`, `ivf_pq`, `faiss:<factory string>`) are built and searched by
`visa.method.ann`; `topk_search` hands the search to the built index it is given (`approximate=`).

A normaliser's per-item bias (`visa.method.normalizers`) is added to each block's scores before its top-k
is taken (`bias`, only for the queries that `bias_rows` marks, when given); FAISS gets it as one more
dimension (1 on the query side, the bias on the item side). `rank_given_candidates` ranks the candidates
that a dataset provides (INQUIRE-Rerank) instead of searching the gallery.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from visa.cache.gallery import StoredRows
from visa.core.devices import resolve_device
from visa.core.errors import VisaError

INDEXES = ("torch", "faiss")
APPROXIMATE = ("hnsw", "ivf_flat", "ivf_pq")  # and faiss:<index_factory string>


def is_approximate(index: str) -> bool:
    return index in APPROXIMATE or index.startswith("faiss:")


def check_index(index: str) -> None:
    """At start-up: the index is known and, for faiss and the approximate ones, FAISS is installed."""
    if index not in INDEXES and not is_approximate(index):
        raise VisaError(
            f"retrieval.index={index!r} is not one of {', '.join(INDEXES + APPROXIMATE)} or "
            "faiss:<FAISS index_factory string>"
        )
    if index == "faiss:":
        raise VisaError("retrieval.index=faiss: needs a FAISS index_factory string, e.g. faiss:IVF1024,Flat")
    if index != "torch":
        _import_faiss()


def _import_faiss():
    try:
        import faiss
    except ImportError as e:
        raise VisaError(
            "retrieval.index=faiss and the approximate indexes need FAISS: pip install "
            "'visa-retrieval[faiss]' (faiss-cpu), or use retrieval.index=torch"
        ) from e
    return faiss


@torch.no_grad()
def topk_search(
    queries: torch.Tensor,
    gallery: torch.Tensor | StoredRows,
    k: int,
    chunk_size: int = 1024,
    *,
    gallery_chunk_size: int = 16384,
    index: str = "torch",
    device: str = "cpu",
    bias: torch.Tensor | None = None,
    bias_rows: torch.Tensor | None = None,
    approximate: Any = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(scores, indices) on the CPU, each [num_queries, min(k, num_gallery)], best first, by dot product
    plus `bias[item]` ([num_gallery]) when given, for the queries where `bias_rows` ([num_queries], bool)
    is True (None: every query).

    torch: peak extra memory is one [chunk_size x gallery_chunk_size] block plus the running top-k.
    faiss: FAISS blocks the search itself; extra memory is a float32 copy of the inputs if they are not
    float32 already (with a bias: always, one column wider), plus the [num_queries x k] result; a stored
    gallery is searched one block of 4 x gallery_chunk_size items at a time.
    approximate: a built `visa.method.ann.ApproximateIndex` (it carries the bias it was built with; the
    queries that `bias_rows` leaves out search without it).
    """
    check_index(index)
    if chunk_size < 1 or gallery_chunk_size < 1:
        raise VisaError(
            f"retrieval.chunk_size={chunk_size} and retrieval.gallery_chunk_size={gallery_chunk_size} "
            "must be at least 1"
        )
    k = min(k, gallery.shape[0])
    if approximate is not None:
        rows_biased = (
            None if bias is None else (torch.ones(queries.shape[0]) if bias_rows is None else bias_rows)
        )
        return approximate.search(queries, k, rows_biased)
    if bias is not None and bias_rows is not None and not bool(bias_rows.any()):
        bias = None  # the bias applies to no query
    if index == "faiss":
        if isinstance(gallery, StoredRows):
            return _faiss_blocks(queries, gallery, k, 4 * gallery_chunk_size, bias, bias_rows)
        if bias is not None:
            rows = torch.ones(queries.shape[0]) if bias_rows is None else bias_rows.float()
            queries = torch.cat([queries.float(), rows[:, None]], dim=1)
            gallery = torch.cat([gallery.float(), bias.float()[:, None]], dim=1)
        return _faiss_topk(queries, gallery, k)
    target = resolve_device(device)
    if bias is not None:
        bias = bias.float().to(target)
    all_scores, all_indices = [], []
    for q_start in range(0, queries.shape[0], chunk_size):
        q = queries[q_start : q_start + chunk_size].to(target)
        gate: torch.Tensor | None = None
        if bias_rows is not None:
            gate = bias_rows[q_start : q_start + chunk_size].to(target)[:, None]
        best_scores = torch.full((q.shape[0], 0), float("-inf"), dtype=torch.float32, device=target)
        best_indices = torch.zeros((q.shape[0], 0), dtype=torch.long, device=target)
        for g_start in range(0, gallery.shape[0], gallery_chunk_size):
            block_items = gallery[g_start : g_start + gallery_chunk_size].to(target, non_blocking=True)
            if block_items.dtype != q.dtype:  # a stored gallery reads as float32
                q, block_items = q.float(), block_items.float()
            block = (q @ block_items.T).float()
            if bias is not None:  # the block is this loop's own tensor: add in place
                part = bias[g_start : g_start + block.shape[1]]
                block.add_(part if gate is None else gate * part)
            s, i = block.topk(min(k, block.shape[1]), dim=1)
            merged_scores = torch.cat([best_scores, s], dim=1)
            merged_indices = torch.cat([best_indices, i + g_start], dim=1)
            best_scores, order = merged_scores.topk(min(k, merged_scores.shape[1]), dim=1)
            best_indices = merged_indices.gather(1, order)
        all_scores.append(best_scores.cpu())
        all_indices.append(best_indices.cpu())
    return torch.cat(all_scores), torch.cat(all_indices)


def _faiss_blocks(
    queries: torch.Tensor,
    gallery: StoredRows,
    k: int,
    block_size: int,
    bias: torch.Tensor | None,
    bias_rows: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact FAISS search over a stored gallery, one block of rows at a time, merged into a running top-k."""
    if bias is not None:
        rows = torch.ones(queries.shape[0]) if bias_rows is None else bias_rows.float()
        queries = torch.cat([queries.float(), rows[:, None]], dim=1)
    best_s = torch.full((queries.shape[0], 0), float("-inf"))
    best_i = torch.zeros((queries.shape[0], 0), dtype=torch.long)
    for start, block in gallery.blocks(block_size):
        items = torch.from_numpy(np.array(block, dtype=np.float32))
        if bias is not None:
            items = torch.cat([items, bias[start : start + len(items)].float()[:, None]], dim=1)
        s, i = _faiss_topk(queries, items, min(k, len(items)))
        merged_s, merged_i = torch.cat([best_s, s], dim=1), torch.cat([best_i, i + start], dim=1)
        best_s, order = merged_s.topk(min(k, merged_s.shape[1]), dim=1)
        best_i = merged_i.gather(1, order)
    return best_s, best_i


def _faiss_topk(queries: torch.Tensor, gallery: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    faiss = _import_faiss()

    def as_float32(x: torch.Tensor) -> np.ndarray:
        return np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)

    scores, indices = faiss.knn(
        as_float32(queries), as_float32(gallery), k, metric=faiss.METRIC_INNER_PRODUCT
    )
    return torch.from_numpy(scores), torch.from_numpy(indices.astype(np.int64))


@torch.no_grad()
def ranked_candidates(
    queries: torch.Tensor,
    gallery: torch.Tensor | StoredRows,
    depth: int,
    chunk_size: int = 1024,
    exclude: list[tuple[int, ...]] | None = None,
    groups: dict[str, list[int]] | None = None,
    query_groups: list[str | None] | None = None,
    bias: torch.Tensor | None = None,
    bias_rows: torch.Tensor | None = None,
    **search: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`topk_search` for hybrid-modal datasets: (scores, gallery indices) [num_queries, depth'], best first.

    `exclude[q]`: gallery indices left out of query q's ranking (CIRR: its reference image). `groups`: named
    parts of the gallery; query q ranks only the part `query_groups[q]` (FashionIQ: its category). depth'
    is `depth`, or less when a part (minus exclusions) is smaller. `bias`, `bias_rows`: a normaliser's
    per-item bias [num_gallery] and the queries it applies to [num_queries] (see topk_search).
    `search`: topk_search's other keyword settings.
    """
    n = queries.shape[0]
    exclude = exclude or [()] * n
    if groups is not None and search.get("approximate") is not None:
        raise VisaError(
            f"retrieval.index={search.get('index')}: an approximate index searches the whole gallery, and "
            "this dataset ranks parts of it per query (groups); use retrieval.index=torch or faiss"
        )
    parts: list[tuple[list[int], Sequence[int]]]
    if groups is None:
        parts = [(list(range(n)), range(gallery.shape[0]))]
    else:
        assert query_groups is not None
        parts = [([q for q in range(n) if query_groups[q] == g], members) for g, members in groups.items()]
    results: list[tuple[list[int], list[torch.Tensor], list[torch.Tensor]]] = []
    for query_rows, members in parts:
        if not query_rows:
            continue
        extra = max(len(exclude[q]) for q in query_rows)
        whole = groups is None  # the whole gallery: searched in place (a stored gallery is not loaded)
        member_index = torch.arange(0) if whole else torch.as_tensor(members, dtype=torch.long)
        part_queries = queries if whole else queries[query_rows]
        part_gallery = gallery if whole else gallery[member_index]
        if bias is not None:
            search["bias"] = bias if whole else bias[member_index]
            search["bias_rows"] = bias_rows[query_rows] if bias_rows is not None else None
        scores, local = topk_search(part_queries, part_gallery, depth + extra, chunk_size, **search)
        indices = local if whole else member_index[local]
        keep = min(depth, len(members) - extra)
        rows_s: list[torch.Tensor] = []
        rows_i: list[torch.Tensor] = []
        for row, q in enumerate(query_rows):
            mask = ~torch.isin(indices[row], torch.as_tensor(exclude[q], dtype=torch.long))
            rows_s.append(scores[row][mask][:keep])
            rows_i.append(indices[row][mask][:keep])
        results.append((query_rows, rows_s, rows_i))
    width = min(len(r) for _, rows_s, _ in results for r in rows_s)
    out_s = torch.empty((n, width), dtype=torch.float32)
    out_i = torch.empty((n, width), dtype=torch.long)
    for query_rows, rows_s, rows_i in results:
        for q, row_s, row_i in zip(query_rows, rows_s, rows_i):
            out_s[q], out_i[q] = row_s[:width], row_i[:width]
    return out_s, out_i


@torch.no_grad()
def rank_given_candidates(
    queries: torch.Tensor,
    gallery: torch.Tensor | StoredRows,
    candidates: list[tuple[int, ...]],
    bias: torch.Tensor | None = None,
    bias_rows: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each query's own candidates (gallery indices that the dataset provides) ranked by dot product (+ the
    bias, as in topk_search): (scores, gallery indices) [num_queries, width], best first, ties in the
    candidates' order. width is the shortest candidate list (every list, when they are equally long)."""
    if any(not c for c in candidates):
        raise VisaError("a query has no candidates; every query of a dataset with candidates needs some")
    width = min(len(c) for c in candidates)
    out_s = torch.empty((len(candidates), width), dtype=torch.float32)
    out_i = torch.empty((len(candidates), width), dtype=torch.long)
    for q, members in enumerate(candidates):
        index = torch.as_tensor(members, dtype=torch.long)
        rows = gallery[index]
        scores = (rows @ queries[q].to(rows.dtype)).float()
        if bias is not None and (bias_rows is None or bool(bias_rows[q])):
            scores = scores + bias[index].float()
        order = torch.sort(scores, descending=True, stable=True).indices[:width]
        out_s[q], out_i[q] = scores[order], index[order]
    return out_s, out_i
