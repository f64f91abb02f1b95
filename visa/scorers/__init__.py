"""Text re-rankers, each a class instantiated from `conf/scorer/<name>.yaml` that satisfies `Scorer`; and
multimodal cross-encoders over (query text, item image), each from `conf/cross_encoder/<name>.yaml`, that
satisfy `MediaScorer` (`visa.scorers.qwen3_vl_reranker.Qwen3VLReranker`,
`visa.scorers.blip2_itm.Blip2ITMScorer`).

Constructors only store settings; weights load on first use.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from visa.core.prompt import Prompt


@runtime_checkable
class Scorer(Protocol):
    """What the pipeline needs of a scorer."""

    batch_size: int  # pairs per score call

    def identity(self) -> dict:
        """Everything that changes the scores (the cache key)."""
        ...

    def score(self, pairs: list[tuple[str, str]]) -> list[float]:
        """Raw relevance of each (query, passage) pair, higher is better."""
        ...


@runtime_checkable
class MediaScorer(Protocol):
    """What a re-ranker needs of a multimodal cross-encoder: the relevance of a query to an item's pixels."""

    batch_size: int  # pairs per score_media call

    def identity(self) -> dict:
        """Everything that changes the scores (the cache key)."""
        ...

    def score_media(self, pairs: list[Prompt]) -> list[float]:
        """Relevance of each pair, higher is better: `Prompt.text` the query, `media` / `media_kind` the
        item's image."""
        ...


# Every text scorer here is also `visa.core.abilities.Counting`: it counts the pairs whose query or passage it
# cut to its token budgets (truncated_queries, truncated_passages), reported as score/<name>.
