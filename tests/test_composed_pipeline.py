"""The pipeline on hybrid-modal data: retrieval with exclusions and gallery groups, Recall_subset, cache keys
with reference media (and unchanged keys for text queries), VISA's text for composed queries, and the
modalities check of the command line."""

from __future__ import annotations

import os

import pytest
import torch
from conftest import run_cli  # noqa: E402
from helpers import tiny_models
from helpers import tiny_visualized_bge as tiny
from test_composed_data import write_cirr, write_fashioniq  # noqa: E402

from visa.backbones.visualized_bge import VisualizedBGEBackbone  # noqa: E402
from visa.cache import SQLiteStore, make_key  # noqa: E402
from visa.data import Item, Query  # noqa: E402
from visa.data.composed import CIRRDataset, FashionIQDataset  # noqa: E402
from visa.method.evaluate import evaluate  # noqa: E402
from visa.method.keys import item_fingerprint, with_reference  # noqa: E402
from visa.method.metrics import recall_subset_at_k  # noqa: E402
from visa.method.passages import (  # noqa: E402
    composed_query_text,
    item_passage_text,
    query_item,  # noqa: E402
)
from visa.method.prompts import question_prompt  # noqa: E402
from visa.method.retrieval import ranked_candidates  # noqa: E402
from visa.method.retrieve import retrieve  # noqa: E402
from visa.method.settings import RetrievalSettings, Settings
from visa.method.stages import Run  # noqa: E402


@pytest.fixture(scope="module")
def backbone(tmp_path_factory) -> VisualizedBGEBackbone:
    root = tmp_path_factory.mktemp("vbge")
    text_dir = tiny.bge_dir(root / "bge")
    weights = tiny.published_checkpoint(root / "Visualized_tiny.pth", text_dir)
    return VisualizedBGEBackbone(text_model=str(text_dir), weights=str(weights), device="cpu", **tiny.VISION)


def test_ranked_candidates_excludes_and_ranks_within_groups():
    torch.manual_seed(0)
    queries = torch.nn.functional.normalize(torch.randn(4, 8), dim=1)
    gallery = torch.nn.functional.normalize(torch.randn(10, 8), dim=1)
    dense = queries @ gallery.T
    _, plain = ranked_candidates(queries, gallery, 5, chunk_size=3)
    assert torch.equal(plain, dense.topk(5, dim=1).indices)
    excluded = [(int(plain[0, 0]),), (), (int(plain[2, 0]), int(plain[2, 1])), ()]
    _, idx = ranked_candidates(queries, gallery, 5, chunk_size=3, exclude=excluded)
    assert idx.shape == (4, 5) and torch.equal(idx[0, :4], plain[0, 1:5])  # the rest moves up
    assert all(not set(excluded[q]) & set(idx[q].tolist()) for q in range(4))
    groups = {"a": [0, 2, 4, 6, 8], "b": [1, 3, 5, 7, 9]}
    scores, idx = ranked_candidates(queries, gallery, 3, groups=groups, query_groups=["a", "b", "b", "a"])
    for q, g in enumerate(["a", "b", "b", "a"]):
        members = torch.tensor(groups[g])
        assert torch.equal(idx[q], members[dense[q, members].topk(3).indices])
        assert torch.allclose(scores[q], dense[q, idx[q]])


def test_recall_subset_ranks_the_subset_by_the_ranking_then_by_score():
    ranking = torch.tensor([[7, 3, 9], [2, 8, 1]])
    subsets = [(3, 4, 5), (4, 5, 6)]
    scores = [[0.1, 0.9, 0.5], [0.2, 0.8, 0.3]]  # query 1: no member ranked, 5 is the best by score
    out = recall_subset_at_k(ranking, [(4,), (5,)], subsets, scores, (1, 2, 3))
    # query 0: order 3 (ranked), 4, 5 -> relevant 4 second; query 1: 5 first
    assert out == {"R_subset@1": 50.0, "R_subset@2": 100.0, "R_subset@3": 100.0}


