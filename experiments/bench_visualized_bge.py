"""Benchmark of the Visualized-BGE backbone on a tiny random checkpoint in the published key layout (CPU):
encode throughput (items/s) for text, images and image + text, at batch 1 against batch 32, one run each.

    python -m experiments.bench_visualized_bge [--items 64]   # from the repository root

The tiny model: 32 px images in 8 px patches (16 image tokens), a 2-layer tower and a 2-layer BERT. Figures
go to experiments/visualized_bge.md. They measure the code path (batching, padding, preprocessing), not the
real model's speed on a GPU.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

from tests.helpers import tiny_models
from tests.helpers import tiny_visualized_bge as tiny
from visa.backbones.visualized_bge import VisualizedBGEBackbone

TEXTS = ["a dog running on the grass", "two cats sitting on a red car", "people walking on the beach at"]


def throughput(backbone: VisualizedBGEBackbone, kind: str, images: list, n: int, batch: int) -> float:
    texts = [TEXTS[i % len(TEXTS)] for i in range(n)]
    pil = [images[i % len(images)] for i in range(n)]

    def call(lo: int, hi: int) -> None:
        if kind == "text":
            backbone.encode_text(texts[lo:hi])
        elif kind == "image":
            backbone.encode_images(pil[lo:hi])
        else:
            backbone.encode_image_text(pil[lo:hi], texts[lo:hi])

    call(0, 1)  # load once, outside the timing
    t0 = time.perf_counter()
    for start in range(0, n, batch):
        call(start, min(n, start + batch))
    return n / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--items", type=int, default=64)
    args = parser.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        text_dir = tiny.bge_dir(root / "bge", "bert")
        weights = tiny.published_checkpoint(root / "Visualized_tiny.pth", text_dir)
        images = [Image.open(p).convert("RGB") for p in tiny_models.write_images(root / "imgs", 8, size=96)]
        backbone = VisualizedBGEBackbone(
            text_model=str(text_dir), weights=str(weights), device="cpu", **tiny.VISION
        )
        print(f"threads {torch.get_num_threads()}, {args.items} items")
        print(f"{'input':<12}{'batch 1':>12}{'batch 32':>12}{'ratio':>8}")
        for kind in ("text", "image", "image+text"):
            one = throughput(backbone, kind, images, args.items, 1)
            many = throughput(backbone, kind, images, args.items, 32)
            print(f"{kind:<12}{one:>10.1f}/s{many:>10.1f}/s{many / one:>7.1f}x")


if __name__ == "__main__":
    main()
