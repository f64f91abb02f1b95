"""Re-rankers: what re-orders each query's top-K after retrieval, behind one interface (`Reranker`).

A run (`visa.method.pipeline.run_visa`) retrieves, lets its re-ranker prepare the whole run, then hands it
one block of queries at a time: their top-K candidates and the backbone's scores in, a score per candidate
out. The run fuses those scores with the backbone's (`visa.method.fusion`), orders, writes the records and
evaluates; it knows no re-ranker's stages. The options are `conf/reranker/*.yaml` (docs/rerankers.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch

from visa.data import Item
from visa.method.stages import Run


@dataclass
class Scored:
    """A re-ranker's answer for a block of queries."""

    scores: torch.Tensor  # [queries, K], higher is better; fused with the backbone's by the run's fusion
    query_fields: list[dict[str, Any]]  # per query: its fields of the results.jsonl record
    # per query and rank: the candidate's fields of record["candidates"]; None: the record has no candidates
    candidate_fields: list[list[dict[str, Any]]] | None = None


@runtime_checkable
class Reranker(Protocol):
    """What a run needs of a re-ranker. It may also be `Closable` (its parts stop what they started) and
    `Counting` (its parts' counters go to metrics.json)."""

    def prepare(self, run: Run, top: torch.Tensor, queries: Sequence[int]) -> None:
        """Work over the whole run before the blocks: `top` is every query's top-K [queries, K] (gallery
        indices), `queries` the queries this run scores (all of them, or a shard's share)."""
        ...

    def score(self, run: Run, queries: Sequence[int], top: torch.Tensor, base: torch.Tensor) -> Scored:
        """Scores of a block of `queries` (indices into the dataset's queries): `top` their top-K [block, K]
        and `base` the backbone's scores of those candidates [block, K]."""
        ...

    def metrics(self) -> dict[str, Any]:
        """The re-ranker's own entries of metrics.json, once every block is scored."""
        ...


def candidates(run: Run, queries: Sequence[int], top: torch.Tensor) -> list[tuple[int, Item]]:
    """(query index, gallery item) of every candidate of a block, query by query, in top-K order."""
    return [(q, run.dataset.gallery[gi]) for qi, q in enumerate(queries) for gi in top[qi].tolist()]


def scored_pairs(values: list[float], queries: Sequence[int], top: torch.Tensor, field: str) -> Scored:
    """A block's Scored from one value per candidate (in `candidates` order), each recorded as `field`."""
    scores = torch.tensor(values, dtype=torch.float32).view(len(queries), top.shape[1])
    return Scored(
        scores, [{} for _ in queries], [[{field: round(float(s), 6)} for s in row] for row in scores]
    )
