"""The model stages of a run (encode, describe, ask, answer, score), each one call of the one
`visa.cache.StageRunner`, keyed by the model's identity and the stage's inputs, so a repeated run, a sweep
or a resumed run recomputes nothing it already has. A sharded run (`visa.method.shard`) does its share of
each stage here and reads the rest from the shared cache."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from visa.backbones import Backbone, StreamingBackbone
from visa.cache import StageRunner, Store, batched, make_key, model_label
from visa.cache.runner import Stream
from visa.core.errors import VisaError
from visa.core.prompt import Prompt
from visa.data import Dataset, Item
from visa.generation import Generator, StreamingGenerator, YesNoScorer
from visa.method import prompts
from visa.method.keys import item_fingerprint, visual_keys, with_reference
from visa.method.replies import (
    Questions,
    first_questions,
    parse_all_answers,
    parse_questions,
    top_up,
)
from visa.method.settings import Settings
from visa.method.shard import SHARED_STAGES, wait_for_others
from visa.scorers import MediaScorer, Scorer

MODEL_STAGES = (
    "encode_text",
    "encode_visual",
    "encode_composed",
    "describe",
    "ask",
    "answer",
    "score",
    "judge",
    "cross_score",
)


def generator_stream(model: Generator) -> Stream:
    """The model's own stream of results if it has one (servers), else its batched generate."""
    if isinstance(model, StreamingGenerator):
        return model.stream
    return batched(model.generate, model.batch_size, model)


