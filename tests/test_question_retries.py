"""The ask stage's retries: a reply that does not parse is asked again with a new seed (sampled at
questions.retry_temperature) before the query falls back; every try is cached and counted."""

from __future__ import annotations

import pytest
from helpers import tiny_models

from visa.cache import SQLiteStore  # noqa: E402
from visa.core.errors import VisaError  # noqa: E402
from visa.data import Dataset, Item, Query  # noqa: E402
from visa.generation.hf import HFTextGenerator  # noqa: E402
from visa.generation.openai_api import OpenAIChatGenerator  # noqa: E402
from visa.method.prompts import Prompt  # noqa: E402
from visa.method.settings import QuestionsSettings, RetrievalSettings, Settings
from visa.method.stages import Run  # noqa: E402

GOOD = "key phrases:\n1. a dog\nquestions:\n1. Is there a dog?\n2. Is it brown?\n3. Is it running?"


class ScriptedLLM:
    """A question LLM whose reply depends on the request's sampling: it answers in the expected layout only
    from the given seed on (what a re-sampled reply can do); it records every request it gets."""

    uses_context = False
    batch_size = 8

    def __init__(self, good_from_seed: dict[str, int]):
        self.good_from_seed = good_from_seed  # query word -> first seed that parses (absent: never)
        self.requests: list[Prompt] = []

    def identity(self) -> dict:
        return {"generator": "scripted", "seed": 0}

    def generate(self, prompts: list[Prompt]) -> list[str]:
        self.requests += prompts
        out = []
        for p in prompts:
            word = next(w for w in self.good_from_seed if w in p.text)
            good_from = self.good_from_seed[word]
            out.append(GOOD if good_from is not None and (p.seed or 0) >= good_from else "I cannot help.")
        return out


def _dataset(tmp_path) -> Dataset:
    paths = tiny_models.write_images(tmp_path / "imgs", 1)
    queries = [Query("zebra at noon", (0,)), Query("yak in snow", (0,)), Query("xerus on sand", (0,))]
    return Dataset("tiny", [Item("i0", str(paths[0]))], queries)


def test_unparsed_replies_are_retried_with_new_seeds_then_fall_back(tmp_path):
    dataset = _dataset(tmp_path)
    llm = ScriptedLLM({"zebra": 0, "yak": 2, "xerus": None})  # parses at once, on retry 2, never
    settings = Settings(
        retrieval=RetrievalSettings(top_k=1),
        questions=QuestionsSettings(retries=2, retry_temperature=0.2),
        progress=False,
    )
    run = Run(dataset, settings, SQLiteStore(tmp_path / "cache"))
    questions = run.ask(llm)
    assert [q.parsed for q in questions] == [True, True, False]
    assert [q.tries for q in questions] == [1, 3, 3]
    assert run.question_tries == [(3, 1), (2, 0), (2, 1)]  # (asked, parsed) at try 0, 1, 2
    retries = [p for p in llm.requests if p.seed is not None]
    assert [(p.seed, p.temperature) for p in retries] == [(1, 0.2), (1, 0.2), (2, 0.2), (2, 0.2)]
    assert run.runner.stats["ask"].computed == 7
    assert run.report()["calls/ask/computed"] == 7

    again = Run(dataset, settings, SQLiteStore(tmp_path / "cache"))  # every try was cached under its own key
    llm.requests.clear()
    assert [q.parsed for q in again.ask(llm)] == [True, True, False]
    assert llm.requests == [] and again.runner.stats["ask"].cached == 7


def test_no_retries_falls_back_at_once(tmp_path):
    llm = ScriptedLLM({"zebra": 0, "yak": 2, "xerus": None})
    run = Run(
        _dataset(tmp_path),
        Settings(questions=QuestionsSettings(retries=0), progress=False),
        SQLiteStore(tmp_path / "c"),
    )
    assert [q.parsed for q in run.ask(llm)] == [True, False, False]
    assert len(llm.requests) == 3
    with pytest.raises(VisaError, match="questions.retries"):
        Settings(questions=QuestionsSettings(retries=-1))


def test_generators_take_a_prompts_seed_and_temperature():
    gen = HFTextGenerator(model="m", temperature=0.0, seed=5)
    assert gen.sampling_of(Prompt("a")) == (0.0, 5)
    assert gen.sampling_of(Prompt("a", seed=6, temperature=0.2)) == (0.2, 6)
    api = OpenAIChatGenerator(model="m", url="http://127.0.0.1:1/v1", repetition_penalty=1.05)
    body = api.request_body(Prompt("a", seed=7, temperature=0.2))
    assert (body["temperature"], body["seed"], body["repetition_penalty"]) == (0.2, 7, 1.05)
    assert "seed" not in api.request_body(Prompt("a"))  # greedy: no seed


def test_retry_seeds_change_a_real_models_reply(tmp_path):
    """The tiny Qwen2 chat model samples differently under two retry seeds and identically under one."""
    model = tiny_models.qwen2_text_dir(tmp_path / "qwen")
    gen = HFTextGenerator(model=str(model), device="cpu", max_new_tokens=8, temperature=0.0)
    ask = Prompt("describe the dog", seed=1, temperature=1.0)
    one = gen.generate([ask])
    assert gen.generate([ask]) == one
    replies = {gen.generate([Prompt("describe the dog", seed=s, temperature=1.0)])[0] for s in range(1, 6)}
    assert len(replies) > 1
