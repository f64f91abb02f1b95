"""VISA on a region matcher: the retrieve stage's pairwise path, the matcher backbone, and the dataset that
checks images against SCAN's precomputed features."""

from __future__ import annotations

import json
from pathlib import Path

import lightning
import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from PIL import Image

from visa.backbones.region_matcher import RegionMatcherBackbone
from visa.cache import SQLiteStore
from visa.config import check_part, register
from visa.core.errors import VisaError
from visa.data import Item
from visa.data.precomp import AnnotatedPrecompDataset
from visa.method.pairwise import pairwise_topk_stream
from visa.method.retrieve import retrieve
from visa.method.settings import RetrievalSettings, Settings
from visa.method.stages import Run
from visa.vsl.module import RegionMatcherModule
from visa.vsl.synthetic import write_toy_precomp
from visa.vsl.text import Vocabulary


def test_blockwise_topk_equals_the_full_score_matrix():
    torch.manual_seed(0)
    full = torch.randn(23, 57)
    gallery = [Item(str(i), f"{i}.jpg") for i in range(57)]
    texts = [str(q) for q in range(23)]
    stream = pairwise_topk_stream(lambda t, items, idx: full[[int(x) for x in t]][:, idx], gallery, 10, 4, 9)
    got = dict(stream(texts))
    scores, indices = full.topk(10, dim=1)
    for q in range(23):
        assert got[q][1] == indices[q].tolist()
        assert np.allclose(got[q][0], scores[q].tolist())


@pytest.fixture(scope="module")
def aligned(tmp_path_factory) -> dict:
    """A toy benchmark: 12 images on disk with a Karpathy json, SCAN's files of the same images, and a
    random-weight SGR checkpoint for them."""
    root = tmp_path_factory.mktemp("aligned")
    scan = write_toy_precomp(
        root / "scan", sizes={"train": 12, "dev": 12, "test": 12}, dim=16, num_concepts=8
    )
    caps = (scan / "test_caps.txt").read_text().splitlines()
    (root / "images").mkdir()
    images = []
    for i in range(12):
        Image.new("RGB", (8, 8), (20 * i, 0, 0)).save(root / "images" / f"{i}.jpg")
        sentences = [{"raw": c} for c in caps[5 * i : 5 * i + 5]]
        images.append({"filepath": "", "filename": f"{i}.jpg", "split": "test", "sentences": sentences})
    (root / "dataset_toy.json").write_text(json.dumps({"images": images}))
    vocab = Vocabulary.load(root / "scan" / "vocab" / "toy_precomp_vocab.json")
    torch.manual_seed(0)
    module = RegionMatcherModule(
        len(vocab), {"module": "SGR", "img_dim": 16, "word_dim": 8, "embed_size": 16, "sim_dim": 16}
    )
    ckpt = root / "sgr.ckpt"
    torch.save(
        {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
         "pytorch-lightning_version": lightning.__version__},
        ckpt,
    )  # fmt: skip
    return {"root": root, "scan": scan, "ckpt": ckpt, "vocab": root / "scan/vocab/toy_precomp_vocab.json"}


def dataset(
    aligned, features="test_ims.npy", captions="test_caps.txt", **settings
) -> AnnotatedPrecompDataset:
    return AnnotatedPrecompDataset(
        "toy", str(aligned["root"]), "dataset_toy.json", "images", "karpathy",
        features=str(aligned["scan"] / features), captions=str(aligned["scan"] / captions), **settings,
    )  # fmt: skip


def test_dataset_checks_that_images_and_features_line_up(aligned):
    data = dataset(aligned).load()
    assert len(data.gallery) == 12 and len(data.queries) == 60
    shuffled = aligned["scan"] / "shuffled_caps.txt"
    lines = (aligned["scan"] / "test_caps.txt").read_text().splitlines()
    shuffled.write_text("\n".join(lines[5:10] + lines[:5] + lines[10:]) + "\n")  # images 0 and 1 swapped
    with pytest.raises(VisaError, match=r"image 0 \(0.jpg\) does not line up with row 0"):
        dataset(aligned, captions="shuffled_caps.txt").load()
    np.save(aligned["scan"] / "short_ims.npy", np.zeros((8, 36, 16), np.float32))
    with pytest.raises(VisaError, match="12 images but .*short_ims.npy has 8 rows"):
        dataset(aligned, features="short_ims.npy").load()


