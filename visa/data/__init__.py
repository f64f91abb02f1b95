"""The dataset interface: a gallery of items and text queries with the indices of their relevant items."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from visa.errors import VisaError


@dataclass(frozen=True)
class Item:
    """One gallery entry: an image or a video on disk."""

    id: str
    path: str
    kind: str = "image"  # "image" | "video"


@dataclass(frozen=True)
class Query:
    text: str
    relevant: tuple[int, ...]  # indices into Dataset.gallery


@dataclass
class Precomputed:
    """Scores from elsewhere (the reference release): the pipeline evaluates them and loads no model."""

    base_scores: np.ndarray  # [queries, gallery]
    text_scores: np.ndarray  # [queries, gallery], meaningful inside each query's top-K only
    descriptions: list[str] | None = None
    questions: list[list[str]] | None = None


@dataclass
class Dataset:
    name: str
    gallery: list[Item]
    queries: list[Query]
    precomputed: Precomputed | None = field(default=None, repr=False)
    skipped: list[str] = field(default_factory=list, repr=False)  # bad items left out (on_bad_item=skip)


def check_count(value: int | None, key: str) -> None:
    """A "first N" setting (dataset.limit, ...) is null (everything) or at least 1; 0 or a negative number
    would otherwise quietly mean everything."""
    if value is not None and value < 1:
        raise VisaError(f"{key}={value} must be at least 1, or null for the whole dataset")


def build_dataset(
    name: str, gallery: list[Item], captions: Iterable[tuple[str, str | list[str]]], source: str
) -> Dataset:
    """Dataset from (item id, caption or captions) pairs; each caption becomes one query.

    `source` (the annotation file) is named in every error.
    """
    if not gallery:
        raise VisaError(f"{source}: the gallery is empty; check the annotation file and dataset.root")
    index: dict[str, int] = {}
    for i, item in enumerate(gallery):
        if item.id in index:
            raise VisaError(f"{source}: gallery item id {item.id!r} appears twice; ids must be unique")
        index[item.id] = i
    queries: list[Query] = []
    for item_id, texts in captions:
        if item_id not in index:
            raise VisaError(
                f"{source}: caption refers to item {item_id!r}, which is not in the gallery; "
                "fix the id or add the item"
            )
        for text in [texts] if isinstance(texts, str) else texts:
            if not isinstance(text, str) or not text.strip():
                raise VisaError(f"{source}: empty caption for item {item_id!r}; remove it or write one")
            queries.append(Query(text=" ".join(text.split()), relevant=(index[item_id],)))
    if not queries:
        raise VisaError(f"{source}: no captions found; every query is a caption")
    return Dataset(name=name, gallery=gallery, queries=queries)
