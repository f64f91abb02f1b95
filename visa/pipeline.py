"""The VISA stage graph: retrieve -> describe -> ask -> answer -> score -> fuse -> evaluate.

Every model stage goes through one `visa.cache.StageRunner` (via `Run._stage`), keyed by the model's
identity and the stage's inputs, so a repeated run, a sweep or a resumed run recomputes nothing it already
has. The pipeline knows the interfaces of the parts (backbone, generators, scorer, fusion), never a
particular model.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from visa import prompts
from visa.backbones import Backbone
from visa.cache import StageRunner, Store, batched, make_key, model_label
from visa.composed import composed_query_text, item_passage_text, query_item
from visa.data import Dataset, Item
from visa.errors import VisaError
from visa.fusion import MinMaxFusion, rerank
from visa.generation import Generator
from visa.metrics import recall_at_k, recall_subset_at_k
from visa.pairwise import retrieve_pairwise
from visa.retrieval import check_index, ranked_candidates
from visa.scorers import Scorer
from visa.shard import SHARED_STAGES, Shard, wait_for_others

ANSWER_MODES = ("per_question", "per_candidate")
MODEL_STAGES = ("encode_text", "encode_visual", "encode_composed", "describe", "ask", "answer", "score")


@dataclass
class Components:
    """The parts of a run, each a class that satisfies its group's Protocol."""

    backbone: Backbone
    question_llm: Generator
    answer_mllm: Generator
    describer: Generator
    scorer: Scorer
    fusion: MinMaxFusion

    def generators(self) -> dict[str, Generator]:
        return {
            "question_llm": self.question_llm,
            "answer_mllm": self.answer_mllm,
            "describer": self.describer,
        }

    def close(self) -> None:
        """Let every part that started something (a launched server) stop it."""
        for part in (self.backbone, *self.generators().values(), self.scorer):
            close = getattr(part, "close", None)  # an optional ability (visa.generation.ClosableGenerator)
            if close is not None:
                close()

    def counters(self) -> dict[str, int]:
        """The parts' own counters as metrics: the generators' (e.g. malformed replies, retried requests),
        the scorer's (pairs cut to its token budgets)."""
        out = {}
        named = [(f"generation/{group}", part) for group, part in self.generators().items()]
        for prefix, part in [*named, ("score", self.scorer)]:
            counters = getattr(part, "counters", None)  # optional ability (ClosableGenerator, CountingScorer)
            for name, value in (counters() if counters else {}).items():
                out[f"{prefix}/{name}"] = value
        return out


@dataclass
class Settings:
    top_k: int = 20
    chunk_size: int = 1024
    gallery_chunk_size: int = 16384
    index: str = "torch"  # the top-K engine: torch or faiss (visa.retrieval)
    search_device: str = "cpu"
    num_questions: int = 3
    max_questions: int = 3
    recall_at: Sequence[int] = (1, 5, 10)
    question_retries: int = 2  # re-asks of a query whose reply does not parse, each with a new seed
    retry_temperature: float = 0.2  # ... sampled at this temperature (the reference re-samples at 0.2)
    passage_separator: str = ""  # between the answers and the description; "" as the reference joins them
    progress: bool = True
    answer_mode: str = "per_question"  # or "per_candidate" (all of a query's questions in one call)
    question_prompt: str = "paper"  # or "fewshot": worked examples a very small model can follow
    shard: Shard = field(default_factory=Shard)  # a sharded run: this run's 1/N of each stage (visa.shard)

    def __post_init__(self) -> None:
        if self.top_k < 1:
            raise VisaError(f"retrieval.top_k={self.top_k} must be at least 1")
        if self.chunk_size < 1:
            raise VisaError(f"retrieval.chunk_size={self.chunk_size} must be at least 1 (default 1024)")
        if not self.recall_at or min(self.recall_at) < 1:
            raise VisaError(f"recall_at={list(self.recall_at)} must list cut-offs of 1 or more, e.g. [1,5]")
        if not 0 <= self.num_questions <= self.max_questions:
            raise VisaError(
                f"questions.num={self.num_questions} must be between 0 and questions.max={self.max_questions}"
            )
        if self.question_prompt not in prompts.QUESTION_PROMPTS:
            names = ", ".join(prompts.QUESTION_PROMPTS)
            raise VisaError(f"questions.prompt={self.question_prompt!r} is not one of {names}")
        check_index(self.index)
        if self.answer_mode not in ANSWER_MODES:
            raise VisaError(f"answers.mode={self.answer_mode!r} is not one of {', '.join(ANSWER_MODES)}")
        if self.question_retries < 0 or self.retry_temperature < 0:
            raise VisaError(
                f"questions.retries={self.question_retries} and questions.retry_temperature="
                f"{self.retry_temperature} must be >= 0"
            )


