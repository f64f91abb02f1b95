"""The VISA stage graph: retrieve -> describe -> ask -> answer -> score -> fuse -> evaluate.

Each model stage is a method of `visa.method.stages.Run` (one `visa.cache.StageRunner` underneath), the
retrieve stage is `visa.method.retrieve`, evaluation `visa.method.evaluate`, the records of results.jsonl
`visa.method.records`. This module only wires them; it knows the parts' interfaces, never a model.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch

from visa.cache import Store
from visa.data import Dataset, Item, Query
from visa.method import prompts
from visa.method.evaluate import evaluate, ranking_digest
from visa.method.fusion import Fusion, rerank
from visa.method.keys import item_fingerprint
from visa.method.parts import Components
from visa.method.passages import composed_query_text, item_passage_text
from visa.method.records import result_records
from visa.method.retrieve import retrieve
from visa.method.settings import Settings
from visa.method.stages import Run


def build_passages(
    dataset: Dataset,
    top: torch.Tensor,
    questions: list[prompts.Questions],
    answers: list[list[list[str]]],
    descriptions: dict[str, str],
    separator: str,
) -> list[list[str]]:
    """passages[query][rank]: what the re-ranker reads about each candidate (answers, then description); the
    rows of `top`, `questions` and `answers` are the same queries (all of them, or a block)."""
    return [
        [
            prompts.build_passage(
                answers[qi][r],
                item_passage_text(dataset.gallery[gi], descriptions[dataset.gallery[gi].id]),
                questions[qi].parsed,
                separator,
            )
            for r, gi in enumerate(top[qi].tolist())
        ]
        for qi in range(len(questions))
    ]


def score_passages(
    run: Run, parts: Components, queries: list[Query], query_texts: list[str], passages: list[list[str]]
) -> list[float]:
    pairs = [(t, p) for t, row in zip(query_texts, passages) for p in row]
    pair_queries = [q for q, row in zip(queries, passages) for _ in row]
    return run.score(parts.scorer, pairs, pair_queries)


def describe_candidates(run: Run, parts: Components, top: torch.Tensor) -> dict[str, str]:
    """Descriptions of the top-K candidates and of the references of composed queries (the text stages see
    a reference through its description); a text-only item is its own description."""
    dataset = run.dataset
    in_top = sorted(set(top.flatten().tolist()))
    to_describe: dict[str, Item] = {dataset.gallery[i].id: dataset.gallery[i] for i in in_top}
    to_describe.update({q.reference.id: q.reference for q in dataset.queries if q.reference is not None})
    media = [item for item in to_describe.values() if item.kind != "text"]
    descriptions = run.describe(parts.describer, media)
    descriptions.update({i.id: i.text or "" for i in to_describe.values() if i.kind == "text"})
    return descriptions


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


def question_metrics(
    questions: list[prompts.Questions], tries: list[tuple[int, int]], settings: Settings
) -> dict[str, Any]:
    """How the question LLM did: queries that fell back to the generic questions (count and percent), the
    re-asks, the questions left out as copies or repeats, the queries whose questions were topped up from
    several tries, each try's asked/parsed, and whether the replies were constrained to the layout."""
    if not tries:  # questions.num=0: nothing was asked
        return {}
    fallback = sum(not q.parsed for q in questions)
    out: dict[str, Any] = {
        "questions/fallback": fallback,
        "questions/fallback_share": round(100.0 * fallback / len(questions), 2) if questions else 0.0,
        "questions/retries": sum(asked for asked, _ in tries[1:]),
        "questions/dropped": sum(q.dropped for q in questions),
        "questions/topped_up": sum(q.topped_up for q in questions),
        "questions/constrained": settings.questions.constrained,
    }
    for attempt, (asked, ok) in enumerate(tries):
        out[f"questions/try_{attempt}/asked"] = asked
        out[f"questions/try_{attempt}/parsed"] = ok
    return out


