"""The run reaches a re-ranker only through `visa.method.rerankers.Reranker`: a re-ranker written here (it
reverses the backbone's order inside the top-K) plugs into `run_visa` with no VISA part, and its scores,
record fields and metrics come out as the run's; a sharded run hands it only its own queries."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
import torch
from helpers import tiny_models

from visa.backbones.open_clip import OpenClipBackbone
from visa.cache import SQLiteStore
from visa.data import Dataset, Item, Query
from visa.method import pipeline
from visa.method.fusion import MinMaxFusion
from visa.method.metrics import RERANKED_TOP
from visa.method.parts import Components
from visa.method.rerankers import Reranker, Scored
from visa.method.settings import RetrievalSettings, Settings
from visa.method.shard import Shard
from visa.method.stages import Run

CAPTIONS = ["a dog on the grass", "two cats in the snow", "a red car", "a man on a bus", "a white tree"]


class Reverse:
    """Scores each candidate by minus the backbone's score: fused alone (alpha 1), the top-K reversed."""

    def __init__(self) -> None:
        self.prepared: list[int] = []
        self.scored: list[int] = []

    def prepare(self, run: Run, top: torch.Tensor, queries: Sequence[int]) -> None:
        self.prepared = list(queries)

    def score(self, run: Run, queries: Sequence[int], top: torch.Tensor, base: torch.Tensor) -> Scored:
        self.scored += list(queries)
        fields = [[{"rank": r} for r in range(top.shape[1])] for _ in queries]
        return Scored(-base, [{"reversed": True} for _ in queries], fields)

    def metrics(self) -> dict[str, Any]:
        return {"reverse/queries": len(self.scored)}


@pytest.fixture(scope="module")
def data_and_backbone(tmp_path_factory):
    root = tmp_path_factory.mktemp("rerankers")
    paths = tiny_models.write_images(root / "images", 6)
    gallery = [Item(f"img{i}", str(p)) for i, p in enumerate(paths)]
    dataset = Dataset("tiny", gallery, [Query(text, (i,)) for i, text in enumerate(CAPTIONS)])
    return dataset, OpenClipBackbone(model=f"local-dir:{tiny_models.open_clip_dir(root / 'clip')}")


def test_a_reranker_of_its_own_reorders_the_top_k_and_fills_the_records(data_and_backbone, tmp_path):
    dataset, backbone = data_and_backbone
    reverse = Reverse()
    assert isinstance(reverse, Reranker)
    parts = Components(backbone=backbone, reranker=reverse, fusion=MinMaxFusion(1.0))
    settings = Settings(retrieval=RetrievalSettings(top_k=3), recall_at=[1, 5], progress=False)
    metrics, records = pipeline.run_visa(dataset, parts, settings, SQLiteStore(tmp_path / "cache"))
    assert reverse.prepared == reverse.scored == list(range(len(CAPTIONS)))
    assert metrics["reverse/queries"] == len(CAPTIONS) and "rerank/R@1" in metrics and "base/R@5" in metrics
    for record in records:
        base = [c["id"] for c in record["base_top"]]
        assert [c["id"] for c in record[RERANKED_TOP]] == base[::-1]  # its scores decided the order
        assert record["reversed"] is True
        assert [c["rank"] for c in record["candidates"]] == [0, 1, 2]
        assert [c["id"] for c in record["candidates"]] == base


def test_a_sharded_run_hands_the_reranker_its_own_queries_only(data_and_backbone, tmp_path):
    dataset, backbone = data_and_backbone
    reverse = Reverse()
    parts = Components(backbone=backbone, reranker=reverse, fusion=MinMaxFusion(1.0))
    shard = Shard(count=2, index=1, idle_seconds=0.0, poll_seconds=0.0)
    settings = Settings(retrieval=RetrievalSettings(top_k=3), shard=shard, progress=False)
    metrics, records = pipeline.run_visa(dataset, parts, settings, SQLiteStore(tmp_path / "cache"))
    assert reverse.prepared == reverse.scored == [1, 3]
    assert records == [] and (metrics["shard/index"], metrics["shard/queries"]) == (1, 2)
