"""The reference release's files, written in their published layout, read back and evaluated."""

import json

import numpy as np
import pytest

from visa.core.errors import VisaError
from visa.data.release import VisaRelease
from visa.method.fusion import MinMaxFusion
from visa.method.pipeline import evaluate_precomputed
from visa.method.settings import RetrievalSettings, Settings


def write_release(root, name, base, text, n_items, captions_per_item=2):
    recap = [{"image_id": f"img{i}.jpg", "captions": [f"description {i}"]} for i in range(n_items)]
    queries = [
        {"image_id": f"img{i}.jpg", "captions": [f"caption {i}.{c}"]}
        for i in range(n_items)
        for c in range(captions_per_item)
    ]
    (root / f"{name}_recap.json").write_text(json.dumps(recap))
    (root / f"{name}_query.json").write_text(json.dumps(queries))
    np.savetxt(root / f"sim_{name}.txt", base, fmt="%.6f")
    np.savetxt(root / "sim_text.txt", text, fmt="%.6f")


def reference_fusion_ranks(base, text, k):
    """The method's formula, written independently: top-K by base, min-max each score, add, sort."""
    ranks = []
    for b, t in zip(base, text):
        top = np.argsort(-b, kind="stable")[:k]

        def mm(v):
            return (v - v.min()) / (v.max() - v.min()) if v.max() > v.min() else np.zeros_like(v)

        fused = mm(b[top]) + mm(t[top])
        ranks.append(list(top[np.argsort(-fused, kind="stable")]) + list(np.argsort(-b, kind="stable")[k:]))
    return np.array(ranks)


def test_release_reproduction_matches_the_formula(tmp_path):
    rng = np.random.default_rng(0)
    n_items, k = 12, 4
    base = rng.normal(size=(2 * n_items, n_items)).astype(np.float32)
    text = np.zeros_like(base)
    for q in range(len(base)):  # the re-ranker's scores exist only inside the top-K
        top = np.argsort(-base[q])[:k]
        text[q, top] = rng.normal(size=k) * 5
    write_release(tmp_path, "flickr", base, text, n_items)
    data = VisaRelease(str(tmp_path), "flickr").load()
    assert len(data.queries) == 24 and len(data.gallery) == 12 and data.queries[3].relevant == (1,)
    settings = Settings(retrieval=RetrievalSettings(top_k=k), recall_at=list((1, 5, 10)), progress=False)
    metrics, results = evaluate_precomputed(data, MinMaxFusion(0.5), settings)

    ref = reference_fusion_ranks(base.astype(np.float64), text.astype(np.float64), k)
    gt = np.array([q.relevant[0] for q in data.queries])
    for cut in (1, 5, 10):
        expected = 100 * np.mean([gt[i] in ref[i, :cut] for i in range(len(gt))])
        assert metrics[f"rerank/R@{cut}"] == pytest.approx(expected, abs=1e-3)
        base_expected = 100 * np.mean([gt[i] in np.argsort(-base[i])[:cut] for i in range(len(gt))])
        assert metrics[f"base/R@{cut}"] == pytest.approx(base_expected, abs=1e-3)
    assert [r["id"] for r in results[0]["rerank_top"]] == [f"img{i}.jpg" for i in ref[0, :k]]


def test_wrong_matrix_shape_is_a_clear_error(tmp_path):
    write_release(tmp_path, "coco", np.zeros((4, 3)), np.zeros((4, 3)), n_items=2)
    with pytest.raises(VisaError, match=r"sim_coco.txt has shape \[4 x 3\], expected \[4 x 2\]"):
        VisaRelease(str(tmp_path), "coco").load()


def test_missing_release_file_names_it(tmp_path):
    with pytest.raises(VisaError, match="msrvtt_query.json"):
        VisaRelease(str(tmp_path), "msrvtt").load()


def test_precomputed_scores_keep_base_order_beyond_k(tmp_path):
    base = np.array([[0.9, 0.8, 0.7, 0.6], [0.1, 0.2, 0.3, 0.4]], dtype=np.float32)
    text = np.array([[0.0, 5.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]], dtype=np.float32)
    write_release(tmp_path, "x", base, text, n_items=2, captions_per_item=1)
    (tmp_path / "x_recap.json").write_text(
        json.dumps([{"image_id": f"i{i}", "captions": ["d"]} for i in range(4)])
    )
    (tmp_path / "x_query.json").write_text(
        json.dumps([{"image_id": "i1", "captions": ["a"]}, {"image_id": "i0", "captions": ["b"]}])
    )
    data = VisaRelease(str(tmp_path), "x").load()
    metrics, results = evaluate_precomputed(
        data, MinMaxFusion(0.5), Settings(retrieval=RetrievalSettings(top_k=3), recall_at=list((1, 3, 4)))
    )
    # query 0: fused = 0.5 * minmax(base) + 0.5 * minmax(text) = [0.5, 0.75, 0] over i0, i1, i2
    assert [r["id"] for r in results[0]["rerank_top"]] == ["i1", "i0", "i2"]
    # query 1: no text signal, so the base order; its item i0 is 4th, beyond K, where the base order holds
    assert [r["id"] for r in results[1]["rerank_top"]] == ["i3", "i2", "i1"]
    assert metrics["base/R@1"] == 0.0 and metrics["rerank/R@1"] == 50.0
    assert metrics["rerank/R@3"] == 50.0 and metrics["rerank/R@4"] == 100.0


def test_several_captions_per_entry_are_read_the_references_way(tmp_path):
    """The reference reads captions[0] of every entry: a query entry with more captions stays one query (one
    matrix row) and a recap entry's description is its first caption, not all of them joined."""
    n_items = 3
    recap = [{"image_id": f"img{i}.jpg", "captions": [f"first {i}.", f"second {i}."]} for i in range(n_items)]
    queries = [{"image_id": f"img{i}.jpg", "captions": [f"query {i}", f"extra {i}"]} for i in range(n_items)]
    (tmp_path / "x_recap.json").write_text(json.dumps(recap))
    (tmp_path / "x_query.json").write_text(json.dumps(queries))
    base = np.eye(n_items, dtype=np.float32)
    np.savetxt(tmp_path / "sim_x.txt", base, fmt="%.6f")
    np.savetxt(tmp_path / "sim_text.txt", base, fmt="%.6f")
    data = VisaRelease(str(tmp_path), "x").load()
    assert [q.text for q in data.queries] == ["query 0", "query 1", "query 2"]
    assert data.precomputed.descriptions == ["first 0.", "first 1.", "first 2."]


def test_an_entry_without_captions_is_one_line(tmp_path):
    (tmp_path / "x_recap.json").write_text(json.dumps([{"image_id": "a.jpg", "captions": ["d"]}]))
    (tmp_path / "x_query.json").write_text(json.dumps([{"image_id": "a.jpg", "captions": []}]))
    with pytest.raises(VisaError, match=r"x_query.json: entry 0 is not .*captions"):
        VisaRelease(str(tmp_path), "x").load()
