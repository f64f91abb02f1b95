"""P(Yes) (`visa.generation.YesNoScorer`, INQUIRE's pointwise re-rank score) from transformers logits and from
a served model's top_logprobs, on tiny random-weight models: batch-independent, deterministic, the two paths
agree on one model, and a model made to answer "yes" to one prompt and "no" to another orders them so."""

from __future__ import annotations

import pytest
import torch
from helpers import tiny_models
from helpers.fake_openai_server import FakeOpenAIServer
from helpers.logprob_server import LogprobServer

from visa.core.errors import VisaError
from visa.core.prompt import Prompt
from visa.generation import YesNoScorer
from visa.generation.hf import HFTextGenerator, HFVisionGenerator
from visa.generation.openai_api import OpenAIChatGenerator
from visa.generation.pixel_describer import PixelDescriber
from visa.generation.yes_no import normal, probs_from_top_logprobs, yes_ratio

QUESTION = "is there a dog in the picture ? answer yes or no ."
# Socratic prompts: the text-only model reads each item's description instead of its pixels
ITEMS = [
    Prompt(QUESTION, ("dog.jpg",), "image", context="a dog running on the grass"),
    Prompt(QUESTION, ("car.jpg",), "image", context="a red car on the street"),
    Prompt(QUESTION, ("beach.jpg",), "image", context="two people standing on the beach"),
]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("yes_no")
    # byte-level BPE: "yes" and "no" are single tokens that decode as written
    llm = tiny_models.qwen2_text_dir(root / "llm", bpe=True)
    return llm, _made_to_answer(llm, root / "judge"), tiny_models.qwen2_vl_dir(root / "vlm"), root


