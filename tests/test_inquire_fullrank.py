"""INQUIRE-Fullrank in the benchmark repository's layout, its published embeddings, and runs through
`python -m visa.run` with the gallery store and approximate indexes."""

from __future__ import annotations

import csv
import io
import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sklearn.metrics
import torch
from conftest import REPO, read_run
from helpers.runs import run_in_one_process
from helpers.tiny_models import open_clip_dir
from PIL import Image

from visa.cache.gallery import StoredRows, list_stores
from visa.core.errors import VisaError
from visa.data.inquire_fullrank import InquireFullrankDataset, image_key
from visa.method.metrics import ranking_metrics

CATEGORIES = ["03111_Animalia_Chordata_Aves_Galliformes_Phasianidae_Lyrurus_tetrix", "04686_Animalia_Mungos"]
IMAGES = [f"train/{CATEGORIES[i % 2]}/{i:02d}-5f0e7c7e-1b7d-4c1e-9a43-0c8d6b2a1f3e.jpg" for i in range(10)]
# query_id, query_text, split, the indices (into IMAGES) of its relevant images
QUERIES = [
    (109, "Eurasian Black Grouse male", "test", [0, 2, 4]),
    (139, "male common green darner", "test", [1, 9]),
    (95, "penguin during molting period", "val", [3]),
]
DIM = 16  # the tiny open_clip model's embedding width
EMBS = "inat24/embs/tiny-clip"


def jpeg(i: int) -> bytes:
    rng = np.random.default_rng(i)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(buffer, format="JPEG")
    return buffer.getvalue()