def test_cirr_retrieval_composed_queries_and_subset_metrics(backbone, tmp_path):
    data = CIRRDataset(root=str(write_cirr(tmp_path / "cirr"))).load()
    settings = Settings(retrieval=RetrievalSettings(top_k=3), recall_at=[1, 5], progress=False)
    run = Run(data, settings, SQLiteStore(tmp_path / "cache"))
    retrieved = retrieve(run, backbone)
    candidates = retrieved.candidates
    assert candidates.shape == (2, 5)
    for q, query in enumerate(data.queries):  # the reference is never its own candidate
        assert query.exclude[0] not in candidates[q].tolist()
    stats = run.runner.stats
    assert stats["encode_composed"].computed == 2 and stats["encode_visual"].computed == 8
    assert "encode_text" not in stats or stats["encode_text"].computed == 0
    metrics = evaluate(data, {"base": candidates, "rerank": candidates}, [1, 5], retrieved.subset_scores)
    assert {"base/R@1", "base/R@5", "base/R_subset@1", "base/R_subset@3", "rerank/R_subset@2"} <= set(metrics)
    # the composed query embeds the reference image with the text: not the text alone, not the image alone
    ref = backbone.encode_visual([data.queries[0].reference])[0]
    text = backbone.encode_text([data.queries[0].text])[0]
    composed = torch.from_numpy(run.encode_composed(backbone, [query_item(data.queries[0])])[0])
    assert not torch.allclose(composed, ref, atol=1e-4)
    assert not torch.allclose(composed, text, atol=1e-4)
    again = Run(data, settings, SQLiteStore(tmp_path / "cache"))
    retrieve(again, backbone)
    assert again.runner.stats["encode_composed"].computed == 0  # cached


def test_fashioniq_reports_each_category_and_the_average(backbone, tmp_path):
    data = FashionIQDataset(root=str(write_fashioniq(tmp_path / "fiq"))).load()
    settings = Settings(retrieval=RetrievalSettings(top_k=2), recall_at=[1, 5], progress=False)
    run = Run(data, settings, SQLiteStore(tmp_path / "cache"))
    candidates = retrieve(run, backbone).candidates
    for q, query in enumerate(data.queries):
        assert set(candidates[q].tolist()) <= set(data.groups[query.group])
    metrics = evaluate(data, {"base": candidates, "rerank": candidates}, [1, 5])
    per = [metrics[f"{c}/base/R@1"] for c in ("dress", "shirt", "toptee")]
    assert metrics["base/R@1"] == pytest.approx(sum(per) / 3, abs=1e-3)


def test_reference_media_is_in_the_cache_keys(tmp_path):
    paths = tiny_models.write_images(tmp_path / "imgs", 3)
    a, b = Item("a", str(paths[0])), Item("b", str(paths[1]))
    q1, q2 = Query("redder", (1,), reference=a), Query("redder", (1,), reference=b)
    assert with_reference("k", q1) != with_reference("k", q2)
    plain = Query("redder", (1,))
    assert with_reference("k", plain) == "k"  # text queries keep the key they always had


def test_text_queries_and_media_items_keep_their_cache_keys(tmp_path):
    path = tmp_path / "a.png"
    path.write_bytes(b"x" * 10)
    os.utime(path, ns=(1_700_000_000_000_000_000,) * 2)
    # exactly the fingerprint items always had: no new field for an item without text
    assert item_fingerprint(Item("a", str(path))) == {
        "path": str(path.resolve()),
        "size": 10,
        "mtime_ns": 1_700_000_000_000_000_000,
    }
    assert item_fingerprint(Item("a", str(path), text="a cat"))["text"] == "a cat"
    assert item_fingerprint(Item("t", "", "text", text="a passage")) == {"text": "a passage"}
    # the question prompt of a text query is its text as before
    query = Query("a dog", (0,))
    assert composed_query_text(query, {}) == "a dog"
    key = make_key("ask", {"m": 1}, question_prompt(composed_query_text(query, {}), 3).as_key())
    assert key == make_key("ask", {"m": 1}, question_prompt("a dog", 3).as_key())


def test_visa_text_for_composed_queries_and_captioned_items():
    ref = Item("r", "/r.png")
    query = Query("make it a living animal", (0,), reference=ref)
    text = composed_query_text(query, {"r": "A red toy car on a table."})
    assert text == "A red toy car on a table, but changed as follows: make it a living animal."
    assert item_passage_text(Item("i", "/i.png", text="Pagoda by a lake."), "An orange roof.") == (
        "Pagoda by a lake. An orange roof."
    )
    assert item_passage_text(Item("i", "/i.png"), "An orange roof.") == "An orange roof."


def test_cli_rejects_a_backbone_that_cannot_embed_composed_queries(tmp_path):
    result = run_cli(
        "dataset=demo_composed", "backbone=clip_vit_b32", cache=tmp_path / "c", run_dir=tmp_path / "r"
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("error: backbone=clip_vit_b32 cannot embed the query modalities image+text")
    assert "Traceback" not in result.stderr
