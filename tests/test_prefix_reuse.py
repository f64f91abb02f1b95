"""Shared-prefix reuse in the transformers generators: the same replies as without it, at temperature 0 and
sampled, on tiny random-weight Qwen2 (text) and Qwen2-VL (images) models; the prefix is computed once and
reused by later batches; an item's pixels are encoded once for all the questions about it."""

from __future__ import annotations

from dataclasses import replace

import pytest
from helpers import tiny_models

from visa.generation.hf import HFTextGenerator, HFVisionGenerator
from visa.method.prompts import Prompt, answer_prompt, question_prompt

QUERIES = [
    "two dogs run on the beach",
    "a red car in the street",
    "a man holding a cat",
    "three children play",
]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("prefix")
    return (
        tiny_models.qwen2_text_dir(root / "llm"),
        tiny_models.qwen2_vl_dir(root / "vlm"),
        tiny_models.write_images(root / "imgs", 3),
    )


def test_text_replies_are_the_same_with_and_without_prefix_reuse(models):
    llm, _, _ = models
    prompts = [question_prompt(q, 3, template="fewshot") for q in QUERIES]
    off = HFTextGenerator(model=str(llm), device="cpu", max_new_tokens=12, prefix_cache=False)
    on = HFTextGenerator(model=str(llm), device="cpu", max_new_tokens=12)
    assert on.prefix_cache  # the default
    # the first batch shares "a red" too; later batches reuse its cache, cut to what they share
    for batch in (prompts[:2], prompts[2:], prompts, prompts[3:]):
        assert on.generate(batch) == off.generate(batch)
    computed = on.counters()["prefix_tokens/computed"]
    assert computed > 0
    assert on.counters()["prefix_tokens/reused"] > 3 * computed
    assert off.counters()["prefix_tokens/reused"] == 0
    sampled = [replace(p, seed=3, temperature=1.0) for p in prompts]
    assert on.generate(sampled) == off.generate(sampled)


def test_prompts_without_a_common_start_take_the_plain_path(models):
    llm, _, _ = models
    gen = HFTextGenerator(model=str(llm), device="cpu", max_new_tokens=4)
    plain = HFTextGenerator(model=str(llm), device="cpu", max_new_tokens=4, prefix_cache=False)
    prompts = [Prompt("dog"), Prompt("a red car")]  # the chat template alone is shorter than the minimum
    assert gen.generate(prompts) == plain.generate(prompts)
    assert gen.counters()["prefix_tokens/computed"] == 0


def test_vision_replies_are_the_same_and_each_item_is_encoded_once(models):
    _, vlm, images = models
    questions = ["is there a dog ?", "what colour is the car ?", "how many people are there ?"]
    prompts = [answer_prompt(q, ["dog", "car"], (str(im),), "image") for im in images[:2] for q in questions]
    prompts.append(answer_prompt(questions[0], ["dog"], (str(images[2]),), "image"))  # alone: plain path
    prompts += [
        Prompt(f"describe the main subject of the picture in detail, the {w} one") for w in ("red", "blue")
    ]
    off = HFVisionGenerator(model=str(vlm), device="cpu", max_new_tokens=6, batch_size=16, prefix_cache=False)
    on = HFVisionGenerator(model=str(vlm), device="cpu", max_new_tokens=6, batch_size=16)
    assert on.generate(prompts) == off.generate(prompts)
    assert off.counters()["media_encoded"] == 7 and on.counters()["media_encoded"] == 3
    assert on.counters()["prefix_tokens/reused"] > 0