def write_layout(root):
    """INQUIRE's data/ folder as its data/README.md and evaluation code read it."""
    (root / "inquire").mkdir(parents=True)
    for split in ("val", "test"):
        with open(root / "inquire" / f"inquire_queries_{split}.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["", "query_id", "query_text", "supercategory", "category", "iconic_group"])
            for n, (qid, text, s, _) in enumerate(QUERIES):
                if s == split:
                    w.writerow([n, qid, text, "Appearance", "Sex identification", "Birds"])
    with open(root / "inquire" / "inquire_annotations.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["query_id", "image_path"])
        for qid, _, _, relevant in QUERIES:
            for i in relevant:
                w.writerow([qid, IMAGES[i]])
    inat = root / "inat24"
    for i, name in enumerate(IMAGES):
        (inat / name).parent.mkdir(parents=True, exist_ok=True)
        (inat / name).write_bytes(jpeg(i))
    images = [{"id": i, "file_name": name, "width": 24, "height": 24} for i, name in enumerate(IMAGES)]
    (inat / "train.json").write_text(json.dumps({"images": images, "categories": [], "annotations": []}))
    # clip-retrieval's layout, in another order than train.json, in two parts: img_emb_{0,1}.npy (float16)
    # and metadata_{0,1}.parquet (image_path without .jpg)
    order = [7, 2, 9, 0, 4, 1, 8, 3, 6, 5]
    rng = np.random.default_rng(3)
    vectors = rng.standard_normal((10, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    (root / EMBS / "img_emb").mkdir(parents=True)
    (root / EMBS / "metadata").mkdir(parents=True)
    for part, rows in enumerate((order[:6], order[6:])):
        start = 0 if part == 0 else 6
        np.save(
            root / EMBS / "img_emb" / f"img_emb_{part}.npy",
            vectors[start : start + len(rows)].astype(np.float16),
        )
        table = pa.table({"image_path": [IMAGES[i][: -len(".jpg")] for i in rows]})
        pq.write_table(table, root / EMBS / "metadata" / f"metadata_{part}.parquet")
    return root, order, vectors


def test_loads_queries_annotations_and_either_gallery(tmp_path):
    root, order, _ = write_layout(tmp_path / "inquire")
    test = InquireFullrankDataset(str(root)).load()
    assert [q.text for q in test.queries] == ["Eurasian Black Grouse male", "male common green darner"]
    assert [g.id for g in test.gallery] == IMAGES and all(os.path.isfile(g.path) for g in test.gallery)
    assert [sorted(q.relevant) for q in test.queries] == [[0, 2, 4], [1, 9]]
    assert test.metrics == ("mAP@50", "nDCG@50", "MRR", "Recall@100") and test.bank == "split:val"
    val = InquireFullrankDataset(str(root), split="val").load()
    assert [q.text for q in val.queries] == ["penguin during molting period"] and val.bank is None
    published = InquireFullrankDataset(str(root), gallery="embeddings", embeddings=EMBS).load()
    assert [g.id for g in published.gallery] == [IMAGES[i] for i in order]
    grouse = {published.gallery[g].id for g in published.queries[0].relevant}
    assert grouse == {IMAGES[0], IMAGES[2], IMAGES[4]}
    assert InquireFullrankDataset(str(root), split="validation").texts() == ["penguin during molting period"]
    assert image_key("/data/inat24/train/x/y.jpg") == image_key("x/y") == "x/y.jpg"


def test_bad_inputs_are_one_line(tmp_path):
    root, _, _ = write_layout(tmp_path / "inquire")
    with pytest.raises(VisaError, match="inquire_queries_test.csv not found"):
        InquireFullrankDataset(str(tmp_path)).load()
    with pytest.raises(VisaError, match="dataset.gallery=embeddings needs dataset.embeddings"):
        InquireFullrankDataset(str(root), gallery="embeddings")
    with pytest.raises(VisaError, match="no img_emb/\\*.npy and metadata/\\*.parquet"):
        InquireFullrankDataset(str(root), gallery="embeddings", embeddings="inat24/embs/none").load()
    (root / "inat24" / "train.json").unlink()
    with pytest.raises(VisaError, match="train.json not found"):
        InquireFullrankDataset(str(root)).load()
    (root / "inquire" / "inquire_annotations.csv").write_text("query,image\n")
    with pytest.raises(VisaError, match="no column\\(s\\) image_path, query_id"):
        InquireFullrankDataset(str(root), gallery="embeddings", embeddings=EMBS).load()


def test_published_backbone_reads_the_rows_in_metadata_order(tmp_path):
    from visa.backbones.published import PublishedEmbeddings

    root, order, vectors = write_layout(tmp_path / "inquire")
    dataset = InquireFullrankDataset(str(root), gallery="embeddings", embeddings=EMBS).load()

    class Text:
        batch_size = 2

        def identity(self):
            return {"model": "text"}

        def encode_text(self, texts):
            return torch.zeros(len(texts), DIM)

    backbone = PublishedEmbeddings(str(root / EMBS), Text())
    rows = backbone.gallery_rows(dataset.gallery)
    assert isinstance(rows, StoredRows) and rows.shape == (10, DIM)
    torch.testing.assert_close(rows[0:10], torch.from_numpy(vectors).half().float())
    with pytest.raises(VisaError, match="is not the image list of the published embeddings"):
        backbone.gallery_rows(InquireFullrankDataset(str(root)).load().gallery)
    with pytest.raises(VisaError, match="encodes no images"):
        backbone.encode_visual(dataset.gallery[:1])


def inquire_ap(y_true: np.ndarray, y_pred: np.ndarray, count_pos: int, k: int) -> float:
    """INQUIRE's AP@k as its metrics.py defines it (scikit-learn's AP of the first k, renormalised)."""
    if y_true[:k].sum() == 0:
        return 0.0
    ap = sklearn.metrics.average_precision_score(y_true[:k], y_pred[:k])
    return ap * y_true[:k].sum() / min(count_pos, k)


def test_recall_at_k_is_the_share_of_relevant_items_found():
    ranking = torch.tensor([[3, 1, 0, 2], [0, 1, 2, 3]])
    metrics = ranking_metrics(ranking, [(0, 2, 5), (3,)], ["Recall@2", "Recall@3"])
    assert metrics == {
        "Recall@2": pytest.approx(0.0),
        "Recall@3": pytest.approx(100 * (1 / 3) / 2, abs=1e-3),
    }


def test_fullrank_runs_end_to_end(tmp_path):
    """One-stage and two-stage INQUIRE-Fullrank through `python -m visa.run`: from the published embeddings
    with an HNSW index (AP@50 as INQUIRE computes it), then encoding train.json's images into the gallery
    store with an IVF index, then the same again (nothing encoded, the index read back), then the store
    encoded by two submitit workers."""
    root, _, _ = write_layout(tmp_path / "inquire")
    tiny = open_clip_dir(tmp_path / "oc")
    cache = tmp_path / "cache"
    common = [
        "dataset=inquire_fullrank",
        f"dataset.root={root}",
        "retrieval.top_k=10",
        "questions.max=1",
        "questions.num=1",
        "progress=false",
        f"cache_dir={cache}",
    ]
    published = [
        *common,
        "backbone=inquire_published",
        f"dataset.embeddings={EMBS}",
        "dataset.gallery=embeddings",
        f"backbone.text.model=local-dir:{tiny}",
        "backbone.text.pretrained=null",
        "backbone.text.device=cpu",
        "retrieval.index=hnsw",
        f"hydra.run.dir={tmp_path / 'run_published'}",
    ]
    encoded = [
        *common,
        "backbone=clip_vit_b32",
        f"backbone.model=local-dir:{tiny}",
        "backbone.pretrained=null",
        "backbone.device=cpu",
        "retrieval.gallery_store=on",
        "retrieval.gallery_shard_size=4",
        "retrieval.index=ivf_flat",
        "retrieval.nlist=2",
        "retrieval.nprobe=2",
    ]
    argvs = [
        published,
        [*encoded, f"hydra.run.dir={tmp_path / 'run_encoded'}"],
        [*encoded, f"hydra.run.dir={tmp_path / 'run_again'}"],
        [  # the store encoded by 2 workers of submitit's local executor (the SLURM code path)
            *[a for a in encoded if not a.startswith("cache_dir=")],
            f"cache_dir={tmp_path / 'cache_cluster'}",
            "retrieval.gallery_launcher=local",
            "retrieval.gallery_workers=2",
            "+retrieval.gallery_executor.timeout_min=10",
            f"hydra.run.dir={tmp_path / 'run_cluster'}",
        ],
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    results, _ = run_in_one_process(argvs, REPO, env, timeout=900)
    for r in results:
        assert r["code"] in (0, None), r["stderr"][-3000:]

    metrics, records = read_run(tmp_path / "run_published")
    assert metrics["data/gallery"] == 10 and metrics["data/queries"] == 2
    assert metrics["calls/encode_visual/computed"] == 0 and metrics["calls/encode_visual/cached"] == 10
    assert metrics["retrieval/index"] == "hnsw" and metrics["retrieval/ann_recall@10"] == 100.0
    for prefix in ("base", "rerank"):
        values = []
        for record in records:
            ranked = [c["id"] for c in record["base_top" if prefix == "base" else "rerank_top"]]
            assert len(ranked) == 10  # the whole gallery: the AP below sees every rank
            truth = set(record["ground_truth"])
            y_true = np.array([i in truth for i in ranked], dtype=int)
            y_pred = np.arange(len(ranked), 0, -1, dtype=float)  # the ranking's order as scores
            values.append(100 * inquire_ap(y_true, y_pred, len(truth), 50))
        assert metrics[f"{prefix}/mAP@50"] == pytest.approx(sum(values) / len(values), abs=1e-3)
        assert metrics[f"{prefix}/Recall@100"] == 100.0  # ten images: every relevant one is in the top 100

    metrics, _ = read_run(tmp_path / "run_encoded")
    assert metrics["calls/encode_visual/computed"] == 10 and "retrieval/index_build_s" in metrics
    assert metrics["retrieval/index_factory"] == "IVF2,Flat" and metrics["retrieval/index_bytes"] > 0
    published_store, store = sorted(list_stores(cache), key=lambda s: s.dtype != "published")
    assert published_store.dtype == "published" and len(published_store.indexes) == 1  # the HNSW index, kept
    assert (store.count, store.shards_done, store.shards, store.dim) == (10, 3, 3, DIM)
    assert len(store.indexes) == 1
    again, _ = read_run(tmp_path / "run_again")
    assert again["calls/encode_visual/computed"] == 0 and again["calls/encode_visual/cached"] == 10
    assert "retrieval/index_load_s" in again and "retrieval/index_build_s" not in again
    assert again["base/mAP@50"] == metrics["base/mAP@50"]
    cluster, _ = read_run(tmp_path / "run_cluster")
    assert cluster["calls/encode_visual/computed"] == 10 and cluster["base/mAP@50"] == metrics["base/mAP@50"]
    assert len(list((tmp_path / "cache_cluster").glob("gallery/*/jobs"))) == 1  # submitit's job folder


def test_the_experiment_composes_for_a_gpu_run():
    from hydra import compose, initialize_config_dir

    from visa.assembly import Assembly
    from visa.config import register

    register()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["experiment=inquire_fullrank_vit_h", "data_dir=/data"])
    Assembly(cfg)  # the run's own checks: every part it uses (the re-ranker given the parts it names)
    assert cfg.backbone.embeddings == "/data/inquire/inat24/embs/vit-h-14-378"
    assert cfg.backbone.text.model == "ViT-H-14-378-quickgelu" and cfg.backbone.text.pretrained == "dfn5b"
    assert cfg.dataset.gallery == "embeddings" and cfg.retrieval.top_k == 100
    assert cfg.answer_mllm.model == "Qwen/Qwen2-VL-7B-Instruct"  # the paper's models re-rank the top 100
