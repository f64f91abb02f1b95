"""INQUIRE-Rerank in its two published layouts (the benchmark repository's csv + train_rerank/ images, the
Hugging Face parquet files), its metrics (INQUIRE's AP@k, nDCG@k, MRR) against hand-computed values and
against the scikit-learn calls of INQUIRE's metrics.py, and a run of the whole pipeline on its candidates."""

from __future__ import annotations

import csv
import io
import math
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sklearn.metrics
import torch
from conftest import read_run, run_cli
from PIL import Image

from visa.core.errors import VisaError
from visa.data.inquire import InquireRerankDataset
from visa.method.evaluate import evaluate
from visa.method.metrics import average_precision_at_k, ndcg_at_k, ranking_metrics, reciprocal_rank

# (query, split, candidates as (iNat24 file name, relevant)) -- the same images may serve several queries
CATEGORY = "04686_Animalia_Chordata_Mammalia_Carnivora_Herpestidae_Mungos_mungo"
OTHER = "00123_Animalia_Chordata_Aves_Passeriformes_Icteridae_Sturnella_magna"
QUERIES = [
    ("A mongoose standing upright alert", "test", [("a1", 0), ("a2", 1), ("a3", 0), ("a4", 1)]),
    ("A meadowlark vocalizing", "test", [("b1", 1), ("b2", 0), ("a3", 0), ("b4", 0)]),
    ("Eurasian Black Grouse male", "val", [("c1", 0), ("c2", 0), ("c3", 1), ("c4", 0)]),
]


def file_name(stem: str) -> str:
    """An iNat24 file name as its train.json and INQUIRE's files write it."""
    folder = CATEGORY if stem.startswith("a") else OTHER
    return f"train/{folder}/{stem}-903be103-954f-409b-81f1-82d4478928f0.jpg"


def jpeg(stem: str) -> bytes:
    rng = np.random.default_rng(sum(map(ord, stem)))
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (32, 40, 3), dtype=np.uint8)).save(buffer, format="JPEG")
    return buffer.getvalue()


def write_repository_layout(root):
    """INQUIRE's data/ folder: inquire/inquire_rerank.csv (query, file_name, relevant, as its
    eval_clip_rerank.py reads it, written by pandas with its index column), inquire_queries_{val,test}.csv
    (the repository's columns), and inat24/train_rerank/<category>/<uuid>.jpg."""
    (root / "inquire").mkdir(parents=True)
    rows, queries = [], {"val": [], "test": []}
    for q, (text, split, candidates) in enumerate(QUERIES):
        queries[split].append([str(q), str(100 + q), text, "Behavior", "Feeding and Hydration", "Mammals"])
        for stem, relevant in candidates:
            rows.append([str(len(rows)), text, file_name(stem), str(relevant)])
            image = root / "inat24" / "train_rerank" / file_name(stem).split("/", 1)[1]
            image.parent.mkdir(parents=True, exist_ok=True)
            image.write_bytes(jpeg(stem))
    write_csv(root / "inquire" / "inquire_rerank.csv", ["", "query", "file_name", "relevant"], rows)
    for split, lines in queries.items():
        header = ["", "query_id", "query_text", "supercategory", "category", "iconic_group"]
        write_csv(root / "inquire" / f"inquire_queries_{split}.csv", header, lines)
    return root


def write_csv(path, header, rows):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


