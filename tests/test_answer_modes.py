"""answers.mode: per_question (a call per candidate and question) or per_candidate (a call per candidate)."""

from __future__ import annotations

import pytest
import torch
from helpers import tiny_models

from visa.cache import SQLiteStore  # noqa: E402
from visa.core.errors import VisaError  # noqa: E402
from visa.data import Dataset, Item, Query  # noqa: E402
from visa.generation.hf import HFVisionGenerator  # noqa: E402
from visa.method.prompts import all_answers_prompt  # noqa: E402
from visa.method.replies import Questions, parse_all_answers  # noqa: E402
from visa.method.settings import AnswersSettings, RetrievalSettings, Settings
from visa.method.stages import Run  # noqa: E402

QUESTIONS = ["Is there a dog in the picture?", "What colour is the car?", "How many people are there?"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("modes")
    paths = tiny_models.write_images(root / "imgs", 3)
    gallery = [Item(f"i{n}", str(p)) for n, p in enumerate(paths)]
    dataset = Dataset("tiny", gallery, [Query("a dog and a red car", (0,)), Query("three people", (1,))])
    vlm = tiny_models.qwen2_vl_dir(root / "vlm")
    return dataset, vlm, root


@pytest.mark.parametrize(
    "mode,calls_per_candidate,encoded", [("per_question", 3, 4), ("per_candidate", 1, 3)]
)
def test_calls_and_media_per_mode(setup, mode, calls_per_candidate, encoded, tmp_path):
    dataset, vlm, _ = setup
    questions = [Questions(["dog"], QUESTIONS, True), Questions(["people"], QUESTIONS, True)]
    candidates = torch.tensor([[0, 1], [1, 2]])
    replies = []
    for prefix_cache in (False, True):
        gen = HFVisionGenerator(
            model=str(vlm), device="cpu", max_new_tokens=3, batch_size=8, prefix_cache=prefix_cache
        )
        settings = Settings(
            retrieval=RetrievalSettings(top_k=2), answers=AnswersSettings(mode=mode), progress=False
        )
        run = Run(dataset, settings, SQLiteStore(tmp_path / f"cache-{prefix_cache}"))
        answers = run.answer(gen, questions, candidates, {})
        assert run.runner.stats["answer"].computed == 2 * 2 * calls_per_candidate
        assert all(len(per_rank) == 3 for per_query in answers for per_rank in per_query)
        replies.append(answers)
        if not prefix_cache:  # the vision encoder sees each item once per call
            assert gen.media_encoded == 2 * 2 * calls_per_candidate
        else:  # once per item and batch (8 prompts): the prompts about one item share its prefix
            assert gen.media_encoded == encoded
    assert replies[0] == replies[1]


def test_mode_is_part_of_the_cache_key(setup, tmp_path):
    dataset, vlm, _ = setup
    gen = HFVisionGenerator(model=str(vlm), device="cpu", max_new_tokens=3)
    cache = SQLiteStore(tmp_path / "cache")
    questions = [Questions([], QUESTIONS[:1], True), Questions([], QUESTIONS[:1], True)]
    candidates = torch.tensor([[0], [1]])
    for mode, computed in (("per_question", 2), ("per_candidate", 2), ("per_question", 0)):
        run = Run(
            dataset,
            Settings(
                retrieval=RetrievalSettings(top_k=1), answers=AnswersSettings(mode=mode), progress=False
            ),
            cache,
        )
        run.answer(gen, questions, candidates, {})
        assert run.runner.stats["answer"].computed == computed, mode


def test_all_answers_prompt_and_parsing():
    prompt = all_answers_prompt(QUESTIONS, ["dog"], ("x.png",), "image")
    assert all(f"{i}. {q}" in prompt.text for i, q in enumerate(QUESTIONS, 1)) and prompt.media == ("x.png",)
    reply = "1. Yes, a dog sits on the grass.\n2) The car is red\nand shiny.\nnoise"
    assert parse_all_answers(reply, 3) == [
        "Yes, a dog sits on the grass.",
        "The car is red and shiny. noise",
        "Uncertain",
    ]
    assert parse_all_answers("A dog.", 1) == ["A dog."]
    with pytest.raises(VisaError, match="answers.mode"):
        Settings(answers=AnswersSettings(mode="per_item"))