def test_dataset_takes_every_setting_of_the_annotated_datasets(aligned):
    """AnnotatedDataset's settings reach the loader (0.1.0 re-declared its constructor without some)."""
    first = dataset(aligned, max_items=5).load()
    assert [item.id for item in first.gallery] == [f"{i}.jpg" for i in range(5)] and len(first.queries) == 25
    two = dataset(aligned, max_captions=2).load()  # fewer of each image's captions than min_matching
    assert len(two.gallery) == 12 and len(two.queries) == 24
    joined = dataset(aligned, paragraph=True).load()  # one query per image: its captions joined
    assert len(joined.queries) == 12 and joined.queries[3].relevant == (3,)
    with pytest.raises(VisaError, match="caption_rewrite='loud' must be one of"):
        dataset(aligned, caption_rewrite="loud").load()
    cfg = compose_run(["dataset=flickr30k_precomp", "+dataset.max_items=5", "+dataset.paragraph=true"])
    check_part(cfg.dataset, "dataset")
    cfg = compose_run(["dataset=flickr30k_precomp", "+dataset.max_itemz=5"])
    with pytest.raises(
        VisaError, match=r"dataset.max_itemz is not a setting of .*AnnotatedPrecompDataset; valid"
    ):
        check_part(cfg.dataset, "dataset")


def compose_run(overrides: list[str]):
    register()
    with initialize_config_dir(
        config_dir=str(Path(__file__).resolve().parents[1] / "conf"), version_base="1.3"
    ):
        return compose("config", overrides=overrides)


def test_pipeline_retrieves_pairwise_with_the_matcher_and_caches_per_query(aligned, tmp_path):
    data = dataset(aligned).load()
    features, vocab = str(aligned["scan"] / "test_ims.npy"), str(aligned["vocab"])
    backbone = RegionMatcherBackbone(
        [str(aligned["ckpt"])], features, vocab, "cpu", batch_size=7, item_chunk=5
    )
    cache = SQLiteStore(tmp_path / "cache")
    try:
        run = Run(data, Settings(retrieval=RetrievalSettings(top_k=4), progress=False), cache)
        retrieved = retrieve(run, backbone)
        scores, indices = retrieved.scores, retrieved.candidates
        assert scores.shape == (60, 10) and run.runner.stats["retrieve_pairs"].computed == 60
        full = backbone.score_pairs([q.text for q in data.queries], data.gallery, list(range(12)))
        assert torch.equal(indices, full.topk(10, dim=1).indices)
        again = Run(data, Settings(retrieval=RetrievalSettings(top_k=4), progress=False), cache)
        retrieved = retrieve(again, backbone)
        scores2, indices2 = retrieved.scores, retrieved.candidates
        pairs_stats = again.runner.stats["retrieve_pairs"]
        assert pairs_stats.computed == 0 and pairs_stats.cached == 60
        assert torch.equal(indices, indices2) and torch.allclose(scores, scores2)
    finally:
        cache.close()


def test_two_checkpoints_average_their_similarities(aligned):
    features, vocab = str(aligned["scan"] / "test_ims.npy"), str(aligned["vocab"])
    one = RegionMatcherBackbone([str(aligned["ckpt"])], features, vocab, device="cpu")
    two = RegionMatcherBackbone([str(aligned["ckpt"])] * 2, features, vocab, device="cpu")
    items = [Item(str(i), f"{i}.jpg") for i in range(12)]
    texts = ["a dog and a cat .", "some car"]
    assert torch.allclose(
        one.score_pairs(texts, items, list(range(12))), two.score_pairs(texts, items, list(range(12)))
    )
    assert two.identity()["checkpoints"][0]["path"] == str(Path(aligned["ckpt"]).resolve())
