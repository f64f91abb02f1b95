"""`reranker=cross_encoder`: a multimodal cross-encoder (the `cross_encoder` part, `conf/cross_encoder/`)
scores each (query, candidate's pixels) pair directly: Qwen3-VL-Reranker's P(yes) (2B, 8B) or BLIP-2's
image-text matching head (LAVIS re-ranks BLIP-2's contrastive top-k this way). No package ships such a model,
so the offline demo has no stand-in for it: the run stops with the loader's one line."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from visa.core.errors import VisaError
from visa.core.prompt import Prompt
from visa.method.keys import item_fingerprint
from visa.method.passages import composed_query_text
from visa.method.rerankers import Scored, candidates, scored_pairs
from visa.method.stages import Run
from visa.scorers import MediaScorer


class CrossEncoderReranker:
    uses: tuple[str, ...] = ("cross_encoder",)
    label = "cross-encoder"

    def __init__(self, cross_encoder: MediaScorer):
        self.cross_encoder = cross_encoder
        self.query_texts: dict[int, str] = {}

    def prepare(self, run: Run, top: torch.Tensor, queries: Sequence[int]) -> None:
        dataset = run.dataset
        if any(q.reference is not None for q in dataset.queries):
            raise VisaError(
                "reranker=cross_encoder scores a text query against an item's pixels; composed queries (a "
                "reference image) need reranker=visa or pointwise"
            )
        self.query_texts = {q: composed_query_text(dataset.queries[q], {}) for q in queries}

    def score(self, run: Run, queries: Sequence[int], top: torch.Tensor, base: torch.Tensor) -> Scored:
        pairs = candidates(run, queries, top)
        for _, item in pairs:
            if item.kind != "image":
                raise VisaError(
                    f"reranker=cross_encoder scores images; item {item.id} is a {item.kind} (use "
                    "reranker=pointwise, whose judge sees video frames, or reranker=visa)"
                )
        prompts = [Prompt(self.query_texts[q], (item.path,), item.kind) for q, item in pairs]
        fingerprints = [item_fingerprint(item) for _, item in pairs]
        values = run.cross_score(self.cross_encoder, prompts, fingerprints)
        return scored_pairs(values, queries, top, "cross_score")

    def metrics(self) -> dict[str, Any]:
        return {}
