"""A learnable toy in SCAN's exact precomputed layout, for tests, benchmarks and a first try of the
training command without the real features: each image shows 3 of `num_concepts` concepts; a concept is a
fixed random direction, and the regions of the image are its concepts' directions plus noise (and some
background regions of noise only); its 5 captions name the concepts in different sentences.

    python -m visa.vsl.synthetic DIR        # DIR/toy_precomp/{train,dev,test,testall}_* + DIR/vocab/
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from visa.vsl.text import build_vocabulary

CONCEPTS = (
    "dog cat horse bicycle car boat tree ball guitar umbrella bench kite "
    "bird truck train chair pizza clock surfboard flower laptop skateboard sheep cow"
).split()
TEMPLATES = (
    "a {0} , a {1} and a {2} .",
    "there is a {1} next to a {0} and a {2}",
    "the picture shows a {2} with a {0} near a {1} .",
    "a {0} beside a {2} and a {1} .",
    "some {1} , {2} and {0} in one photo",
)


def write_toy_precomp(
    root: str | Path,
    name: str = "toy_precomp",
    sizes: dict[str, int] | None = None,
    num_regions: int = 36,
    dim: int = 32,
    num_concepts: int = 20,
    noise: float = 0.1,
    seed: int = 0,
) -> Path:
    """Writes root/name/{split}_ims.npy (float32 images x regions x dim) and {split}_caps.txt (5 lines per
    image), and root/vocab/name_vocab.json built from train + dev as SCAN does. Returns root/name."""
    sizes = sizes or {"train": 400, "dev": 50, "test": 100, "testall": 100}
    if not 3 <= num_concepts <= len(CONCEPTS):
        raise ValueError(f"num_concepts must be in 3..{len(CONCEPTS)}")
    rng = np.random.default_rng(seed)
    directions = rng.normal(size=(num_concepts, dim))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    folder = Path(root) / name
    folder.mkdir(parents=True, exist_ok=True)
    per_concept = num_regions // 4  # 3 concepts x num_regions/4 regions, the rest background
    for split, n_images in sizes.items():
        features = rng.normal(scale=noise, size=(n_images, num_regions, dim)).astype(np.float32)
        captions = []
        for i in range(n_images):
            chosen = rng.choice(num_concepts, size=3, replace=False)
            slots = rng.permutation(num_regions)
            for c, concept in enumerate(chosen):
                features[i, slots[c * per_concept : (c + 1) * per_concept]] += directions[concept]
            words = [CONCEPTS[c] for c in chosen]
            captions += [t.format(*words) for t in TEMPLATES]
        np.save(folder / f"{split}_ims.npy", features)
        (folder / f"{split}_caps.txt").write_text("\n".join(captions) + "\n")
    train_dev = [
        line for split in ("train", "dev") for line in (folder / f"{split}_caps.txt").read_text().splitlines()
    ]
    build_vocabulary(train_dev, min_count=1).save(Path(root) / "vocab" / f"{name}_vocab.json")
    return folder


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print("usage: python -m visa.vsl.synthetic DIR", file=sys.stderr)
        sys.exit(2)
    print(write_toy_precomp(sys.argv[1]))
