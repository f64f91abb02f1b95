"""The dataset interface: a gallery of items and queries with the indices of their relevant items.

Hybrid-modal data: a gallery item is media (an image or a video), media with text (an image and its
caption, a web page's image and passage), or text alone; a query is text, or text with a reference item
(composed retrieval: "the same dress but in red" about a reference photo). `modality()` names each
combination; a backbone declares the ones it can embed in its class attribute `modalities`, and a run whose
data needs another stops with one line before any model loads (`check_modalities`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

from visa.core.errors import VisaError

KINDS = ("image", "video", "text")
# What a backbone can embed when its class does not say (the original data model: text queries, media items).
DEFAULT_MODALITIES = frozenset({"text", "image", "video"})


@dataclass(frozen=True)
class Item:
    """One gallery entry: an image or a video on disk, optionally with a text; or a text alone."""

    id: str
    path: str  # "" for a text-only item
    kind: str = "image"  # "image" | "video" | "text"
    text: str | None = None  # the text that comes with the media (caption, passage); the item when kind=text

    def modality(self) -> str:
        """One of image, video, text, image+text, video+text."""
        if self.kind == "text":
            return "text"
        return f"{self.kind}+text" if self.text is not None else self.kind


@dataclass(frozen=True)
class Query:
    text: str
    relevant: tuple[int, ...]  # indices into Dataset.gallery
    reference: Item | None = None  # composed retrieval: the item the text modifies
    # Indices of gallery items this query's ranking leaves out (CIRR: the reference image itself).
    exclude: tuple[int, ...] = ()
    # CIRR's Recall_subset: the indices of the query's group of similar images (the reference left out).
    subset: tuple[int, ...] = ()
    # Name of the gallery part this query ranks (Dataset.groups; FashionIQ: its category); None: all.
    group: str | None = None

    def modality(self) -> str:
        """text, or for a composed query the reference's kind + "+text" (image+text)."""
        return "text" if self.reference is None else f"{self.reference.kind}+text"


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
    # Named parts of the gallery, each ranked on its own by the queries of that group; the metrics are
    # reported per group and averaged (FashionIQ's categories). None: one gallery for every query.
    groups: dict[str, list[int]] | None = field(default=None, repr=False)
    # Candidates that come with the data (INQUIRE-Rerank: 100 per query): candidates[q] are gallery indices,
    # and the retrieve step ranks only these (by the backbone's similarity) instead of searching the gallery.
    candidates: list[tuple[int, ...]] | None = field(default=None, repr=False)
    # Ranking metrics the dataset reports beside R@k (`mAP@k`, `nDCG@k`, `Recall@k`, `MRR`;
    # visa.method.metrics), for queries with many relevant items.
    metrics: tuple[str, ...] = ()
    # The reference bank a normaliser uses with normalizer.bank=auto (visa.data.banks): "demo", "split:train"
    # (Karpathy splits), or None (the user names one).
    bank: str | None = None


@runtime_checkable
class DatasetSource(Protocol):
    """What a run needs of a `conf/dataset/<name>.yaml` class: `load()` reads (and checks) the data."""

    def load(self) -> Dataset: ...


def needed_modalities(dataset: Dataset) -> dict[str, set[str]]:
    """{"query": modalities of the queries, "item": modalities of the gallery items}."""
    return {
        "query": {q.modality() for q in dataset.queries},
        "item": {i.modality() for i in dataset.gallery},
    }


def check_modalities(dataset: Dataset, backbone_class: type, backbone_name: str) -> None:
    """A VisaError naming what `backbone_class` cannot embed in `dataset` (queries or gallery items)."""
    can = getattr(backbone_class, "modalities", DEFAULT_MODALITIES)
    for side, needed in needed_modalities(dataset).items():
        missing = sorted(needed - set(can))
        if missing:
            raise VisaError(
                f"backbone={backbone_name} cannot embed the {side} modalities {', '.join(missing)} of "
                f"dataset {dataset.name} (it embeds {', '.join(sorted(can))}); choose a backbone "
                "that does, e.g. backbone=visualized_bge, or backbone=demo for the offline demo"
            )


RANKING_METRICS = re.compile(r"(mAP|nDCG|Recall)@([1-9][0-9]*)|MRR")


def check_metrics(names: Iterable[str], key: str) -> tuple[str, ...]:
    """The ranking metrics a dataset reports, each `mAP@k`, `nDCG@k`, `Recall@k` or `MRR` (checked at load
    time)."""
    names = tuple(names)
    for name in names:
        if not isinstance(name, str) or RANKING_METRICS.fullmatch(name) is None:
            raise VisaError(
                f"{key}: {name!r} is not a ranking metric; use mAP@k, nDCG@k, Recall@k or MRR (e.g. mAP@50)"
            )
    return names


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