def media_count(model: Any) -> Callable[[Any], int]:
    """The images and videos one input of a stage shows `model` (its cost's `media`): an item to encode is
    one unless it is text; a prompt, its media unless the model reads descriptions instead."""

    def count(value: Any) -> int:
        if isinstance(value, Item):
            return int(value.kind != "text")
        if isinstance(value, Prompt):
            return 0 if getattr(model, "uses_context", False) else len(value.media)
        return 0

    return count


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
    """One evaluation of a dataset: its model stages, and the per-stage statistics of metrics.json."""

    def __init__(self, dataset: Dataset, settings: Settings, store: Store | None):
        self.dataset, self.settings, self.store = dataset, settings, store
        self.runner = StageRunner(store, progress=settings.progress)
        self.question_tries: list[tuple[int, int]] = []  # (asked, parsed) per question try
        self.block: tuple[int, int, int] | None = None  # (first, end, of): the queries a stage works on now

    def stage(
        self,
        name: str,
        keys: list[str],
        inputs: list[Any],
        stream: Stream,
        model: Any = "",
        part: Any = None,
    ) -> list[Any]:
        """Results of stage `name` for `inputs` (cached under `keys`); `model`: the identity of the stage's
        model, for the cache's summary by model; `part`: the model object (what its inputs' media count)."""
        shard, label, media = self.settings.shard, model_label(model), media_count(part)
        if not shard.active or name not in SHARED_STAGES:
            note = f"queries {self.block[0] + 1}-{self.block[1]} of {self.block[2]}" if self.block else None
            return self.runner.run(name, keys, inputs, stream, model=label, note=note, media=media)
        # this shard's share, then the other shards' results from the store
        assert self.store is not None, "a sharded run needs a shared cache"
        mine = shard.mine(len(keys))
        self.runner.run(
            name, [keys[i] for i in mine], [inputs[i] for i in mine], stream, model=label, media=media
        )
        by_key = dict(zip(keys, inputs))

        def compute_missing(missing: list[str]) -> dict[str, Any]:
            results = self.runner.run(
                name, missing, [by_key[k] for k in missing], stream, model=label, media=media
            )
            return dict(zip(missing, results))

        def fetch(wanted: list[str]) -> dict[str, Any]:
            return self.runner.fetch(name, wanted)

        found = wait_for_others(shard, name, keys, fetch, compute_missing)
        return [found[k] for k in keys]

    def timed(self, name: str, t0: float) -> None:
        """Adds the seconds since `t0` to `name` (steps without a model: retrieve, fuse, evaluate)."""
        self.runner.add_time(name, time.perf_counter() - t0)

    def report(self) -> dict[str, Any]:
        """calls/<stage>/computed|cached of the model stages, time/<stage> of every stage that ran, and
        cost/<stage>/... and cost/per_query/... over the results the run used, cached or not."""
        return self.runner.report(MODEL_STAGES, queries=len(self.dataset.queries))

    # -- the backbone's stages ---------------------------------------------------------------------------
    def encode_text(self, backbone: Backbone, texts: list[str], stage: str = "encode_text") -> list[Any]:
        """`stage`: the name the calls are counted under (a normaliser's bank: encode_bank); same keys."""
        ident = backbone.identity()
        return self.stage(
            stage,
            [make_key("encode_text", ident, t) for t in texts],
            texts,
            batched(lambda b: list(backbone.encode_text(b).numpy()), backbone.batch_size, backbone),
            ident,
            backbone,
        )

    def encode_composed(
        self, backbone: Backbone, items: list[Item], stage: str = "encode_composed"
    ) -> list[Any]:
        """Composed queries as the reference's media carrying the query's text."""
        ident = backbone.identity()
        return self.stage(
            stage,
            [make_key("encode_composed", ident, item_fingerprint(it)) for it in items],
            items,
            batched(lambda b: list(backbone.encode_visual(b).numpy()), backbone.batch_size),
            ident,
            backbone,
        )

    def encode_visual(self, backbone: Backbone, items: list[Item]) -> list[Any]:
        # a backbone's own stream_visual (data-parallel gallery encoding) when it has one
        stream: Stream = (
            backbone.stream_visual
            if isinstance(backbone, StreamingBackbone)
            else batched(lambda b: list(backbone.encode_visual(b).numpy()), backbone.batch_size)
        )
        return self.stage(
            "encode_visual", visual_keys(backbone, items), items, stream, backbone.identity(), backbone
        )

    # -- VISA's stages -------------------------------------------------------------------------------------
    def describe(self, describer: Generator, items: list[Item]) -> dict[str, str]:
        ident = describer.identity()
        ps = [Prompt(prompts.describe_prompt(i.kind), (i.path,), i.kind) for i in items]
        keys = [make_key("describe", ident, [p.as_key(), item_fingerprint(i)]) for p, i in zip(ps, items)]
        texts = self.stage("describe", keys, ps, generator_stream(describer), ident, describer)
        return {i.id: t for i, t in zip(items, texts)}

    def ask(self, question_llm: Generator, query_texts: list[str] | None = None) -> list[Questions]:
        """Questions for every query: a list of questions.max generated for each, of which the first
        questions.num are used. `query_texts`: each query as the LLM reads it (a composed query with its
        reference's description; default: the query texts).

        A query's list depends on the query, the prompt and the question LLM's settings only, never on
        questions.num, on the other queries or on what the cache holds: every query goes through the same
        re-ask schedule towards questions.max distinct questions (copies of the prompt's examples and repeats
        left out). A reply with fewer is asked again, up to questions.retries times, try t sampled at
        questions.retry_temperature with seed = the generator's seed + t and noise of its own
        (`visa.generation.sampling`), so a sweep over questions.num uses nested lists and costs one run at
        questions.max. With questions.constrained the reply is generated in the method's layout and a retry
        tops up the distinct questions of the tries before it (`top_up`); unconstrained, each try
        stands alone (the reference's re-sampling). A query left with fewer than questions.num questions
        falls back to the generic ones. Every try is cached under its own key. questions.num=0 asks
        nothing."""
        settings = self.settings.questions
        n = settings.max
        kind = self.dataset.gallery[0].kind if self.dataset.gallery else "image"
        self.question_tries = []
        query_texts = query_texts or [q.text for q in self.dataset.queries]
        if settings.num == 0:  # descriptions only: the question LLM is not asked
            return [Questions([], [], parsed=True) for _ in query_texts]
        identity = question_llm.identity()
        first = [
            prompts.question_prompt(t, n, kind, settings.prompt, settings.constrained) for t in query_texts
        ]
        parsed: list[Questions] = []
        pending = list(range(len(first)))
        for attempt in range(settings.retries + 1):
            ps = [
                first[i]
                if attempt == 0
                else replace(
                    first[i],
                    seed=(identity.get("seed") or 0) + attempt,
                    temperature=settings.retry_temperature,
                )
                for i in pending
            ]
            keys = [
                make_key("ask", identity, with_reference(p.as_key(), self.dataset.queries[i]))
                for p, i in zip(ps, pending)
            ]
            replies = self.stage("ask", keys, ps, generator_stream(question_llm), identity, question_llm)
            tried = [parse_questions(r, n, n, kind) for r in replies]
            if attempt > 0 and settings.constrained:
                tried = [top_up(parsed[i], q, n, n) for i, q in zip(pending, tried)]
            if attempt == 0:
                parsed = tried
            for i, q in zip(pending, tried):
                q.tries = attempt + 1
                parsed[i] = q
            self.question_tries.append((len(pending), sum(q.parsed for q in tried)))
            pending = [i for i in pending if not parsed[i].parsed]
            if not pending:
                break
        return [first_questions(p, settings.num, kind) for p in parsed]

    def answer(
        self,
        answer_mllm: Generator,
        questions: list[Questions],
        candidates: torch.Tensor,
        descriptions: dict[str, str],
    ) -> list[list[list[str]]]:
        """answers[query][rank][question]; queries whose questions fell back are not asked (their answers
        are ignored at scoring time, as in the method)."""
        ident = answer_mllm.identity()
        mode = self.settings.answers.mode
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
                    if answer_mllm.uses_context:
                        p = replace(p, context=descriptions[item.id])
                    slots.append((qi, rank))
                    ps.append(p)
                    keys.append(make_key("answer", ident, [{"mode": mode}, p.as_key(), fp]))
        texts = self.stage("answer", keys, ps, generator_stream(answer_mllm), ident, answer_mllm)
        k = candidates.shape[1]
        answers: list[list[list[str]]] = [[[] for _ in range(k)] for _ in questions]
        for (qi, rank), text in zip(slots, texts):
            if mode == "per_candidate":
                answers[qi][rank].extend(parse_all_answers(text, len(questions[qi].questions)))
            else:
                answers[qi][rank].append(text)
        return answers

    def judge(
        self, judge: YesNoScorer, prompts: list[Prompt], fingerprints: list[dict], yes: str, no: str
    ) -> list[float]:
        """P(yes) / (P(yes) + P(no)) of each prompt's first reply token; `fingerprints`: each prompt's item
        (its content, so a changed file is judged again)."""
        fn = lambda batch: judge.yes_no(batch, yes, no)  # noqa: E731
        ident = judge.yes_no_identity(yes, no)
        return self._pair_scores("judge", judge, ident, fn, prompts, fingerprints, "the judge's P(Yes)")

    def cross_score(self, model: MediaScorer, pairs: list[Prompt], fingerprints: list[dict]) -> list[float]:
        """A multimodal cross-encoder's relevance of each (query, item) pair; `fingerprints`: each pair's
        item (its content, so a changed file is scored again)."""
        ident = model.identity()
        return self._pair_scores(
            "cross_score", model, ident, model.score_media, pairs, fingerprints, "the cross-encoder's score"
        )

    def _pair_scores(
        self,
        stage: str,
        part: Any,
        ident: dict,
        fn: Callable[[list[Prompt]], list[float]],
        prompts: list[Prompt],
        fingerprints: list[dict],
        what: str,
    ) -> list[float]:
        """One score per (prompt, item) pair from `part` through `fn`, cached under the prompt and the item's
        fingerprint; a NaN or infinity stops the run with one line."""
        keys = [make_key(stage, ident, [p.as_key(), fp]) for p, fp in zip(prompts, fingerprints)]
        scores = self.stage(stage, keys, prompts, batched(fn, part.batch_size), ident, part)
        fix = f"check the weights and dtype of {type(part).__name__} ({str(ident)[:160]})"
        check_finite(np.array(scores, dtype=np.float32), what, [p.text for p in prompts], fix)
        return scores

    def score(
        self, scorer: Scorer, pairs: list[tuple[str, str]], pair_queries: list | None = None
    ) -> list[float]:
        """Scores of (query text, passage) pairs; `pair_queries[i]` is pair i's Query (None: text queries)."""
        ident = scorer.identity()
        keys = [
            make_key("score", ident, with_reference(list(p), q))
            for p, q in zip(pairs, pair_queries or [None] * len(pairs))
        ]
        scores = self.stage(
            "score", keys, pairs, batched(scorer.score, scorer.batch_size, scorer), ident, scorer
        )
        fix = f"check the scorer's weights and dtype ({str(ident)[:160]})"
        check_finite(np.array(scores, dtype=np.float32), "the scorer's score", [q for q, _ in pairs], fix)
        return scores
