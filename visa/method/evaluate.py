"""The evaluate step: R@k of the base and re-ranked orders, per gallery group and averaged when the dataset
has groups (FashionIQ), Recall_subset@1/2/3 when queries carry subsets (CIRR), and the ranking metrics a
dataset lists in `Dataset.metrics` (mAP@k, nDCG@k, MRR: INQUIRE)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch

from visa.data import Dataset
from visa.method.metrics import ranking_metrics, recall_at_k, recall_subset_at_k


def evaluate(
    dataset: Dataset,
    orders: dict[str, torch.Tensor],
    recall_at: Sequence[int],
    subset_scores: list[list[float]] | None = None,
) -> dict[str, float]:
    """`orders`: prefix -> ranked gallery indices [queries, depth]; `subset_scores`: each query's base
    scores over its subset (CIRR), None when the base ranking has no such scores."""
    queries = dataset.queries
    relevant = [q.relevant for q in queries]
    metrics: dict[str, float] = {}
    groups = dataset.groups
    for prefix, order in orders.items():
        if groups is None:
            for name, value in recall_at_k(order, relevant, recall_at).items():
                metrics[f"{prefix}/{name}"] = value
        else:  # each group's recall, and their mean (not pooled over queries)
            per_group = {}
            for group in groups:
                rows = [i for i, q in enumerate(queries) if q.group == group]
                if rows:
                    per_group[group] = recall_at_k(order[rows], [relevant[i] for i in rows], recall_at)
                    for name, value in per_group[group].items():
                        metrics[f"{group}/{prefix}/{name}"] = value
            for k in recall_at:
                values = [r[f"R@{k}"] for r in per_group.values()]
                metrics[f"{prefix}/R@{k}"] = round(sum(values) / len(values), 4)
        if dataset.metrics:  # over all queries (datasets with groups list none today)
            for name, value in ranking_metrics(order, relevant, dataset.metrics).items():
                metrics[f"{prefix}/{name}"] = value
        if subset_scores is not None:
            subsets = [q.subset for q in queries]
            for name, value in recall_subset_at_k(order, relevant, subsets, subset_scores, (1, 2, 3)).items():
                metrics[f"{prefix}/{name}"] = value
    return metrics


def ranking_digest(dataset: Dataset, order: torch.Tensor) -> str:
    """A short fingerprint of a ranking (each query's ranked item ids, in query order): two runs whose final
    rankings are identical have the same digest, whatever their cache, batches or shards were."""
    h = hashlib.sha256()
    ids = [item.id for item in dataset.gallery]
    for row in order.tolist():
        h.update(("\x1f".join(ids[i] for i in row) + "\x1e").encode())
    return h.hexdigest()[:16]
