"""Text-to-visual retrieval metrics."""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Iterable, Sequence

import torch

from visa.data import RANKING_METRICS

# The names of the two orders a run reports: the prefixes of their metrics in metrics.json (`base/R@1`,
# `rerank/R@1`, whatever the re-ranker; runs before the `reranker` group wrote `visa/R@1`) and the re-ranked
# top-K's list in a results.jsonl record (`rerank_top`, formerly `visa_top`; the backbone's is "base_top").
BASE = "base"
RERANKED = "rerank"
RERANKED_TOP = "rerank_top"
# a recall key of the re-ranked order (`visa/` in runs before the reranker group); group 1 is K
RECALL_KEY = re.compile(r"(?:rerank|visa)/R@(\d+)")


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


def primary_metric(keys: Iterable[str]) -> str | None:
    """The metric runs with these metrics.json keys are judged by: mAP@50 where they report it (INQUIRE),
    else the smallest R@K of the re-ranked order (`rerank/`, or `visa/` in runs before the reranker group)."""
    keys = set(keys)
    if f"{RERANKED}/mAP@50" in keys:
        return "mAP@50"
    ks = [int(m.group(1)) for k in keys if (m := RECALL_KEY.fullmatch(k))]
    return f"R@{min(ks)}" if ks else None


def recall_gains(metrics: dict[str, float]) -> dict[str, float]:
    """gain/R@k = VISA's R@k - the backbone's R@k (points), for every k that both have in `metrics`."""
    reranked = f"{RERANKED}/"
    gains = {}
    for key, value in metrics.items():
        name = key.removeprefix(reranked)
        if key.startswith(f"{reranked}R@") and f"{BASE}/{name}" in metrics:
            gains[f"gain/{name}"] = round(value - metrics[f"{BASE}/{name}"], 4)
    return gains


# -- metrics for queries with many relevant items (INQUIRE) --------------------------------------------------
# Each takes one query's ranked gallery indices (best first; the whole candidate list, or at least k of
# them) and the set of its relevant items; the dataset's `metrics` name those a run reports.
def average_precision_at_k(ranked: Sequence[int], relevant: Collection[int], k: int) -> float:
    """INQUIRE's AP@k: sum over the first k ranks of precision@i at each relevant rank i, divided by
    min(number of relevant items, k), so a relevant item that is missed from the first k counts against the
    score (plain AP would divide by the relevant items found). 0 when the query has no relevant item."""
    if not relevant or k < 1:
        return 0.0
    hits, total = 0, 0.0
    for i, item in enumerate(ranked[:k], start=1):
        if item in relevant:
            hits += 1
            total += hits / i
    return total / min(len(relevant), k)


def ndcg_at_k(ranked: Sequence[int], relevant: Collection[int], k: int) -> float:
    """nDCG@k with binary relevance: sum of 1/log2(i+1) over the relevant items in ranks i <= k, divided by
    the same sum for an ideal ranking of all the query's relevant items (at most k of them count). Relevant
    items that are not in `ranked` count as ranked last, as INQUIRE's evaluation does. 0 with none."""
    if not relevant or k < 1:
        return 0.0
    dcg = sum(1.0 / math.log2(i + 1) for i, item in enumerate(ranked[:k], start=1) if item in relevant)
    ideal = sum(1.0 / math.log2(i + 1) for i in range(1, min(len(relevant), k) + 1))
    return dcg / ideal


def recall_of_relevant(ranked: Sequence[int], relevant: Collection[int], k: int) -> float:
    """The share of the query's relevant items among the first k of `ranked` (INQUIRE's recall; not R@k,
    which asks whether any relevant item is there). 0 when the query has no relevant item."""
    if not relevant:
        return 0.0
    return sum(1 for item in ranked[:k] if item in relevant) / len(relevant)


def reciprocal_rank(ranked: Sequence[int], relevant: Collection[int]) -> float:
    """1 / the rank of the first relevant item in `ranked` (1-based); 0 when none is ranked."""
    for i, item in enumerate(ranked, start=1):
        if item in relevant:
            return 1.0 / i
    return 0.0


def ranking_metrics(
    ranking: torch.Tensor, relevant: Sequence[Sequence[int]], names: Sequence[str]
) -> dict[str, float]:
    """The named metrics, averaged over queries: `mAP@k` (mean of INQUIRE's AP@k), `nDCG@k` and `Recall@k`
    (the share of the relevant items in the first k) in percent,
    `MRR` as a fraction (0..1), as INQUIRE reports them. `ranking`: [queries, n] gallery indices, best first;
    it should hold each query's whole candidate list, or at least k columns."""
    rows = ranking.tolist()
    sets = [set(r) for r in relevant]
    out: dict[str, float] = {}
    for name in names:
        match = RANKING_METRICS.fullmatch(name)
        if match is None:
            raise ValueError(f"unknown ranking metric {name!r}; expected mAP@k, nDCG@k, Recall@k or MRR")
        if name == "MRR":
            values = [reciprocal_rank(r, s) for r, s in zip(rows, sets)]
            scale = 1.0
        else:
            k = int(match.group(2))
            fn = {"mAP": average_precision_at_k, "nDCG": ndcg_at_k, "Recall": recall_of_relevant}[
                match.group(1)
            ]
            values = [fn(r, s, k) for r, s in zip(rows, sets)]
            scale = 100.0
        out[name] = round(scale * sum(values) / max(len(values), 1), 4)
    return out
