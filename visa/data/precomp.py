"""A benchmark that carries both its images (for the MLLM) and SCAN's precomputed region features (for a
region matcher backbone), checked to line up: the Flickr30K / COCO Karpathy test images are SCAN's
test / testall rows in the same order, with the same 5 captions."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from visa.core.errors import VisaError
from visa.data import Dataset
from visa.data.formats import CAPTION_REWRITES, AnnotatedDataset


def _normalise(caption: str) -> str:
    return " ".join(re.findall(r"[a-z0-9]+", caption.lower()))


class AnnotatedPrecompDataset(AnnotatedDataset):
    """An `AnnotatedDataset` plus `features` ({split}_ims.npy) and `captions` ({split}_caps.txt) of SCAN."""

    def __init__(
        self,
        *args: Any,
        features: str,
        captions: str,
        min_matching: int = 3,  # of an image's 5 SCAN captions, how many must be among its captions here
        **settings: Any,
    ):
        super().__init__(
            *args, **settings
        )  # AnnotatedDataset's: name, root, annotation, media_dir, format, ...
        self.features, self.captions, self.min_matching = features, captions, min_matching

    def load(self) -> Dataset:
        dataset = super().load()
        for path in (self.features, self.captions):
            if not Path(path).is_file():
                raise VisaError(
                    f"dataset {self.name}: {path} not found (SCAN's precomputed {Path(path).name})"
                )
        rows = np.load(self.features, mmap_mode="r").shape[0]
        rewrite = CAPTION_REWRITES.get(self.caption_rewrite, str)  # SCAN's captions as the queries are
        with open(self.captions, encoding="utf-8", errors="replace") as f:
            scan = [_normalise(rewrite(line)) for line in f]
        images = min(rows, self.max_items) if self.max_items else rows  # max_items: SCAN's first rows
        if len(dataset.gallery) != images or len(scan) != 5 * rows:
            raise VisaError(
                f"dataset {self.name}: {len(dataset.gallery)} images but {self.features} has {rows} rows and "
                f"{self.captions} {len(scan)} captions; use the precomputed split of the same images"
            )
        ours: list[set[str]] = [set() for _ in dataset.gallery]
        for query in dataset.queries:
            for i in query.relevant:
                ours[i].add(_normalise(query.text))
        for i, item in enumerate(dataset.gallery):
            if self.paragraph:  # one query per image: its captions joined
                matching = sum(any(c in text for text in ours[i]) for c in scan[5 * i : 5 * i + 5])
                needed = self.min_matching
            else:  # max_captions may keep fewer than min_matching of an image's captions
                matching = sum(c in ours[i] for c in scan[5 * i : 5 * i + 5])
                needed = min(self.min_matching, len(ours[i]))
            if matching < needed:
                raise VisaError(
                    f"dataset {self.name}: image {i} ({Path(item.path).name}) does not line up with row {i} "
                    f"of {self.features}: {matching} of its 5 captions in {self.captions} match (e.g. "
                    f"{scan[5 * i]!r}); the images must be in SCAN's order"
                )
        return dataset
