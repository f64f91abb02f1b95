"""VISA as a re-ranker: describe each top-K item (the describer), ask each query's questions (the question
LLM), answer them on each candidate (the answering MLLM), and score the query against each candidate's
passage, its answers then its description (the text scorer). The stages themselves, each a cached call, are
`visa.method.stages.Run`'s; this module orders them and says what each query's record and metrics hold."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch

from visa.core.abilities import Closable, Counting
from visa.data import Dataset, Item, Query
from visa.generation import Generator
from visa.method import replies
from visa.method.passages import build_passage, composed_query_text, item_passage_text
from visa.method.rerankers import Scored
from visa.method.settings import Settings
from visa.method.stages import Run
from visa.scorers import Scorer


def build_passages(
    dataset: Dataset,
    top: torch.Tensor,
    questions: list[replies.Questions],
    answers: list[list[list[str]]],
    descriptions: dict[str, str],
    separator: str,
) -> list[list[str]]:
    """passages[query][rank]: what the re-ranker reads about each candidate (answers, then description); the
    rows of `top`, `questions` and `answers` are the same queries (all of them, or a block)."""
    return [
        [
            build_passage(
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
    run: Run, scorer: Scorer, queries: list[Query], query_texts: list[str], passages: list[list[str]]
) -> list[float]:
    pairs = [(t, p) for t, row in zip(query_texts, passages) for p in row]
    pair_queries = [q for q, row in zip(queries, passages) for _ in row]
    return run.score(scorer, pairs, pair_queries)


def describe_candidates(run: Run, describer: Generator, top: torch.Tensor) -> dict[str, str]:
    """Descriptions of the top-K candidates and of the references of composed queries (the text stages see
    a reference through its description); a text-only item is its own description."""
    dataset = run.dataset
    in_top = sorted(set(top.flatten().tolist()))
    to_describe: dict[str, Item] = {dataset.gallery[i].id: dataset.gallery[i] for i in in_top}
    to_describe.update({q.reference.id: q.reference for q in dataset.queries if q.reference is not None})
    media = [item for item in to_describe.values() if item.kind != "text"]
    descriptions = run.describe(describer, media)
    descriptions.update({i.id: i.text or "" for i in to_describe.values() if i.kind == "text"})
    return descriptions


def question_metrics(
    questions: list[replies.Questions], tries: list[tuple[int, int]], settings: Settings
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


def question_fields(questions: replies.Questions) -> dict[str, Any]:
    """A query's questions as its results.jsonl record shows them."""
    return {
        "key_phrases": questions.key_phrases,
        "questions": questions.questions,
        "questions_parsed": questions.parsed,
        "question_tries": questions.tries,  # 1 + the retries this query's reply needed
        "question_reply": questions.raw,  # the question LLM's reply as written (its last try)
    }


