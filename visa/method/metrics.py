"""Text-to-visual retrieval metrics."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def recall_at_k(
    ranking: torch.Tensor, relevant: Sequence[Sequence[int]], ks: Sequence[int]
) -> dict[str, float]:
    """R@k in percent: the share of queries with a relevant item among their first k ranked items.

    `ranking` is [queries, n] gallery indices, best first; it must hold at least max(ks) columns, or the
    whole gallery.
    """
    hits = torch.zeros(ranking.shape, dtype=torch.bool)
    for q, rel in enumerate(relevant):
        hits[q] = torch.isin(ranking[q], torch.as_tensor(list(rel), dtype=ranking.dtype))
    first_hit = torch.where(hits.any(1), hits.float().argmax(1), torch.full((len(relevant),), 10**9))
    return {f"R@{k}": round(100.0 * (first_hit < k).float().mean().item(), 4) for k in ks}


def recall_subset_at_k(
    ranking: torch.Tensor,
    relevant: Sequence[Sequence[int]],
    subsets: Sequence[Sequence[int]],
    subset_scores: Sequence[Sequence[float]],
    ks: Sequence[int],
) -> dict[str, float]:
    """CIRR's Recall_subset@k in percent: the relevant item among the first k of the query's subset (its
    group of similar images), ranked as `ranking` ranks them; subset members beyond the ranking's columns
    follow in order of `subset_scores` (the backbone's similarity). Queries without a subset are left out.
    """
    hits: dict[int, list[bool]] = {k: [] for k in ks}
    for q, subset in enumerate(subsets):
        if not subset:
            continue
        members = set(subset)
        ranked = [g for g in ranking[q].tolist() if g in members]
        seen = set(ranked)
        by_score = sorted(zip(subset_scores[q], subset), key=lambda pair: -pair[0])
        order = ranked + [g for _, g in by_score if g not in seen]
        for k in ks:
            hits[k].append(any(g in relevant[q] for g in order[:k]))
    return {f"R_subset@{k}": round(100.0 * sum(h) / len(h), 4) for k, h in hits.items() if h}


def recall_gains(metrics: dict[str, float]) -> dict[str, float]:
    """gain/R@k = VISA's R@k - the backbone's R@k (points), for every k that both have in `metrics`."""
    return {
        f"gain/{key[5:]}": round(value - metrics[f"base/{key[5:]}"], 4)
        for key, value in metrics.items()
        if key.startswith("visa/R@") and f"base/{key[5:]}" in metrics
    }
