"""A run's graph: retrieve -> re-rank (the re-ranker's own stages) -> fuse -> order -> evaluate.

The retrieve stage is `visa.method.retrieve`, the re-ranker one of `visa.method.rerankers` (each model stage
a method of `visa.method.stages.Run`, one `visa.cache.StageRunner` underneath), evaluation
`visa.method.evaluate`, the records of results.jsonl `visa.method.records`. This module only wires them; it
knows the parts' interfaces, never a model or a re-ranker's stages.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch

from visa.cache import Store
from visa.data import Dataset
from visa.method import replies
from visa.method.evaluate import evaluate, ranking_digest
from visa.method.fusion import Fusion, rerank
from visa.method.keys import item_fingerprint
from visa.method.metrics import BASE, RERANKED
from visa.method.parts import Components
from visa.method.records import result_records
from visa.method.rerankers import Scored
from visa.method.rerankers.visa import question_fields
from visa.method.retrieve import retrieve
from visa.method.settings import Settings
from visa.method.stages import Run


def check_files(dataset: Dataset) -> None:
    """A missing gallery or reference file stops the run here, before any model loads."""
    for item in dataset.gallery:
        item_fingerprint(item)
    for query in dataset.queries:
        if query.reference is not None:
            item_fingerprint(query.reference)


# Queries whose answers, passages and scores are held at once: the answer, score and record steps run one
# block at a time, so a run's memory does not grow with its number of answers (COCO: 1.5 million).
QUERY_BLOCK = 512


def blocks(n: int, size: int = QUERY_BLOCK) -> list[range]:
    return [range(start, min(n, start + size)) for start in range(0, n, size)]


def run_visa(
    dataset: Dataset,
    parts: Components,
    settings: Settings,
    store: Store,
    sink: Callable[[dict[str, Any]], None] | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Retrieve, let the re-ranker prepare, then score, fuse, order and record one block of queries at a
    time, and evaluate; returns (metrics, one result record per query). With `sink`, each record goes to
    `sink` as soon as its block of queries is scored, and the returned list is empty. A sharded run scores
    its own queries into the cache and stops there (no fusion, records or evaluation)."""
    check_files(dataset)
    run = Run(dataset, settings, store)
    retrieved = retrieve(run, parts.backbone, parts.normalizer, parts.bank)
    base_scores, candidates = retrieved.scores, retrieved.candidates
    k = min(settings.retrieval.top_k, candidates.shape[1])
    top = candidates[:, :k]
    shard = settings.shard
    own = shard.mine(len(dataset.queries))  # every query, or a shard's share
    reranker = parts.reranker
    reranker.prepare(run, top, own)
    kept: list[dict[str, Any]] = []
    sink = sink or kept.append
    order = candidates.clone()
    for rows in blocks(len(own), QUERY_BLOCK):
        run.block = (rows.start, rows.stop, len(own))
        queries = own[rows.start : rows.stop]
        scored = reranker.score(run, queries, top[queries], base_scores[queries, :k])
        if shard.active:  # the scores are in the cache, for the final run
            continue
        t0 = time.perf_counter()
        fused = parts.fusion(base_scores[queries, :k], scored.scores)  # per query: a block at a time
        order[queries] = rerank(candidates[queries], fused)
        run.timed("fuse", t0)
        t0 = time.perf_counter()
        records = result_records(
            dataset,
            queries,
            candidates[queries],
            base_scores[queries],
            order[queries],
            fused,
            scored,
        )
        for record in records:
            sink(record)
        run.timed("records", t0)
    run.block = None
    if shard.active:  # metrics.json gets the call counts
        return {
            "shard/index": shard.index,
            "shard/count": shard.count,
            "shard/queries": len(own),
            **run.report(),
        }, []
    t0 = time.perf_counter()
    metrics: dict[str, Any] = evaluate(
        dataset, {BASE: candidates, RERANKED: order}, settings.recall_at, retrieved.subset_scores
    )
    metrics["results/digest"] = ranking_digest(dataset, order)
    run.timed("evaluate", t0)
    metrics.update(reranker.metrics())
    metrics.update(run.report())
    metrics.update(retrieved.metrics)  # a normaliser's bank calls
    return metrics, kept


def evaluate_precomputed(
    dataset: Dataset, fusion: Fusion, settings: Settings
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Base and fused recall from precomputed score matrices (the reference release); loads no model."""
    pre = dataset.precomputed
    assert pre is not None
    run = Run(dataset, settings, store=None)
    t0 = time.perf_counter()
    base = torch.from_numpy(pre.base_scores)
    depth = min(settings.depth, base.shape[1])
    base_scores, candidates = base.topk(depth, dim=1)
    run.timed("retrieve", t0)
    t0 = time.perf_counter()
    k = min(settings.retrieval.top_k, depth)
    text_scores = torch.from_numpy(pre.text_scores).gather(1, candidates[:, :k])
    fused = fusion(base_scores[:, :k], text_scores)
    order = rerank(candidates, fused)
    run.timed("fuse", t0)
    t0 = time.perf_counter()
    metrics: dict[str, Any] = evaluate(dataset, {BASE: candidates, RERANKED: order}, settings.recall_at)
    metrics["results/digest"] = ranking_digest(dataset, order)
    run.timed("evaluate", t0)
    metrics.update(run.runner.report(model_stages=()))
    questions = pre.questions or [[] for _ in dataset.queries]
    scored = Scored(text_scores, [question_fields(replies.Questions([], qs, True)) for qs in questions])
    queries = range(len(dataset.queries))
    results = result_records(dataset, queries, candidates, base_scores, order, fused, scored)
    return metrics, results