class VisaReranker:
    """The method's re-ranker (`reranker=visa`); its parts are the run's question_llm, answer_mllm,
    describer and scorer."""

    uses: tuple[str, ...] = ("question_llm", "answer_mllm", "describer", "scorer")
    label = "VISA"  # the console's row: "+ VISA"

    def __init__(self, question_llm: Generator, answer_mllm: Generator, describer: Generator, scorer: Scorer):
        self.question_llm, self.answer_mllm, self.describer = question_llm, answer_mllm, describer
        self.scorer = scorer
        self.settings = Settings()
        self.descriptions: dict[str, str] = {}
        self.query_texts: dict[int, str] = {}  # by query index: the query as the text stages read it
        self.questions: dict[int, replies.Questions] = {}
        self.question_tries: list[tuple[int, int]] = []

    def generators(self) -> dict[str, Generator]:
        return {
            "question_llm": self.question_llm,
            "answer_mllm": self.answer_mllm,
            "describer": self.describer,
        }

    def prepare(self, run: Run, top: torch.Tensor, queries: Sequence[int]) -> None:
        """Describe every query's candidates (a shard too: the describe stage is shared between shards),
        then ask the questions of `queries`."""
        self.settings = run.settings
        self.descriptions = describe_candidates(run, self.describer, top)
        dataset = run.dataset
        texts = [composed_query_text(dataset.queries[q], self.descriptions) for q in queries]
        asking = run
        if len(queries) < len(dataset.queries):  # a shard: a run over its own queries, in the same cache
            asking = Run(
                replace(dataset, queries=[dataset.queries[q] for q in queries]), run.settings, run.store
            )
            asking.runner = run.runner  # one report for the whole shard
        questions = asking.ask(self.question_llm, texts)
        self.question_tries = asking.question_tries
        self.query_texts, self.questions = dict(zip(queries, texts)), dict(zip(queries, questions))

    def score(self, run: Run, queries: Sequence[int], top: torch.Tensor, base: torch.Tensor) -> Scored:
        """Answer the block's questions on its candidates, build their passages and score them."""
        questions = [self.questions[q] for q in queries]
        answers = run.answer(self.answer_mllm, questions, top, self.descriptions)
        scores, passages = self.score_block(run, queries, top, questions, answers)
        return Scored(
            scores,
            [question_fields(q) for q in questions],
            [[{"answers": a, "passage": p} for a, p in zip(*row)] for row in zip(answers, passages)],
        )

    def score_block(
        self,
        run: Run,
        queries: Sequence[int],
        top: torch.Tensor,
        questions: list[replies.Questions],
        answers: list[list[list[str]]],
    ) -> tuple[torch.Tensor, list[list[str]]]:
        """The scorer's scores [block, K] of each candidate's passage (its answers, then its description),
        and the passages."""
        dataset = run.dataset
        separator = self.settings.passage.separator
        passages = build_passages(dataset, top, questions, answers, self.descriptions, separator)
        texts = [self.query_texts[q] for q in queries]
        scores = score_passages(run, self.scorer, [dataset.queries[q] for q in queries], texts, passages)
        return torch.tensor(scores, dtype=torch.float32).view(len(queries), top.shape[1]), passages

    def metrics(self) -> dict[str, Any]:
        questions = list(self.questions.values())
        return {
            **question_metrics(questions, self.question_tries, self.settings),
            "answers/mode": self.settings.answers.mode,
        }

    def close(self) -> None:
        """Let every part that started something (a launched server) stop it."""
        for part in (*self.generators().values(), self.scorer):
            if isinstance(part, Closable):
                part.close()

    def counters(self) -> dict[str, int]:
        """The parts' own counters as metrics: the generators' (e.g. malformed replies, retried requests),
        the scorer's (pairs cut to its token budgets)."""
        out = {}
        named = [(f"generation/{group}", part) for group, part in self.generators().items()]
        for prefix, part in [*named, ("score", self.scorer)]:
            if isinstance(part, Counting):
                for name, value in part.counters().items():
                    out[f"{prefix}/{name}"] = value
        return out


class DescriptionReranker(VisaReranker):
    """`reranker=visa_description`, the paper's ablation: the scorer reads each candidate's general
    description alone, no questions asked or answered (the same scores as `reranker=visa questions.num=0`,
    under the same cache keys); its parts are the describer and the scorer."""

    uses = ("describer", "scorer")
    label = "VISA, descriptions only"

    def __init__(self, describer: Generator, scorer: Scorer):
        self.describer, self.scorer = describer, scorer
        self.settings = Settings()
        self.descriptions = {}
        self.query_texts = {}
        self.questions = {}
        self.question_tries = []

    def generators(self) -> dict[str, Generator]:
        return {"describer": self.describer}

    def prepare(self, run: Run, top: torch.Tensor, queries: Sequence[int]) -> None:
        self.settings = run.settings
        self.descriptions = describe_candidates(run, self.describer, top)
        dataset = run.dataset
        self.query_texts = {q: composed_query_text(dataset.queries[q], self.descriptions) for q in queries}
        self.questions = {q: replies.Questions([], [], parsed=True) for q in queries}

    def score(self, run: Run, queries: Sequence[int], top: torch.Tensor, base: torch.Tensor) -> Scored:
        questions = [self.questions[q] for q in queries]
        answers: list[list[list[str]]] = [[[] for _ in range(top.shape[1])] for _ in queries]
        scores, passages = self.score_block(run, queries, top, questions, answers)
        return Scored(
            scores,
            [{} for _ in queries],
            [[{"passage": p} for p in row] for row in passages],
        )

    def metrics(self) -> dict[str, Any]:
        return {}
