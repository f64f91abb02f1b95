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


def recall_gains(metrics: dict[str, float]) -> dict[str, float]:
    """gain/R@k = VISA's R@k - the backbone's R@k (points), for every k that both have in `metrics`."""
    return {
        f"gain/{key[5:]}": round(value - metrics[f"base/{key[5:]}"], 4)
        for key, value in metrics.items()
        if key.startswith("visa/R@") and f"base/{key[5:]}" in metrics
    }