HF_FEATURES = [  # the dataset card's features, in its order
    ("image", pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
    ("query", pa.string()),
    ("relevant", pa.int64()),
    ("clip_score", pa.float64()),
    ("inat24_image_id", pa.int64()),
    ("inat24_file_name", pa.string()),
    ("supercategory", pa.string()),
    ("category", pa.string()),
    ("iconic_group", pa.string()),
    ("inat24_species_id", pa.int64()),
    ("inat24_species_name", pa.string()),
    ("latitude", pa.float64()),
    ("longitude", pa.float64()),
    ("location_uncertainty", pa.float64()),
    ("date", pa.string()),
    ("license", pa.string()),
    ("rights_holder", pa.string()),
]


def write_hub_layout(root):
    """The Hugging Face copy as the hub stores it: data/validation-*.parquet and data/test-*.parquet."""
    (root / "data").mkdir(parents=True)
    for split, hub_split in (("val", "validation"), ("test", "test")):
        records = []
        for text, query_split, candidates in QUERIES:
            if query_split != split:
                continue
            for r, (stem, relevant) in enumerate(candidates):
                name = file_name(stem)
                records.append(
                    {
                        "image": {"bytes": jpeg(stem), "path": name.rsplit("/", 1)[1]},
                        "query": text,
                        "relevant": relevant,
                        "clip_score": 0.3 - 0.01 * r,
                        "inat24_image_id": 1000 + sum(map(ord, stem)),
                        "inat24_file_name": name,
                        "supercategory": "Behavior",
                        "category": "Feeding and Hydration",
                        "iconic_group": "Mammals",
                        "inat24_species_id": 4686,
                        "inat24_species_name": "Mungos mungo",
                        "latitude": -1.5,
                        "longitude": 35.1,
                        "location_uncertainty": 10.0,
                        "date": "2021-06-01 10:00:00+00:00",
                        "license": "CC BY-NC",
                        "rights_holder": "someone",
                    }
                )
        table = pa.Table.from_pylist(records, schema=pa.schema(HF_FEATURES))
        pq.write_table(table, root / "data" / f"{hub_split}-00000-of-00001.parquet")
    return root


def check_test_split(dataset, media):
    assert [q.text for q in dataset.queries] == [QUERIES[0][0], QUERIES[1][0]]
    ids = [item.id for item in dataset.gallery]
    assert len(ids) == 7 == len(set(ids))  # a3 is a candidate of both queries, one gallery item
    assert all(item.path.startswith(str(media)) for item in dataset.gallery)
    for query, candidates, (_, _, expected) in zip(dataset.queries, dataset.candidates, QUERIES):
        assert [dataset.gallery[g].id.split("/")[1].split("-")[0] for g in candidates] == [
            s for s, _ in expected
        ]
        assert [candidates.index(g) for g in query.relevant] == [i for i, (_, r) in enumerate(expected) if r]
    assert dataset.metrics == ("mAP@50", "nDCG@50", "MRR", "mAP@100", "nDCG@100")
    assert dataset.bank == "split:validation"


def test_repository_csv_layout(tmp_path):
    root = write_repository_layout(tmp_path / "inquire")
    dataset = InquireRerankDataset(root=str(root)).load()
    check_test_split(dataset, root / "inat24" / "train_rerank")
    val = InquireRerankDataset(root=str(root), split="val").load()
    assert [q.text for q in val.queries] == [QUERIES[2][0]] and val.bank is None
    assert len(InquireRerankDataset(root=str(root), split="all").load().queries) == 3
    assert InquireRerankDataset(root=str(root)).texts() == [QUERIES[0][0], QUERIES[1][0]]
    (root / "inquire" / "inquire_queries_test.csv").unlink()
    with pytest.raises(VisaError, match="inquire_queries_test.csv not found"):
        InquireRerankDataset(root=str(root)).load()


def test_hugging_face_parquet_layout_writes_the_images_once(tmp_path):
    root = write_hub_layout(tmp_path / "hub")
    dataset = InquireRerankDataset(root=str(root)).load()
    check_test_split(dataset, root / "images")
    first = {item.path: (item.path and open(item.path, "rb").read()) for item in dataset.gallery}
    assert all(data[:2] == b"\xff\xd8" for data in first.values())  # the JPEG bytes from the parquet file
    stamps = {p: os.stat(p).st_mtime_ns for p in first}
    again = InquireRerankDataset(root=str(root)).load()
    assert {p: os.stat(p).st_mtime_ns for p in first} == stamps  # not written again
    assert [q.relevant for q in again.queries] == [q.relevant for q in dataset.queries]
    val = InquireRerankDataset(root=str(root), split="validation", layout="parquet").load()
    assert [q.text for q in val.queries] == [QUERIES[2][0]]
    assert InquireRerankDataset(root=str(root), split="val").texts() == [QUERIES[2][0]]


def test_bad_inquire_inputs_are_one_line(tmp_path):
    with pytest.raises(VisaError, match="neither .*parquet .* nor .*inquire_rerank.csv"):
        InquireRerankDataset(root=str(tmp_path / "nothing")).load()
    root = write_repository_layout(tmp_path / "bad")
    write_csv(root / "inquire" / "inquire_rerank.csv", ["query", "image", "relevant"], [["q", "x.jpg", "1"]])
    with pytest.raises(VisaError, match="no column\\(s\\) file_name"):
        InquireRerankDataset(root=str(root)).load()
    rows = [[QUERIES[0][0], file_name("a1"), "2"]]
    write_csv(root / "inquire" / "inquire_rerank.csv", ["query", "file_name", "relevant"], rows)
    with pytest.raises(VisaError, match="relevant='2' must be 0 or 1"):
        InquireRerankDataset(root=str(root)).load()
    with pytest.raises(VisaError, match="is not a ranking metric"):
        InquireRerankDataset(root=str(root), metrics=["AP50"])


def test_a_missing_default_bank_names_its_file_and_how_to_give_another(tmp_path):
    """dataset=inquire_rerank normalizer=nnn on the test split: the normaliser's default bank is the
    validation queries; without their file, the line says so, not "use dataset.split=all"."""
    from visa.data import Query
    from visa.data.banks import read_bank

    root = write_repository_layout(tmp_path / "inquire")
    (root / "inquire" / "inquire_queries_val.csv").unlink()
    dataset = InquireRerankDataset(root=str(root)).load()  # the test split still loads

    def load_split(split):  # as visa.run does: the split's captions without its images
        return [Query(t, ()) for t in InquireRerankDataset(root=str(root), split=split).texts()]

    with pytest.raises(VisaError) as e:
        read_bank(dataset.bank, dataset, load_split, None)  # what normalizer.bank=auto resolves to
    with pytest.raises(VisaError) as auto:
        read_bank("auto", dataset, load_split, None)
    for line in (str(e.value), str(auto.value)):
        assert str(root / "inquire" / "inquire_queries_val.csv") in line and "\n" not in line
        assert "give another bank with normalizer.bank=..." in line and "dataset.split=all" not in line
    assert str(auto.value).startswith(
        "normalizer.bank=auto: the normaliser's default bank for dataset inquire_rerank is split:validation, "
    )


# -- metrics ----------------------------------------------------------------------------------------------
def test_ap_at_50_ndcg_and_mrr_on_the_fixture(tmp_path):
    """The backbone's order = the file's order here; the values are worked out by hand."""
    dataset = InquireRerankDataset(root=str(write_repository_layout(tmp_path / "inquire"))).load()
    order = torch.tensor([list(c) for c in dataset.candidates])
    metrics = evaluate(dataset, {"base": order}, [1, 5])
    # query 0: relevant at ranks 2 and 4: AP = (1/2 + 2/4) / min(2, 50) = 0.5; query 1: rank 1: AP = 1
    assert metrics["base/mAP@50"] == 75.0 and metrics["base/mAP@100"] == 75.0
    # nDCG: query 0 (1/log2(3) + 1/log2(5)) / (1 + 1/log2(3)); query 1: 1
    ndcg0 = (1 / math.log2(3) + 1 / math.log2(5)) / (1 + 1 / math.log2(3))
    assert metrics["base/nDCG@50"] == round(100 * (ndcg0 + 1) / 2, 4)
    assert metrics["base/MRR"] == 0.75  # (1/2 + 1) / 2, as a fraction like INQUIRE's
    assert metrics["base/R@1"] == 50.0 and metrics["base/R@5"] == 100.0
    # AP@k divides by min(relevant, k): with k=1 query 0 (first relevant at rank 2) scores 0, query 1 scores 1
    assert ranking_metrics(order, [q.relevant for q in dataset.queries], ["mAP@1"]) == {"mAP@1": 50.0}


def test_metrics_equal_inquire_definitions_through_scikit_learn():
    """INQUIRE's metrics.py: AP from average_precision_score over the first k, times (relevant in the first k)
    / min(positives, k); nDCG from ndcg_score with the positives beyond the list appended last; MRR."""
    rng = np.random.default_rng(0)
    for _trial in range(30):
        n, positives_beyond = 100, int(rng.integers(0, 5))
        y_true = (rng.random(n) < 0.3).astype(int)
        y_pred = rng.permutation(n).astype(float)  # distinct scores: no ties
        ranked = list(np.argsort(-y_pred))
        relevant = set(np.flatnonzero(y_true).tolist()) | {n + i for i in range(positives_beyond)}
        count_pos = len(relevant)
        for k in (10, 50, 100):
            top = ranked[:k]
            expected = 0.0
            if y_true[top].sum() > 0:
                ap = sklearn.metrics.average_precision_score(y_true[top], y_pred[top])
                expected = ap * y_true[top].sum() / min(count_pos, k)
            assert average_precision_at_k(ranked, relevant, k) == pytest.approx(expected, abs=1e-12)
            unknown = count_pos - int(y_true[top].sum())
            expanded_true = [list(y_true[top]) + [1] * unknown]
            expanded_pred = [list(y_pred[top]) + [-100] * unknown]
            expected_ndcg = (
                sklearn.metrics.ndcg_score(expanded_true, expanded_pred, k=k) if count_pos else 0.0
            )
            assert ndcg_at_k(ranked, relevant, k) == pytest.approx(expected_ndcg, abs=1e-12)
        first = next((i for i, g in enumerate(ranked) if g in relevant), None)
        assert reciprocal_rank(ranked, relevant) == (0.0 if first is None else 1 / (first + 1))


# -- the pipeline on INQUIRE's candidates -----------------------------------------------------------------
def test_pipeline_reranks_the_given_candidates(session_cache, tmp_path):
    root = write_hub_layout(tmp_path / "inquire")
    run_dir = tmp_path / "run"
    overrides = ["dataset=inquire_rerank", f"dataset.root={root}", "questions.max=1", "questions.num=1"]
    result = run_cli(*overrides, "progress=false", cache=session_cache, run_dir=run_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    header = next(line for line in result.stdout.splitlines() if "R@1" in line)
    assert header.split()[-5:] == ["mAP@50", "nDCG@50", "MRR", "mAP@100", "nDCG@100"]  # on the terminal too
    metrics, results = read_run(run_dir)
    assert metrics["data/queries"] == 2 and metrics["data/gallery"] == 7
    for prefix in ("base", "rerank"):
        for name in ("mAP@50", "nDCG@50", "MRR", "mAP@100", "nDCG@100", "R@1"):
            assert f"{prefix}/{name}" in metrics
    dataset = InquireRerankDataset(root=str(root)).load()
    for record, candidates in zip(results, dataset.candidates):  # every candidate, and only those
        ids = {dataset.gallery[g].id for g in candidates}
        assert {c["id"] for c in record["base_top"]} == ids == {c["id"] for c in record["rerank_top"]}
        scores = [c["score"] for c in record["base_top"]]
        assert scores == sorted(scores, reverse=True)
    assert metrics["normalizer"] == "none"