def run_visa(
    dataset: Dataset,
    parts: Components,
    settings: Settings,
    store: Store,
    sink: Callable[[dict[str, Any]], None] | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Run every stage; returns (metrics, one result record per query). With `sink`, each record goes to
    `sink` as soon as its block of queries is scored, and the returned list is empty."""
    check_files(dataset)
    run = Run(dataset, settings, store)
    retrieved = retrieve(run, parts.backbone, parts.normalizer, parts.bank)
    base_scores, candidates = retrieved.scores, retrieved.candidates
    k = min(settings.retrieval.top_k, candidates.shape[1])
    top = candidates[:, :k]
    descriptions = describe_candidates(run, parts, top)
    if settings.shard.active:  # ask, answer and score: this shard's queries only; no evaluation
        return _shard_rest(run, parts, top, descriptions), []
    query_texts = [composed_query_text(q, descriptions) for q in dataset.queries]
    questions = run.ask(parts.question_llm, query_texts)
    kept: list[dict[str, Any]] = []
    sink = sink or kept.append
    n = len(dataset.queries)
    visa_order = candidates.clone()
    for rows in blocks(n):
        sl = slice(rows.start, rows.stop)
        run.block = (rows.start, rows.stop, n)
        answers = run.answer(parts.answer_mllm, questions[sl], top[sl], descriptions)
        separator = settings.passage.separator
        passages = build_passages(dataset, top[sl], questions[sl], answers, descriptions, separator)
        scores = score_passages(run, parts, dataset.queries[sl], query_texts[sl], passages)
        text_scores = torch.tensor(scores, dtype=torch.float32).view(len(rows), k)
        t0 = time.perf_counter()
        fused = parts.fusion(base_scores[sl, :k], text_scores)  # per query: a block at a time
        visa_order[sl] = rerank(candidates[sl], fused)
        run.timed("fuse", t0)
        t0 = time.perf_counter()
        for record in result_records(
            dataset,
            candidates[sl],
            base_scores[sl],
            visa_order[sl],
            fused,
            text_scores,
            questions[sl],
            answers,
            passages,
            first=rows.start,
        ):
            sink(record)
        run.timed("records", t0)
    run.block = None
    t0 = time.perf_counter()
    metrics: dict[str, Any] = evaluate(
        dataset, {"base": candidates, "visa": visa_order}, settings.recall_at, retrieved.subset_scores
    )
    metrics["results/digest"] = ranking_digest(dataset, visa_order)
    run.timed("evaluate", t0)
    metrics.update(question_metrics(questions, run.question_tries, settings))
    metrics["answers/mode"] = settings.answers.mode
    metrics.update(run.report())
    metrics.update(retrieved.metrics)  # a normaliser's bank calls
    return metrics, kept


def _shard_rest(
    run: Run, parts: Components, top: torch.Tensor, descriptions: dict[str, str]
) -> dict[str, Any]:
    """ask, answer and score for this shard's queries, into the cache; metrics.json gets the call counts."""
    dataset, settings = run.dataset, run.settings
    own = settings.shard.mine(len(dataset.queries))
    part = Run(replace(dataset, queries=[dataset.queries[q] for q in own]), settings, run.store)
    part.runner = run.runner  # one report for the whole shard
    top = top[own]
    query_texts = [composed_query_text(q, descriptions) for q in part.dataset.queries]
    questions = part.ask(parts.question_llm, query_texts)
    n = len(own)
    for rows in blocks(n):  # as in run_visa: the answers of one block of queries at a time
        sl = slice(rows.start, rows.stop)
        part.block = (rows.start, rows.stop, n)
        answers = part.answer(parts.answer_mllm, questions[sl], top[sl], descriptions)
        separator = settings.passage.separator
        passages = build_passages(part.dataset, top[sl], questions[sl], answers, descriptions, separator)
        score_passages(part, parts, part.dataset.queries[sl], query_texts[sl], passages)
    part.block = None
    shard = settings.shard
    return {"shard/index": shard.index, "shard/count": shard.count, "shard/queries": len(own), **run.report()}


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
    visa_order = rerank(candidates, fused)
    run.timed("fuse", t0)
    t0 = time.perf_counter()
    metrics: dict[str, Any] = evaluate(dataset, {"base": candidates, "visa": visa_order}, settings.recall_at)
    metrics["results/digest"] = ranking_digest(dataset, visa_order)
    run.timed("evaluate", t0)
    metrics.update(run.runner.report(model_stages=()))
    questions = [prompts.Questions([], qs, True) for qs in (pre.questions or [[] for _ in dataset.queries])]
    results = result_records(
        dataset, candidates, base_scores, visa_order, fused, text_scores, questions, None, None
    )
    return metrics, results
