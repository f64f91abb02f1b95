"""The retrieve stage: every query's ranked candidates and their base scores, by one of two paths.

- Dual encoders: text queries and text-only gallery items go through encode_text, gallery media (with or
  without text) through encode_visual, composed queries (a reference item + text) through encode_composed;
  then the memory-bounded top-K search (`visa.method.retrieval`).
- Pairwise matchers (`PairwiseBackbone`): every (query, item) pair scored, keeping a running top list
  (`visa.method.pairwise`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from visa.backbones import Backbone
from visa.cache import make_key
from visa.method.pairwise import PairwiseBackbone, retrieve_pairwise
from visa.method.passages import query_item
from visa.method.retrieval import ranked_candidates
from visa.method.stages import Run, check_finite


@dataclass
class Retrieved:
    """The base ranking: scores and gallery indices [queries, depth], best first, and for datasets whose
    queries carry a subset (CIRR) each query's base scores over its subset."""

    scores: torch.Tensor
    candidates: torch.Tensor
    subset_scores: list[list[float]] | None = None


def retrieve(run: Run, backbone: Backbone | PairwiseBackbone) -> Retrieved:
    queries, gallery, settings = run.dataset.queries, run.dataset.gallery, run.settings
    depth = settings.depth
    if isinstance(backbone, PairwiseBackbone):  # a cross-attention matcher: every pair scored
        texts = [q.text for q in queries]
        scores, candidates = retrieve_pairwise(run.stage, make_key, backbone, texts, gallery, depth)
        return Retrieved(scores, candidates)
    plain = [i for i, q in enumerate(queries) if q.reference is None]
    composed = [i for i, q in enumerate(queries) if q.reference is not None]
    query_emb: list[np.ndarray | None] = [None] * len(queries)
    for i, e in zip(plain, run.encode_text(backbone, [queries[i].text for i in plain])):
        query_emb[i] = e
    if composed:
        for i, e in zip(composed, run.encode_composed(backbone, [query_item(queries[i]) for i in composed])):
            query_emb[i] = e
    text_rows = [i for i, item in enumerate(gallery) if item.kind == "text"]
    media_rows = [i for i, item in enumerate(gallery) if item.kind != "text"]
    item_emb: list[np.ndarray | None] = [None] * len(gallery)
    for i, e in zip(text_rows, run.encode_text(backbone, [gallery[i].text or "" for i in text_rows])):
        item_emb[i] = e
    for i, e in zip(media_rows, run.encode_visual(backbone, [gallery[i] for i in media_rows])):
        item_emb[i] = e
    query_array, item_array = np.stack(query_emb), np.stack(item_emb)  # type: ignore[arg-type]
    fix = f"check the backbone's weights and dtype ({str(backbone.identity())[:160]})"
    check_finite(query_array, "the backbone's query embedding", [q.text for q in queries], fix)
    check_finite(item_array, "the backbone's embedding", [i.path or i.id for i in gallery], fix)
    t0 = time.perf_counter()
    query_tensor, item_tensor = torch.from_numpy(query_array), torch.from_numpy(item_array)
    scores, candidates = ranked_candidates(
        query_tensor,
        item_tensor,
        depth,
        settings.retrieval.chunk_size,
        exclude=[q.exclude for q in queries],
        groups=run.dataset.groups,
        query_groups=[q.group for q in queries],
        gallery_chunk_size=settings.retrieval.gallery_chunk_size,
        index=settings.retrieval.index,
        device=settings.retrieval.device,
    )
    subset_scores = None
    if any(q.subset for q in queries):
        subset_scores = [
            (item_tensor[list(q.subset)] @ query_tensor[i]).tolist() if q.subset else []
            for i, q in enumerate(queries)
        ]
    run.timed("retrieve", t0)
    return Retrieved(scores, candidates, subset_scores)
