"""Multimodal cross-encoders over (query, image) (`visa.scorers.MediaScorer`) on tiny random-weight models
built from configs: Qwen3-VL-Reranker's prompt and yes/no score, BLIP-2's ITM match probability; shapes,
batch-independent and deterministic scores, the prompt logic. Not quality."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from helpers import tiny_models
from hydra.utils import instantiate

from visa.core.errors import VisaError
from visa.core.prompt import Prompt
from visa.scorers import MediaScorer, Scorer
from visa.scorers.blip2_itm import Blip2ITMScorer
from visa.scorers.qwen3_vl_reranker import SYSTEM, Qwen3VLReranker

REPO = Path(__file__).resolve().parents[1]
QUERIES = ("a dog running on the grass", "a red car on the street")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("cross")
    images = [str(p) for p in tiny_models.write_images(root / "imgs", 3)]
    pairs = [Prompt(q, (image,), "image") for q in QUERIES for image in images]
    return tiny_models.qwen3_vl_dir(root / "qwen3vl"), tiny_models.blip2_itm_dir(root / "blip2"), pairs, root


def test_shipped_configs_build_media_scorers():
    for path in sorted((REPO / "conf" / "scorer" / "media").glob("*.yaml")):
        node = yaml.safe_load(path.read_text())
        part = instantiate(node)
        assert isinstance(part, MediaScorer) and not isinstance(part, Scorer), path.name
        assert node["model"] in (
            "Qwen/Qwen3-VL-Reranker-8B",
            "Qwen/Qwen3-VL-Reranker-2B",
            "Salesforce/blip2-itm-vit-g",
        )
        assert node["model"].endswith(part.identity()["model"])


def test_qwen3_vl_reranker_prompt_is_the_reference_chat(tiny):
    from transformers import AutoProcessor

    model, _, pairs, _ = tiny
    scorer = Qwen3VLReranker(model=str(model), device="cpu", dtype="float32")
    text = AutoProcessor.from_pretrained(model).apply_chat_template(
        scorer.messages(pairs[0]), tokenize=False, add_generation_prompt=True
    )
    assert text == (
        f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n"
        "<Instruct>: Given a search query, retrieve relevant candidates that answer the query.<Query>:"
        "a dog running on the grass\n<Document>:<|vision_start|><|image_pad|><|vision_end|><|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    with pytest.raises(VisaError, match="scores \\(query, image\\) pairs; got media_kind='video'"):
        scorer.score_media([Prompt("a dog", ("clip.mp4",), "video")])


def test_qwen3_vl_reranker_scores_are_batch_independent_and_deterministic(tiny):
    model, _, pairs, _ = tiny
    scorer = Qwen3VLReranker(model=str(model), device="cpu", dtype="float32", batch_size=4)
    scores = scorer.score_media(pairs)
    assert len(scores) == len(pairs) and all(0 < s < 1 for s in scores)
    assert scores == [scorer.score_media([p])[0] for p in pairs] == scorer.score_media(pairs)
    assert len(set(scores)) == len(pairs)  # the query and the image both change the score
    assert scorer.counters()["media_encoded"] == 3 * len(pairs)
    other = Qwen3VLReranker(model=str(model), device="cpu", dtype="float32", instruction="Find the photo.")
    assert other.identity() != scorer.identity() and other.score_media(pairs[:1]) != scores[:1]


def test_qwen3_vl_reranker_reads_the_yes_and_no_rows(tiny):
    """With the output layer's "yes" row set equal to its "no" row, every pair scores 1/2: the score is the
    yes/no contrast of the last position, nothing else."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model, _, pairs, root = tiny
    processor = AutoProcessor.from_pretrained(model)
    lm = AutoModelForImageTextToText.from_pretrained(model, dtype=torch.float32)
    yes, no = processor.tokenizer.convert_tokens_to_ids(["yes", "no"])
    with torch.no_grad():
        lm.lm_head.weight[yes] = lm.lm_head.weight[no]
    lm.save_pretrained(root / "even")
    processor.save_pretrained(root / "even")
    even = Qwen3VLReranker(model=str(root / "even"), device="cpu", dtype="float32")
    assert even.score_media(pairs) == pytest.approx([0.5] * len(pairs), abs=1e-6)


def test_blip2_itm_is_the_match_probability_batch_independent(tiny):
    from PIL import Image
    from transformers import AutoProcessor, Blip2ForImageTextRetrieval

    _, model, pairs, _ = tiny
    scorer = Blip2ITMScorer(model=str(model), device="cpu", batch_size=4)
    scores = scorer.score_media(pairs)
    assert len(scores) == len(pairs) and all(0 < s < 1 for s in scores)
    assert scores == [scorer.score_media([p])[0] for p in pairs] == scorer.score_media(pairs)
    assert len(set(scores)) == len(pairs)
    assert scorer.counters()["media_encoded"] == 3 * len(pairs)
    # the protocol: softmax over the ITM head's (no match, match) logits, the match column
    processor = AutoProcessor.from_pretrained(model)
    net = Blip2ForImageTextRetrieval.from_pretrained(model).eval()
    enc = processor(
        images=Image.open(pairs[0].media[0]).convert("RGB"), text=pairs[0].text, return_tensors="pt"
    )
    with torch.no_grad():
        logits = net(**enc, use_image_text_matching_head=True).logits_per_image
    assert scores[0] == pytest.approx(torch.softmax(logits, -1)[0, 1].item(), abs=1e-6)


def test_blip2_itm_cuts_the_query_and_refuses_videos(tiny):
    _, model, pairs, _ = tiny
    scorer = Blip2ITMScorer(model=str(model), device="cpu", max_length=3)
    long = Prompt("a dog running on the grass", pairs[0].media, "image")
    assert scorer.score_media([long]) == scorer.score_media(
        [Prompt("a dog running", pairs[0].media, "image")]
    )
    with pytest.raises(VisaError, match="BLIP-2 ITM scores \\(query, one image\\) pairs"):
        scorer.score_media([Prompt("a dog", ("clip.mp4",), "video")])