def _stream(model) -> Any:
    """The model's own stream of results if it has one (servers), else its batched generate."""
    return getattr(model, "stream", None) or batched(model.generate, model.batch_size)


def item_fingerprint(item: Item) -> dict:
    """What identifies an item's content in cache keys: its path, size and modification time, and its text
    when it carries one (a media item without text keeps the key it always had)."""
    if item.kind == "text":
        return {"text": item.text}
    try:
        st = os.stat(item.path)
    except OSError as e:
        raise VisaError(
            f"{item.kind} not found or unreadable: {item.path} (item {item.id!r}): {e.strerror}"
        ) from e
    fingerprint = {"path": os.path.abspath(item.path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    if item.text is not None:
        fingerprint["text"] = item.text
    return fingerprint


def visual_keys(backbone, items: Sequence[Item]) -> list[str]:
    """The encode_visual stage's cache keys of `items`."""
    ident = backbone.identity()
    return [make_key("encode_visual", ident, item_fingerprint(i)) for i in items]


def check_finite(scores: np.ndarray | torch.Tensor, what: str, names: Sequence[str], fix: str) -> None:
    """Stop with one line when a model gave NaN or infinity: it would sort first and decide the ranking
    without a word, and it is not valid JSON in results.jsonl. `names` label the rows of `scores`."""
    finite = np.isfinite(np.asarray(scores))
    if not finite.all():
        bad = np.argwhere(~finite)
        row = int(bad[0][0])
        raise VisaError(
            f"{what} is not a finite number for {names[row][:80]!r} ({len(bad)} non-finite value(s)); {fix}"
        )


class Run:
    """One evaluation of a dataset; holds the per-stage statistics reported in metrics.json."""

    def __init__(self, dataset: Dataset, settings: Settings, store: Store | None):
        self.dataset, self.settings, self.store = dataset, settings, store
        self.runner = StageRunner(store, progress=settings.progress)
        self.question_tries: list[tuple[int, int]] = []  # (asked, parsed) per question try

    def _stage(self, name: str, keys: list[str], inputs: list[Any], stream, model: Any = "") -> list[Any]:
        """`model`: the identity of the stage's model, for the cache's summary by model."""
        shard, label = self.settings.shard, model_label(model)
        if not shard.active or name not in SHARED_STAGES:
            return self.runner.run(name, keys, inputs, stream, model=label)
        # this shard's share, then the other shards' results from the store
        mine = shard.mine(len(keys))
        self.runner.run(name, [keys[i] for i in mine], [inputs[i] for i in mine], stream, model=label)
        by_key = dict(zip(keys, inputs))

        def compute_missing(missing: list[str]) -> dict[str, Any]:
            results = self.runner.run(name, missing, [by_key[k] for k in missing], stream, model=label)
            return dict(zip(missing, results))

        found = wait_for_others(shard, name, keys, self.store.get_many, compute_missing)
        return [found[k] for k in keys]

    def _timed(self, name: str, t0: float) -> None:
        """Adds the seconds since `t0` to `name` (steps without a model: retrieve, fuse, evaluate)."""
        self.runner.add_time(name, time.perf_counter() - t0)

    # -- stages -----------------------------------------------------------------------------------------
    def _encode_texts(self, backbone, ident: dict, texts: list[str]) -> list[Any]:
        return self._stage(
            "encode_text",
            [make_key("encode_text", ident, t) for t in texts],
            texts,
            batched(lambda b: list(backbone.encode_text(b).numpy()), backbone.batch_size),
            ident,
        )

    def retrieve(self, backbone) -> tuple[torch.Tensor, torch.Tensor]:
        """(base scores, candidate indices) per query; enough columns for K and for the largest R@k.

        Text queries and text-only gallery items go through encode_text; gallery media (with or without
        text) through encode_visual; composed queries (a reference item + text) through encode_composed,
        as the reference's media carrying the query's text."""
        queries = self.dataset.queries
        if hasattr(backbone, "score_pairs"):  # a cross-attention matcher: every pair scored (visa.pairwise)
            depth = max(self.settings.top_k, *self.settings.recall_at)
            texts = [q.text for q in queries]
            return retrieve_pairwise(self._stage, make_key, backbone, texts, self.dataset.gallery, depth)
        ident = backbone.identity()
        plain = [i for i, q in enumerate(queries) if q.reference is None]
        composed = [i for i, q in enumerate(queries) if q.reference is not None]
        query_emb: list[Any] = [None] * len(queries)
        for i, e in zip(plain, self._encode_texts(backbone, ident, [queries[i].text for i in plain])):
            query_emb[i] = e
        if composed:
            items = [query_item(queries[i]) for i in composed]
            emb = self._stage(
                "encode_composed",
                [make_key("encode_composed", ident, item_fingerprint(it)) for it in items],
                items,
                batched(lambda b: list(backbone.encode_visual(b).numpy()), backbone.batch_size),
                ident,
            )
            for i, e in zip(composed, emb):
                query_emb[i] = e
        gallery = self.dataset.gallery
        texts = [i for i, item in enumerate(gallery) if item.kind == "text"]
        media = [i for i, item in enumerate(gallery) if item.kind != "text"]
        item_emb: list[Any] = [None] * len(gallery)
        for i, e in zip(texts, self._encode_texts(backbone, ident, [gallery[i].text for i in texts])):
            item_emb[i] = e
        media_items = [gallery[i] for i in media]
        emb = self._stage(
            "encode_visual",
            visual_keys(backbone, media_items),
            media_items,
            # a backbone's own stream_visual (data-parallel gallery encoding) when it has one
            getattr(backbone, "stream_visual", None)
            or batched(lambda b: list(backbone.encode_visual(b).numpy()), backbone.batch_size),
            ident,
        )
        for i, e in zip(media, emb):
            item_emb[i] = e
        query_array, item_array = np.stack(query_emb), np.stack(item_emb)
        fix = f"check the backbone's weights and dtype ({str(ident)[:160]})"
        check_finite(query_array, "the backbone's query embedding", [q.text for q in queries], fix)
        check_finite(item_array, "the backbone's embedding", [i.path or i.id for i in gallery], fix)
        t0 = time.perf_counter()
        depth = max(self.settings.top_k, *self.settings.recall_at)
        self.query_emb = torch.from_numpy(query_array)
        self.item_emb = torch.from_numpy(item_array)
        result = ranked_candidates(
            self.query_emb,
            self.item_emb,
            depth,
            self.settings.chunk_size,
            exclude=[q.exclude for q in queries],
            groups=self.dataset.groups,
            query_groups=[q.group for q in queries],
            gallery_chunk_size=self.settings.gallery_chunk_size,
            index=self.settings.index,
            device=self.settings.search_device,
        )
        self._timed("retrieve", t0)
        return result

    def describe(self, describer, items: list[Item]) -> dict[str, str]:
        ident = describer.identity()
        ps = [prompts.Prompt(prompts.describe_prompt(i.kind), (i.path,), i.kind) for i in items]
        keys = [make_key("describe", ident, [p.as_key(), item_fingerprint(i)]) for p, i in zip(ps, items)]
        texts = self._stage("describe", keys, ps, _stream(describer), ident)
        return {i.id: t for i, t in zip(items, texts)}

    def ask(self, question_llm, query_texts: list[str] | None = None) -> list[prompts.Questions]:
        """Questions for every query, generated once at questions.max; the first questions.num are used.
        `query_texts`: each query as the LLM reads it (a composed query with its reference's description;
        default: the query texts).

        A reply that does not parse is asked again, up to questions.retries times, each retry sampled at
        questions.retry_temperature with its own seed (the generator's seed + the retry's number), before
        the query falls back to the generic questions. Every try is cached under its own key."""
        n = self.settings.max_questions
        kind = self.dataset.gallery[0].kind if self.dataset.gallery else "image"
        identity = question_llm.identity()
        template = self.settings.question_prompt
        query_texts = query_texts or [q.text for q in self.dataset.queries]
        first = [prompts.question_prompt(t, n, kind, template) for t in query_texts]
        parsed: list[prompts.Questions] = []
        pending = list(range(len(first)))
        self.question_tries = []
        for attempt in range(self.settings.question_retries + 1):
            ps = [
                first[i]
                if attempt == 0
                else replace(
                    first[i],
                    seed=(identity.get("seed") or 0) + attempt,
                    temperature=self.settings.retry_temperature,
                )
                for i in pending
            ]
            keys = [
                make_key("ask", identity, self._with_reference(p.as_key(), self.dataset.queries[i]))
                for p, i in zip(ps, pending)
            ]
            replies = self._stage("ask", keys, ps, _stream(question_llm), identity)
            tried = [prompts.parse_questions(r, n) for r in replies]
            if attempt == 0:
                parsed = tried
            for i, q in zip(pending, tried):
                q.tries = attempt + 1
                parsed[i] = q
            self.question_tries.append((len(pending), sum(q.parsed for q in tried)))
            pending = [i for i in pending if not parsed[i].parsed]
            if not pending:
                break
        for p in parsed:
            p.questions = p.questions[: self.settings.num_questions]
        return parsed

    def answer(
        self,
        answer_mllm,
        questions: list[prompts.Questions],
        candidates: torch.Tensor,
        descriptions: dict[str, str],
    ) -> list[list[list[str]]]:
        """answers[query][rank][question]; queries whose questions fell back are not asked (their answers
        are ignored at scoring time, as in the method)."""
        ident = answer_mllm.identity()
        use_context = getattr(answer_mllm, "uses_context", False)
        mode = self.settings.answer_mode
        slots, ps, keys = [], [], []
        for qi, qs in enumerate(questions):
            if not qs.parsed or not qs.questions:
                continue
            for rank, gi in enumerate(candidates[qi].tolist()):
                item = self.dataset.gallery[gi]
                if item.kind == "text":  # nothing to look at: the passage is the item's text
                    continue
                fp = item_fingerprint(item)
                media = (item.path,)
                if mode == "per_candidate":  # one request for all the questions: the item is seen once
                    batch = [prompts.all_answers_prompt(qs.questions, qs.key_phrases, media, item.kind)]
                else:
                    batch = [prompts.answer_prompt(q, qs.key_phrases, media, item.kind) for q in qs.questions]
                for p in batch:
                    if use_context:
                        p = prompts.Prompt(p.text, p.media, p.media_kind, context=descriptions[item.id])
                    slots.append((qi, rank))
                    ps.append(p)
                    keys.append(make_key("answer", ident, [{"mode": mode}, p.as_key(), fp]))
        texts = self._stage("answer", keys, ps, _stream(answer_mllm), ident)
        k = candidates.shape[1]
        answers: list[list[list[str]]] = [[[] for _ in range(k)] for _ in questions]
        for (qi, rank), text in zip(slots, texts):
            if mode == "per_candidate":
                answers[qi][rank].extend(prompts.parse_all_answers(text, len(questions[qi].questions)))
            else:
                answers[qi][rank].append(text)
        return answers

    @staticmethod
    def _with_reference(key: Any, query) -> Any:
        """A cache key's content, with the reference's media for a composed query (text queries keep the
        key they always had)."""
        return (
            key
            if query is None or query.reference is None
            else [key, {"reference": item_fingerprint(query.reference)}]
        )

    def score(self, scorer, pairs: list[tuple[str, str]], pair_queries: list | None = None) -> list[float]:
        """Scores of (query text, passage) pairs; `pair_queries[i]` is pair i's Query (None: text queries)."""
        keys = [
            make_key("score", scorer.identity(), self._with_reference(list(p), q))
            for p, q in zip(pairs, pair_queries or [None] * len(pairs))
        ]
        stream = batched(scorer.score, scorer.batch_size)
        scores = self._stage("score", keys, pairs, stream, scorer.identity())
        fix = f"check the scorer's weights and dtype ({str(scorer.identity())[:160]})"
        check_finite(np.array(scores, dtype=np.float32), "the scorer's score", [q for q, _ in pairs], fix)
        return scores

    def evaluate(self, base_order: torch.Tensor, visa_order: torch.Tensor) -> dict[str, float]:
        """R@k of the backbone's and VISA's rankings; per gallery group and their average when the dataset
        has groups (FashionIQ); Recall_subset@1/2/3 when queries carry subsets (CIRR)."""
        t0 = time.perf_counter()
        queries = self.dataset.queries
        relevant = [q.relevant for q in queries]
        metrics: dict[str, float] = {}
        groups = self.dataset.groups
        for prefix, order in (("base", base_order), ("visa", visa_order)):
            if groups is None:
                for name, value in recall_at_k(order, relevant, self.settings.recall_at).items():
                    metrics[f"{prefix}/{name}"] = value
            else:  # each group's recall, and their mean (not pooled over queries)
                per_group = {}
                for group in groups:
                    rows = [i for i, q in enumerate(queries) if q.group == group]
                    if rows:
                        per_group[group] = recall_at_k(
                            order[rows], [relevant[i] for i in rows], self.settings.recall_at
                        )
                        for name, value in per_group[group].items():
                            metrics[f"{group}/{prefix}/{name}"] = value
                for k in self.settings.recall_at:
                    values = [r[f"R@{k}"] for r in per_group.values()]
                    metrics[f"{prefix}/R@{k}"] = round(sum(values) / len(values), 4)
            if any(q.subset for q in queries) and getattr(self, "query_emb", None) is not None:
                scores = [
                    (self.item_emb[list(q.subset)] @ self.query_emb[i]).tolist() if q.subset else []
                    for i, q in enumerate(queries)
                ]
                subsets = [q.subset for q in queries]
                for name, value in recall_subset_at_k(order, relevant, subsets, scores, (1, 2, 3)).items():
                    metrics[f"{prefix}/{name}"] = value
        self._timed("evaluate", t0)
        return metrics

    def report(self) -> dict[str, Any]:
        """calls/<stage>/computed|cached of the model stages and time/<stage> of every stage that ran."""
        return self.runner.report(MODEL_STAGES)


def run_visa(
    dataset: Dataset, parts: Components, settings: Settings, store: Store
) -> tuple[dict, list[dict]]:
    """Run every stage; returns (metrics, one result record per query)."""
    for item in dataset.gallery:  # a missing file stops the run here, before any model loads
        item_fingerprint(item)
    for query in dataset.queries:
        if query.reference is not None:
            item_fingerprint(query.reference)
    run = Run(dataset, settings, store)
    base_scores, candidates = run.retrieve(parts.backbone)
    k = min(settings.top_k, candidates.shape[1])
    top = candidates[:, :k]
    in_top = sorted(set(top.flatten().tolist()))
    # media to describe: the candidates, and the references of composed queries (the text stages see them
    # through their description); a text-only item is its own description
    to_describe = {dataset.gallery[i].id: dataset.gallery[i] for i in in_top}
    to_describe.update({q.reference.id: q.reference for q in dataset.queries if q.reference is not None})
    media = [item for item in to_describe.values() if item.kind != "text"]
    descriptions = run.describe(parts.describer, media)
    descriptions.update({i.id: i.text or "" for i in to_describe.values() if i.kind == "text"})
    if settings.shard.active:  # ask, answer and score: this shard's queries only; no evaluation
        return _shard_rest(dataset, parts, settings, run, top, descriptions), []
    query_texts = [composed_query_text(q, descriptions) for q in dataset.queries]
    questions = run.ask(parts.question_llm, query_texts)
    answers = run.answer(parts.answer_mllm, questions, top, descriptions)
    passages = [
        [
            prompts.build_passage(
                answers[qi][r],
                item_passage_text(dataset.gallery[gi], descriptions[dataset.gallery[gi].id]),
                questions[qi].parsed,
                settings.passage_separator,
            )
            for r, gi in enumerate(top[qi].tolist())
        ]
        for qi in range(len(dataset.queries))
    ]
    flat_pairs = [(t, p) for t, row in zip(query_texts, passages) for p in row]
    pair_queries = [q for q, row in zip(dataset.queries, passages) for _ in row]
    text_scores = torch.tensor(run.score(parts.scorer, flat_pairs, pair_queries), dtype=torch.float32).view(
        len(passages), k
    )
    t0 = time.perf_counter()
    fused = parts.fusion(base_scores[:, :k], text_scores)
    visa_order = rerank(candidates, fused)
    run._timed("fuse", t0)
    metrics = run.evaluate(candidates, visa_order)
    metrics["questions/fallback"] = sum(not q.parsed for q in questions)
    metrics["questions/retries"] = sum(asked for asked, _ in run.question_tries[1:])
    for attempt, (asked, ok) in enumerate(run.question_tries):
        metrics[f"questions/try_{attempt}/asked"] = asked
        metrics[f"questions/try_{attempt}/parsed"] = ok
    metrics["answers/mode"] = settings.answer_mode
    metrics.update(run.report())
    results = _records(
        dataset, candidates, base_scores, visa_order, fused, text_scores, questions, answers, passages
    )
    return metrics, results


def _shard_rest(
    dataset: Dataset, parts: Components, settings: Settings, run: Run, top: torch.Tensor, descriptions
) -> dict[str, Any]:
    """ask, answer and score for this shard's queries, into the cache; metrics.json gets the call counts."""
    own = settings.shard.mine(len(dataset.queries))
    part = Run(replace(dataset, queries=[dataset.queries[q] for q in own]), settings, run.store)
    part.runner = run.runner  # one report for the whole shard
    top = top[own]
    query_texts = [composed_query_text(q, descriptions) for q in part.dataset.queries]
    questions = part.ask(parts.question_llm, query_texts)
    answers = part.answer(parts.answer_mllm, questions, top, descriptions)
    pairs, pair_queries = [], []
    for qi, qs in enumerate(questions):
        for r, gi in enumerate(top[qi].tolist()):
            item = dataset.gallery[gi]
            passage_text = item_passage_text(item, descriptions[item.id])
            passage = prompts.build_passage(
                answers[qi][r], passage_text, qs.parsed, settings.passage_separator
            )
            pairs.append((query_texts[qi], passage))
            pair_queries.append(part.dataset.queries[qi])
    part.score(parts.scorer, pairs, pair_queries)
    shard = settings.shard
    return {"shard/index": shard.index, "shard/count": shard.count, "shard/queries": len(own), **run.report()}


def evaluate_precomputed(
    dataset: Dataset, fusion: MinMaxFusion, settings: Settings
) -> tuple[dict, list[dict]]:
    """Base and fused recall from precomputed score matrices (the reference release); loads no model."""
    pre = dataset.precomputed
    assert pre is not None
    run = Run(dataset, settings, store=None)
    t0 = time.perf_counter()
    base = torch.from_numpy(pre.base_scores)
    depth = min(max(settings.top_k, *settings.recall_at), base.shape[1])
    base_scores, candidates = base.topk(depth, dim=1)
    run._timed("retrieve", t0)
    t0 = time.perf_counter()
    k = min(settings.top_k, depth)
    text_scores = torch.from_numpy(pre.text_scores).gather(1, candidates[:, :k])
    fused = fusion(base_scores[:, :k], text_scores)
    visa_order = rerank(candidates, fused)
    run._timed("fuse", t0)
    metrics = run.evaluate(candidates, visa_order)
    metrics.update(run.runner.report(model_stages=()))
    questions = [prompts.Questions([], qs, True) for qs in (pre.questions or [[] for _ in dataset.queries])]
    results = _records(
        dataset, candidates, base_scores, visa_order, fused, text_scores, questions, None, None
    )
    return metrics, results


def _records(dataset, candidates, base_scores, visa_order, fused, text_scores, questions, answers, passages):
    k = fused.shape[1]
    gallery = dataset.gallery
    records = []
    for qi, query in enumerate(dataset.queries):
        top_ids = [gallery[g].id for g in candidates[qi, :k].tolist()]
        by_id = {
            top_ids[r]: {
                "base": round(base_scores[qi, r].item(), 6),
                "text": round(text_scores[qi, r].item(), 6),
                "fused": round(fused[qi, r].item(), 6),
            }
            for r in range(k)
        }
        record = {
            "index": qi,
            "query": query.text,
            **({"reference": query.reference.id} if query.reference is not None else {}),
            "ground_truth": [gallery[g].id for g in query.relevant],
            "key_phrases": questions[qi].key_phrases,
            "questions": questions[qi].questions,
            "questions_parsed": questions[qi].parsed,
            "question_tries": questions[qi].tries,  # 1 + the retries this query's reply needed
            "base_top": [{"id": i, "score": by_id[i]["base"]} for i in top_ids],
            "visa_top": [{"id": gallery[g].id, **by_id[gallery[g].id]} for g in visa_order[qi, :k].tolist()],
        }
        if answers is not None:
            record["candidates"] = [
                {"id": top_ids[r], "answers": answers[qi][r], "passage": passages[qi][r]} for r in range(k)
            ]
        records.append(record)
    return records