def _made_to_answer(source, folder):
    """The tiny LLM with its yes/no rows of the output layer set (untied from the input embeddings) so that it
    answers "yes" to ITEMS[0] and "no" to ITEMS[1]: w_yes = -w_no = k v, v orthogonal to the midpoint m of the
    two prompts' last hidden states and with v.(h0 - h1) > 0, so v.h0 > 0 > v.h1."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source)
    lm = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32).eval()
    gen = HFTextGenerator(model=str(source), device="cpu", uses_context=True)
    hidden = []
    for p in ITEMS[:2]:
        text = tokenizer.apply_chat_template(gen.messages(p), tokenize=False, add_generation_prompt=True)
        ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            hidden.append(lm.model(input_ids=ids).last_hidden_state[0, -1])
    d, m = hidden[0] - hidden[1], (hidden[0] + hidden[1]) / 2
    v = d - (d @ m) / (m @ m) * m
    v = v * 12.0 / (v @ hidden[0])  # a logit gap of 2 * 12 for the first prompt
    weight = lm.lm_head.weight.detach().clone()
    weight[tokenizer.convert_tokens_to_ids("yes")] = v
    weight[tokenizer.convert_tokens_to_ids("no")] = -v
    lm.config.tie_word_embeddings = False
    lm.lm_head.weight = torch.nn.Parameter(weight)
    lm.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_words_are_matched_in_any_case_with_or_without_a_leading_space():
    top = [
        {"token": " Yes", "logprob": -1.0},
        {"token": "yes", "logprob": -2.0},
        {"token": "ĠNO", "logprob": -3.0},
        {"token": "maybe", "logprob": -0.5},
    ]
    p_yes, p_no, p_none = probs_from_top_logprobs(top, ["Yes", "No", "Absent"])
    assert p_yes == pytest.approx(torch.tensor([-1.0, -2.0]).exp().sum().item())
    assert p_no == pytest.approx(torch.tensor(-3.0).exp().item())
    assert p_none == 0.0  # not listed: probability 0, as INQUIRE reads GPT-4o
    assert yes_ratio(0.0, 0.0) == 0.0 and yes_ratio(0.3, 0.1) == pytest.approx(0.75)
    assert normal("▁Yes") == normal(" YES\n") == "yes"


def test_chat_generators_have_the_ability():
    assert isinstance(HFTextGenerator(model="m"), YesNoScorer)
    assert isinstance(HFVisionGenerator(model="m"), YesNoScorer)
    assert isinstance(OpenAIChatGenerator(model="m", url="http://127.0.0.1:1/v1"), YesNoScorer)
    assert not isinstance(PixelDescriber(), YesNoScorer)


def test_text_p_yes_is_batch_independent_and_reads_descriptions(models):
    """Each prompt runs alone: its score is bitwise the one it gets in any list of prompts."""
    llm, _, _, _ = models
    gen = HFTextGenerator(model=str(llm), device="cpu", uses_context=True, batch_size=2)
    probs = gen.first_token_probs(ITEMS, ("Yes", "No"))
    assert len(probs) == 3 and all(len(row) == 2 and 0 < sum(row) < 1 for row in probs)
    assert probs == [gen.first_token_probs([p], ("Yes", "No"))[0] for p in ITEMS]  # alone = in a batch
    assert gen.yes_no(ITEMS) == [y / (y + n) for y, n in probs] == gen.yes_no(ITEMS)
    assert len(set(gen.yes_no(ITEMS))) == 3  # the description changes the score
    ident = gen.yes_no_identity("Yes", "No")
    assert ident["uses_context"] is True and ident["yes"] == "Yes" and "temperature" not in ident
    with pytest.raises(VisaError, match="cannot see images"):
        HFTextGenerator(model=str(llm), device="cpu").yes_no(ITEMS[:1])
    with pytest.raises(VisaError, match="'Perhaps' is not a single token"):
        gen.first_token_probs(ITEMS[:1], ("Perhaps",))


def test_a_model_made_to_answer_orders_yes_above_no(models):
    _, judge, _, _ = models
    gen = HFTextGenerator(model=str(judge), device="cpu", uses_context=True)
    dog, car, _ = gen.yes_no(ITEMS)
    assert dog > 0.99 and car < 0.01


def test_served_top_logprobs_agree_with_hf_logits(models):
    llm, judge, _, _ = models
    # the whole tiny vocabulary listed: every probability agrees
    hf = HFTextGenerator(model=str(llm), device="cpu", uses_context=True)
    with LogprobServer(str(llm)) as server:
        served = OpenAIChatGenerator(model="tiny", url=server.url, uses_context=True, top_logprobs=500)
        got = served.first_token_probs(ITEMS, ("Yes", "No"))
        assert served.yes_no(ITEMS) == pytest.approx(hf.yes_no(ITEMS), abs=1e-5)
    want = hf.first_token_probs(ITEMS, ("Yes", "No"))
    assert [p for row in got for p in row] == pytest.approx([p for row in want for p in row], rel=1e-4)
    # requests go out concurrently: their order on the server is not the prompts' order
    assert {(b["max_tokens"], b["logprobs"], b["top_logprobs"]) for b in server.requests} == {(1, True, 500)}
    sent = [b["messages"][-1]["content"].lower() for b in server.requests]
    assert any("description of the image: a dog running" in text for text in sent)
    assert served.counters()["yes_no/scored"] == 6 and served.counters()["yes_no/unlisted"] == 0
    # the made-to-answer model with the five likeliest tokens listed (its two answers among them)
    hf = HFTextGenerator(model=str(judge), device="cpu", uses_context=True)
    with LogprobServer(str(judge)) as server:
        served = OpenAIChatGenerator(model="tiny", url=server.url, uses_context=True, top_logprobs=5)
        dog, car = served.yes_no(ITEMS[:2])
    assert [dog, car] == pytest.approx(hf.yes_no(ITEMS[:2]), abs=1e-5)
    assert dog > 0.99 and car < 0.01


def test_served_words_outside_top_logprobs_count_zero(models):
    llm, _, _, _ = models
    with LogprobServer(str(llm)) as server:
        served = OpenAIChatGenerator(model="tiny", url=server.url, uses_context=True, top_logprobs=1)
        assert served.first_token_probs(ITEMS, ("Yes", "No")) == [[0.0, 0.0]] * 3  # a random model's top-1
        assert served.yes_no(ITEMS) == [0.0] * 3
    assert served.counters()["yes_no/unlisted"] == 6
    assert served.yes_no_identity("Yes", "No")["top_logprobs"] == 1


def test_a_server_that_ignores_logprobs_stops_the_run():
    with FakeOpenAIServer() as server:  # answers text only, as `transformers serve` does
        served = OpenAIChatGenerator(model="m", url=server.url, max_retries=0)
        with pytest.raises(VisaError, match="without the first token's top_logprobs"):
            served.yes_no([Prompt(QUESTION)])
    assert served.counters().get("malformed") == 0


def test_vision_p_yes_scores_each_image_alone(models):
    _, _, vlm, root = models
    images = tiny_models.write_images(root / "imgs", 3)
    gen = HFVisionGenerator(model=str(vlm), device="cpu", batch_size=3)
    prompts = [Prompt(QUESTION, (str(p),), "image") for p in images]
    probs = gen.first_token_probs(prompts, ("yes", "no"))
    assert probs == [gen.first_token_probs([p], ("yes", "no"))[0] for p in prompts]
    assert len({tuple(row) for row in probs}) == 3  # the pixels change the score
    assert gen.yes_no(prompts, yes="yes", no="no") == [y / (y + n) for y, n in probs]
    assert gen.media_encoded == 3 + 3 + 3
