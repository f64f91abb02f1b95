"""Benchmark of the transformers generation backend on tiny random-weight models, on CPU:

1. generation throughput at batch 16 against batch 1 (tiny Qwen2-VL, one image per prompt, fixed length);
2. vision-encoder calls per query in both answer modes, counted by a hook on the model's vision tower.

    python -m experiments.bench_models [--prompts 32] [--new-tokens 16] [--top-k 20] [--questions 3]

Figures go to experiments/models.md. They measure the code path (batching, left padding, media handling),
not the speed of the real 7B models on a GPU.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from tests.helpers import tiny_models
from visa.cache import SQLiteStore
from visa.data import Dataset, Item, Query
from visa.generation.hf import HFVisionGenerator
from visa.generation.hf_loading import load_vision_model
from visa.method.prompts import Prompt
from visa.method.replies import Questions
from visa.method.settings import AnswersSettings, RetrievalSettings, Settings
from visa.method.stages import Run


def throughput(vlm: Path, images: list[Path], n: int, new_tokens: int, batch_size: int) -> float:
    gen = HFVisionGenerator(model=str(vlm), device="cpu", max_new_tokens=new_tokens, batch_size=batch_size)
    prompts = [
        Prompt("what is in this picture ?", (str(images[i % len(images)]),), "image") for i in range(n)
    ]
    gen.generate(prompts[:1])  # load once, outside the timing
    t0 = time.perf_counter()
    for start in range(0, n, batch_size):
        gen.generate(prompts[start : start + batch_size])
    return n / (time.perf_counter() - t0)


def vision_calls(vlm: Path, images: list[Path], top_k: int, num_questions: int, mode: str) -> tuple[int, int]:
    """(images through the vision tower, generate requests) for one query, counted by a forward hook."""
    gen = HFVisionGenerator(model=str(vlm), device="cpu", max_new_tokens=4, batch_size=16)
    _, lm = load_vision_model(str(vlm), "float32", "cpu", False)
    visual = next(m for name, m in lm.named_modules() if name.endswith("visual"))
    seen = []
    handle = visual.register_forward_hook(
        lambda mod, args, kwargs, out: seen.append(len(kwargs["grid_thw"])), with_kwargs=True
    )
    gallery = [Item(f"i{n}", str(images[n % len(images)])) for n in range(top_k)]
    dataset = Dataset("bench", gallery, [Query("a dog and a red car", (0,))])
    questions = [
        Questions(["dog", "red car"], [f"Question {i} about the dog?" for i in range(num_questions)], True)
    ]
    with tempfile.TemporaryDirectory() as cache_dir:
        run = Run(
            dataset,
            Settings(
                retrieval=RetrievalSettings(top_k=top_k), answers=AnswersSettings(mode=mode), progress=False
            ),
            SQLiteStore(cache_dir),
        )
        run.answer(gen, questions, torch.arange(top_k).view(1, -1), {})
    handle.remove()
    return sum(seen), run.runner.stats["answer"].computed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--top-k", type=int, default=20)
    parser.add_argument("--questions", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        # distinct images: repeated ones would share cache keys and hide calls
        images = tiny_models.write_images(root / "imgs", max(8, args.top_k))
        vlm = tiny_models.qwen2_vl_dir(root / "vlm")
        rate1 = throughput(vlm, images, args.prompts, args.new_tokens, 1)
        rate16 = throughput(vlm, images, args.prompts, args.new_tokens, 16)
        print(
            f"throughput, {args.prompts} prompts x {args.new_tokens} new tokens, 1 image each (tiny Qwen2-VL)"
        )
        print(f"  batch 1 : {rate1:7.2f} prompts/s")
        print(f"  batch 16: {rate16:7.2f} prompts/s  ({rate16 / rate1:.1f}x)")
        print(f"vision-encoder calls for one query, K={args.top_k}, {args.questions} questions")
        for mode in ("per_question", "per_candidate"):
            encoded, requests = vision_calls(vlm, images, args.top_k, args.questions, mode)
            print(f"  {mode:<13}: {encoded} images encoded, {requests} generate requests")


if __name__ == "__main__":
    main()
