"""The retrieve stage: every query's ranked candidates and their base scores, by one of two paths.

- Dual encoders: text queries and text-only gallery items go through encode_text, gallery media (with or
  without text) through encode_visual, composed queries (a reference item + text) through encode_composed;
  then the memory-bounded top-K search (`visa.method.retrieval`), or, for a dataset that provides each
  query's candidates (INQUIRE-Rerank), those candidates ranked by the backbone's similarity. A normaliser
  (`visa.method.normalizers`) corrects the similarity before the top-K is taken; its reference bank is
  encoded by the same backbone (stage encode_bank).
- Pairwise matchers (`PairwiseBackbone`): every (query, item) pair scored, keeping a running top list
  (`visa.method.pairwise`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from visa.backbones import Backbone
from visa.cache import make_key
from visa.cache.gallery import StoredRows, index_folder
from visa.cache.runner import StageStats
from visa.core.errors import VisaError
from visa.data import Query
from visa.data.banks import Bank
from visa.method.ann import ann_recall, build_index
from visa.method.cluster_encode import encode_on_cluster
from visa.method.gallery import PublishedGallery, check_store_items, open_store, stored_gallery
from visa.method.normalizers import Blocks, Correction, Normalizer
from visa.method.pairwise import PairwiseBackbone, retrieve_pairwise
from visa.method.passages import query_item
from visa.method.retrieval import is_approximate, rank_given_candidates, ranked_candidates
from visa.method.stages import Run, check_finite


@dataclass
class Retrieved:
    """The base ranking: scores and gallery indices [queries, depth], best first, and for datasets whose
    queries carry a subset (CIRR) each query's base scores over its subset. `metrics`: what the retrieve step
    reports (a normaliser's bank calls, the queries QB-Norm normalised)."""

    scores: torch.Tensor
    candidates: torch.Tensor
    subset_scores: list[list[float]] | None = None
    metrics: dict[str, Any] = field(default_factory=dict)


def encode_queries(
    run: Run, backbone: Backbone, queries: list[Query], stage: str | None = None
) -> np.ndarray:
    """The backbone's embeddings of `queries` [queries, dim]: text through encode_text, composed queries (a
    reference item + text) through encode_composed. `stage`: the stage name they are counted under
    (default: those two; a normaliser's bank: encode_bank); the cache keys are the same either way."""
    plain = [i for i, q in enumerate(queries) if q.reference is None]
    composed = [i for i, q in enumerate(queries) if q.reference is not None]
    names = {} if stage is None else {"stage": stage}
    embeddings: list[np.ndarray | None] = [None] * len(queries)
    for i, e in zip(plain, run.encode_text(backbone, [queries[i].text for i in plain], **names)):
        embeddings[i] = e
    if composed:
        items = [query_item(queries[i]) for i in composed]
        for i, e in zip(composed, run.encode_composed(backbone, items, **names)):
            embeddings[i] = e
    return np.stack(embeddings)  # type: ignore[arg-type]


def _stage_calls(run: Run, stage: str) -> dict[str, int]:
    stats = run.runner.stats.get(stage)
    if stats is None:
        return {}
    return {f"calls/{stage}/computed": stats.computed, f"calls/{stage}/cached": stats.cached}


def normalize(
    run: Run, backbone: Backbone, normalizer: Normalizer, bank: Bank, item_tensor: torch.Tensor | StoredRows
) -> tuple[Correction, dict[str, Any]]:
    """The normaliser's correction, from the bank's embeddings (stage encode_bank, cached like every
    encoding) and the gallery's; the bank's call counts for metrics.json."""
    bank_array = encode_queries(run, backbone, bank.queries, stage="encode_bank")
    fix = f"check the backbone's weights and dtype ({str(backbone.identity())[:160]})"
    check_finite(
        bank_array, "the backbone's embedding of the reference bank", [q.text for q in bank.queries], fix
    )
    t0 = time.perf_counter()
    retrieval = run.settings.retrieval
    blocks = Blocks(
        retrieval.chunk_size, retrieval.gallery_chunk_size, retrieval.device, run.settings.progress
    )
    # a stored gallery reads like a tensor (slices, .float(), .to()): QB-Norm goes block by block, NNN and DN
    # load it once
    correction = normalizer.correction(torch.from_numpy(bank_array), cast(torch.Tensor, item_tensor), blocks)
    run.timed("normalize", t0)
    return correction, _stage_calls(run, "encode_bank")


def gallery_embeddings(run: Run, backbone: Backbone) -> tuple[torch.Tensor | StoredRows, Path | None]:
    """The gallery's embeddings, and the gallery store's folder when they come from one: a backbone's own
    published embeddings, the gallery store (`retrieval.gallery_store`), or the results cache."""
    gallery, retrieval = run.dataset.gallery, run.settings.retrieval
    stats = run.runner.stats.setdefault("encode_visual", StageStats())
    if isinstance(backbone, PublishedGallery):
        with run.runner.timed("encode_visual"):
            rows = backbone.gallery_rows(gallery)
        stats.cached += len(gallery)
        if run.store is None or not is_approximate(retrieval.index):
            return rows, None
        return rows, index_folder(run.store.root, backbone.identity(), rows)  # type: ignore[attr-defined]
    media_only = all(item.kind != "text" for item in gallery)
    if retrieval.uses_store(len(gallery)) and (media_only or retrieval.gallery_store == "on"):
        check_store_items(gallery)
        if run.store is None:
            raise VisaError("retrieval.gallery_store needs the cache folder (cache_dir); this run has none")
        root = run.store.root  # type: ignore[attr-defined]  # both cache layouts have one
        store = open_store(root, backbone, gallery, retrieval.gallery_dtype, retrieval.gallery_shard_size)
        with run.runner.timed("encode_visual"):
            elsewhere = 0  # items the cluster's workers encoded
            if retrieval.gallery_launcher != "none" and store.missing():
                elsewhere = encode_on_cluster(
                    store,
                    backbone,
                    gallery,
                    retrieval.gallery_launcher,
                    retrieval.gallery_workers,
                    retrieval.gallery_executor,
                    retrieval.gallery_rounds,
                )
            rows = stored_gallery(store, backbone, gallery, stats, run.settings.shard, run.settings.progress)
            stats.computed, stats.cached = stats.computed + elsewhere, stats.cached - elsewhere
        return rows, store.folder
    text_rows = [i for i, item in enumerate(gallery) if item.kind == "text"]
    media_rows = [i for i, item in enumerate(gallery) if item.kind != "text"]
    item_emb: list[np.ndarray | None] = [None] * len(gallery)
    for i, e in zip(text_rows, run.encode_text(backbone, [gallery[i].text or "" for i in text_rows])):
        item_emb[i] = e
    for i, e in zip(media_rows, run.encode_visual(backbone, [gallery[i] for i in media_rows])):
        item_emb[i] = e
    item_array = np.stack(item_emb)  # type: ignore[arg-type]
    fix = f"check the backbone's weights and dtype ({str(backbone.identity())[:160]})"
    check_finite(item_array, "the backbone's embedding", [i.path or i.id for i in gallery], fix)
    return torch.from_numpy(item_array), None


def retrieve(
    run: Run,
    backbone: Backbone | PairwiseBackbone,
    normalizer: Normalizer | None = None,
    bank: Bank | None = None,
) -> Retrieved:
    """The base ranking of every query: the gallery's top `depth` items, or for a dataset with candidates
    (INQUIRE-Rerank) all of each query's own candidates, by the backbone's similarity, corrected by
    `normalizer` when a `bank` is given."""
    queries, gallery, settings = run.dataset.queries, run.dataset.gallery, run.settings
    depth = settings.depth
    if isinstance(backbone, PairwiseBackbone):  # a cross-attention matcher: every pair scored
        if bank is not None:
            raise VisaError(
                "a normalizer needs a dual encoder's embeddings, and this backbone scores (query, item) "
                "pairs; use normalizer=none"
            )
        if run.dataset.candidates is not None:
            raise VisaError(
                f"dataset {run.dataset.name} provides candidates, which a pairwise backbone cannot rank"
            )
        texts = [q.text for q in queries]
        scores, candidates = retrieve_pairwise(run.stage, make_key, backbone, texts, gallery, depth)
        return Retrieved(scores, candidates)
    query_array = encode_queries(run, backbone, queries)
    fix = f"check the backbone's weights and dtype ({str(backbone.identity())[:160]})"
    check_finite(query_array, "the backbone's query embedding", [q.text for q in queries], fix)
    query_tensor = torch.from_numpy(query_array)
    item_tensor, store_folder = gallery_embeddings(run, backbone)
    correction, metrics = Correction(), {}  # type: tuple[Correction, dict[str, Any]]
    if normalizer is not None and bank is not None:
        correction, metrics = normalize(run, backbone, normalizer, bank, item_tensor)
    t0 = time.perf_counter()
    query_tensor = correction.shift_queries(query_tensor)
    given = run.dataset.candidates
    search: dict[str, Any] = {
        "exclude": [q.exclude for q in queries],
        "groups": run.dataset.groups,
        "query_groups": [q.group for q in queries],
        "gallery_chunk_size": settings.retrieval.gallery_chunk_size,
        "index": settings.retrieval.index,
        "device": settings.retrieval.device,
    }
    retrieval = settings.retrieval
    approximate = None
    if is_approximate(retrieval.index) and given is None:
        approximate, index_metrics = build_index(
            retrieval.index, retrieval, item_tensor, correction.bias, store_folder, settings.progress
        )
        metrics.update(index_metrics)
        search["approximate"] = approximate
    rows = None
    if correction.bias is not None and correction.gate is not None:  # QB-Norm: by each query's raw top-1
        if given is not None:
            first = rank_given_candidates(query_tensor, item_tensor, given)[1][:, 0]
        else:
            first = ranked_candidates(query_tensor, item_tensor, 1, settings.retrieval.chunk_size, **search)[
                1
            ][:, 0]
        rows = correction.gate[first]
        metrics["normalizer/normalized_queries"] = int(rows.sum())
    if given is not None:  # the dataset's own candidates, all of them ranked
        scores, candidates = rank_given_candidates(query_tensor, item_tensor, given, correction.bias, rows)
    else:
        scores, candidates = ranked_candidates(
            query_tensor,
            item_tensor,
            depth,
            settings.retrieval.chunk_size,
            bias=correction.bias,
            bias_rows=rows,
            **search,
        )
    if approximate is not None:
        metrics["retrieval/index_search_s"] = round(approximate.search_seconds, 3)
        if retrieval.ann_recall_queries:
            metrics.update(
                ann_recall(
                    approximate,
                    query_tensor,
                    item_tensor,
                    depth,
                    retrieval.ann_recall_queries,
                    correction.bias,
                    rows,
                    retrieval.gallery_chunk_size,
                )
            )
    offsets = correction.offsets(query_tensor)
    if offsets is not None:
        scores = scores + offsets[:, None]
    subset_scores = None
    if any(q.subset for q in queries):
        subset_scores = []
        for i, q in enumerate(queries):
            members = list(q.subset)
            row = item_tensor[members] @ query_tensor[i].to(item_tensor.dtype) if members else torch.zeros(0)
            if members and correction.bias is not None and (rows is None or bool(rows[i])):
                row = row + correction.bias[members]
            if members and offsets is not None:
                row = row + offsets[i]
            subset_scores.append(row.tolist())
    run.timed("retrieve", t0)
    return Retrieved(scores, candidates, subset_scores, metrics)
