"""Region matchers with VSL: SCAN's data format, the losses, the models, evaluation and
`python -m visa.train`, on synthetic data in SCAN's exact layout (tiny dimensions, CPU)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from visa.core.errors import VisaError
from visa.vsl.data import PrecompDataModule, PrecompSplit
from visa.vsl.evaluate import Encoded, evaluate_protocol, i2t_ranks, recalls, shard_similarities, t2i_ranks
from visa.vsl.losses import soft_rank, triplet_ranking_loss, visual_semantic_loss
from visa.vsl.models import RegionMatcher
from visa.vsl.synthetic import write_toy_precomp
from visa.vsl.text import Vocabulary, caption_tfidf, image_semantics, tokenize

REPO = Path(__file__).resolve().parents[1]
TINY_MODEL = [
    f"region_model.matcher.{k}" for k in ("img_dim=16", "word_dim=8", "embed_size=16", "sim_dim=16")
]
CPU_TRAINER = ["trainer.accelerator=cpu", "trainer.enable_progress_bar=false"]


@pytest.fixture(scope="module")
def toy_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("scan")
    write_toy_precomp(
        root, sizes={"train": 40, "dev": 10, "test": 10, "testall": 10}, dim=16, num_concepts=12
    )
    return root


# --- text: tokenisation, vocabulary, TF-IDF ------------------------------------------------------------


def test_tokenize_follows_treebank_rules():
    assert tokenize("a man's dog doesn't chase 1,000 birds at 10:30, (really)...") == [
        "a", "man", "'s", "dog", "does", "n't", "chase", "1,000", "birds", "at", "10:30", ",",
        "(", "really", ")", "...",
    ]  # fmt: skip
    assert tokenize("two dogs play in the u.s. park.") == [
        "two",
        "dogs",
        "play",
        "in",
        "the",
        "u.s.",
        "park",
        ".",
    ]
    assert tokenize("the dogs' ball") == ["the", "dogs", "'", "ball"]


def test_vocabulary_reads_scan_json_and_maps_unknown_words(tmp_path):
    path = tmp_path / "vocab" / "x_precomp_vocab.json"
    words = ["<pad>", "<start>", "<end>", "<unk>", "a", "dog", "."]
    path.parent.mkdir()
    path.write_text(json.dumps({"word2idx": {w: i for i, w in enumerate(words)}, "idx2word": {}, "idx": 7}))
    vocab = Vocabulary.load(path)
    assert len(vocab) == 7
    assert vocab.encode("A dog flies.") == [1, 4, 5, 3, 6, 2]


def test_vocabulary_errors_name_the_file(tmp_path):
    (tmp_path / "vocab").mkdir()
    (tmp_path / "vocab" / "coco_precomp_vocab.json").write_text("{}")
    with pytest.raises(VisaError, match=r"f30k_precomp_vocab.json not found; that folder holds coco_precomp"):
        Vocabulary.load(tmp_path / "vocab" / "f30k_precomp_vocab.json")
    with pytest.raises(VisaError, match="is not SCAN's format"):
        Vocabulary.load(tmp_path / "vocab" / "coco_precomp_vocab.json")


def test_image_semantics_is_the_mean_caption_tfidf_similarity():
    caps = ["a dog runs", "the dog runs fast", "dog on grass", "a dog", "dog dog", "red car", "a red car"]
    caps += ["car parked", "the car", "blue car", "a cat", "cat sleeps", "cat", "the cat", "small cat"]
    tfidf = caption_tfidf(caps)
    assert np.allclose(np.asarray(tfidf.multiply(tfidf).sum(1)).ravel(), 1.0)
    images = image_semantics(tfidf)
    dense = tfidf.toarray()
    expected = (dense @ dense.T).reshape(3, 5, 3, 5).mean(axis=(1, 3))  # VSL's 5x5 average pooling
    assert np.allclose((images @ images.T).toarray(), expected)


# --- data: SCAN's layout, one-line errors, memory map -----------------------------------------------------


def test_split_memory_maps_features_and_pairs_captions_with_images(toy_root):
    dm = PrecompDataModule(str(toy_root), "toy_precomp")
    split = dm.split("test")
    assert isinstance(split.features, np.memmap)
    assert split.num_images == 10 and len(split) == 50 and split.feature_shape == (36, 16)
    image, tokens, index, image_index = split[7]
    assert image_index == 1 and torch.equal(
        image, torch.from_numpy(np.load(toy_root / "toy_precomp/test_ims.npy")[1])
    )
    assert tokens[0] == dm.vocab("<start>") and tokens[-1] == dm.vocab("<end>")


@pytest.mark.parametrize(
    ("features", "captions", "message"),
    [
        (np.zeros((2, 36, 8), np.float32), 9, r"has 9 captions for 2 images .* expected 5 per image"),
        (np.zeros((2, 8), np.float32), 10, r"has shape \(2, 8\) .* expected images x regions x dim floats"),
        (np.zeros((2, 36, 8), np.int64), 10, r"expected images x regions x dim floats"),
    ],
)
def test_bad_files_give_one_line_errors(tmp_path, features, captions, message):
    folder = tmp_path / "bad_precomp"
    folder.mkdir()
    np.save(folder / "test_ims.npy", features)
    (folder / "test_caps.txt").write_text("a dog .\n" * captions)
    vocab = Vocabulary({"<pad>": 0, "<start>": 1, "<end>": 2, "<unk>": 3})
    with pytest.raises(VisaError, match=message) as err:
        PrecompSplit(folder, "test", vocab)
    assert "\n" not in str(err.value)


def test_cli_reports_a_missing_vocabulary_in_one_line(toy_root, tmp_path):
    (toy_root / "vocab" / "toy_precomp_vocab.json").rename(tmp_path / "moved.json")
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "visa.train", "datamodule=toy_precomp", f"datamodule.root={toy_root}",
             f"hydra.run.dir={tmp_path / 'run'}"],
            cwd=REPO, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
    finally:
        (tmp_path / "moved.json").rename(toy_root / "vocab" / "toy_precomp_vocab.json")
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith("error: vocabulary file")
    assert "Traceback" not in proc.stderr


# --- losses ---------------------------------------------------------------------------------------------


def test_triplet_loss_takes_the_hardest_negative_in_both_directions():
    scores = torch.tensor([[0.9, 0.8, 0.85], [0.3, 0.5, 0.6], [0.2, 0.1, 0.7]])
    # rows (images): 0 -> max(0.1, 0.15); 1 -> 0.3; 2 -> none
    # columns (captions): 0 -> none; 1 -> 0.5; 2 -> max(0.35, 0.1)
    assert triplet_ranking_loss(scores, 0.2, True).item() == pytest.approx(0.15 + 0.3 + 0.5 + 0.35)
    summed = triplet_ranking_loss(scores, 0.2, False).item()
    assert summed == pytest.approx(0.25 + 0.3 + 0.5 + 0.45)  # every violating negative counts


def test_soft_rank_is_the_rank_within_each_row():
    sim = torch.tensor([[0.9, 0.1, 0.5], [0.95, 0.8, 0.4], [0.3, 0.6, 0.7]])
    exact = torch.tensor([[1.0, 3.0, 2.0], [1.0, 2.0, 3.0], [3.0, 2.0, 1.0]])
    assert torch.allclose(soft_rank(sim, 0.001, "paper"), exact)
    symmetric = (sim + sim.T) / 2
    assert torch.allclose(soft_rank(symmetric, 0.001, "code"), soft_rank(symmetric, 0.001, "paper"))
    assert not torch.allclose(soft_rank(sim, 0.001, "code"), exact)  # the public code reads sim[i, j]


def test_vsl_is_zero_when_scores_rank_captions_as_semantics_rank_images():
    semantics = torch.tensor([[1.0, 0.6, 0.2], [0.6, 1.0, 0.3], [0.2, 0.3, 1.0]])
    scores = (semantics * 0.5 + 0.2).requires_grad_()  # same order in every row
    loss = visual_semantic_loss(scores, semantics, convention="paper")
    loss.backward()
    assert loss.item() == pytest.approx(0.0, abs=1e-6)
    assert scores.grad.abs().max().item() < 1e-6


def test_vsl_gradient_pushes_a_caption_down_when_its_image_is_semantically_farther():
    # Row 0: image 2 is semantically closer to image 0 than image 1 is, but caption 1 scores slightly higher
    # than caption 2 (inside the sigmoid's temperature window): VSL must lower s[0,1] and raise s[0,2].
    semantics = torch.tensor([[1.0, 0.2, 0.6], [0.2, 1.0, 0.3], [0.6, 0.3, 1.0]])
    scores = torch.tensor([[0.9, 0.5002, 0.5], [0.1, 0.9, 0.3], [0.6, 0.3, 0.9]], requires_grad=True)
    loss = visual_semantic_loss(scores, semantics, convention="paper")
    loss.backward()
    assert loss.item() > 0
    assert scores.grad[0, 1] > 0 and scores.grad[0, 2] < 0  # gradient descent lowers s01, raises s02
    assert scores.grad[1].abs().max() < 1e-6  # rows whose orders agree get no gradient
    # The total gradient is the triplet loss's plus VSL's: VSL adds exactly its own term.
    both = scores.detach().clone().requires_grad_()
    (triplet_ranking_loss(both) + visual_semantic_loss(both, semantics, convention="paper")).backward()
    alone = scores.detach().clone().requires_grad_()
    triplet_ranking_loss(alone).backward()
    assert torch.allclose(both.grad, alone.grad + scores.grad)


# --- models and evaluation ------------------------------------------------------------------------------


@pytest.mark.parametrize("module", ["SGR", "SAF"])
def test_chunked_similarity_equals_one_caption_at_a_time(module):
    torch.manual_seed(0)
    model = RegionMatcher(
        30, module, img_dim=16, num_regions=36, word_dim=8, embed_size=16, sim_dim=16
    ).eval()
    regions, lengths = torch.randn(5, 36, 16), torch.tensor([7, 3, 5, 9])
    tokens = torch.randint(4, 30, (4, 9)) * (torch.arange(9)[None] < lengths[:, None])
    with torch.no_grad():
        model.caption_chunk = 1  # SGRAF's loop
        reference = model(regions, tokens, lengths)
        model.caption_chunk = 4
        chunked = model(regions, tokens, lengths)
        padded = model(regions, torch.nn.functional.pad(tokens, (0, 6)), lengths)  # padding changes nothing
    assert reference.shape == (5, 4)
    assert torch.allclose(reference, chunked, atol=1e-6) and torch.allclose(reference, padded, atol=1e-6)


def test_recalls_and_shards():
    sims = np.full((2, 10), 0.1, np.float32)
    sims[0, 7] = 0.9  # image 0's best caption belongs to image 1; its own best (0.5) ranks second
    sims[0, 2] = 0.5
    sims[1, 5:10] = 0.8
    assert i2t_ranks(sims).tolist() == [1, 0]
    assert t2i_ranks(sims).tolist() == [0, 0, 0, 0, 0, 0, 0, 1, 0, 0]  # caption 7 scores image 0 higher
    r = recalls(sims)
    assert r["i2t/R@1"] == 50.0 and r["t2i/R@1"] == 90.0 and r["rsum"] == pytest.approx(540.0)
    torch.manual_seed(0)
    model = RegionMatcher(30, "SAF", img_dim=16, word_dim=8, embed_size=16, sim_dim=16).eval()
    enc = Encoded(torch.randn(7, 36, 16), torch.randn(35, 6, 16), torch.randint(2, 7, (35,)))
    with torch.no_grad():
        whole = shard_similarities(model.similarity, enc, None)
        sharded = shard_similarities(model.similarity, enc, 3)
    assert np.allclose(whole, sharded, atol=1e-6)
    with pytest.raises(ValueError, match="5fold1k needs 5,000 images"):
        evaluate_protocol(lambda a, b: whole, 7, "5fold1k")


# --- training through Lightning --------------------------------------------------------------------------


def compose_train(overrides: list[str]):
    from visa.train import CONFIG_DIR

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


def test_resumed_run_equals_uninterrupted_run(toy_root, tmp_path):
    from visa.train import train

    base = ["datamodule=toy_precomp", f"datamodule.root={toy_root}", "datamodule.batch_size=10", *TINY_MODEL]
    base += [*CPU_TRAINER, "region_model=sgr_vsl", "region_model.lr=3e-3", "test=false"]
    straight = train(compose_train([*base, "trainer.max_epochs=2"]), tmp_path / "straight")
    run = tmp_path / "resumed"
    train(compose_train([*base, "trainer.max_epochs=1"]), run)
    resumed = train(compose_train([*base, "trainer.max_epochs=2", "ckpt_path=last"]), run)
    a = torch.load(straight["last_checkpoint"], weights_only=True)["state_dict"]
    b = torch.load(resumed["last_checkpoint"], weights_only=True)["state_dict"]
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert straight["val/rsum"] == resumed["val/rsum"]


def test_sgraf_evaluates_the_mean_of_two_checkpoints(toy_root, tmp_path):
    from visa.train import train

    base = ["datamodule=toy_precomp", f"datamodule.root={toy_root}", "datamodule.batch_size=10", *TINY_MODEL]
    base += [*CPU_TRAINER, "trainer.max_epochs=1", "test=false"]
    sgr = train(compose_train([*base, "region_model=sgr_vsl"]), tmp_path / "sgr")["best_checkpoint"]
    saf = train(compose_train([*base, "region_model=saf_vsl"]), tmp_path / "saf")["best_checkpoint"]
    out = train(compose_train([*base, "train=false", f"ckpt_path=[{sgr},{saf}]"]), tmp_path / "sgraf")
    metrics = json.loads((tmp_path / "sgraf" / "metrics.json").read_text())
    assert metrics["checkpoints"] == [sgr, saf] and out["rsum"] == metrics["1k/rsum"]
    assert {"i2t/R@1", "i2t/R@5", "i2t/R@10", "t2i/R@1", "t2i/R@5", "t2i/R@10", "rsum"} <= metrics.keys()


@pytest.mark.slow
def test_sgr_with_vsl_learns_the_toy(tmp_path):
    """A few epochs of SGR+VSL on the toy lift text-to-image R@1 far above chance (1 in 30 images)."""
    from visa.train import train

    write_toy_precomp(
        tmp_path, sizes={"train": 120, "dev": 30, "test": 30, "testall": 30}, dim=16, num_concepts=12
    )
    cfg = compose_train(
        ["datamodule=toy_precomp", f"datamodule.root={tmp_path}", "datamodule.batch_size=16",
         "region_model=sgr_vsl", "region_model.lr=3e-3", "region_model.matcher.img_dim=16",
         "region_model.matcher.word_dim=16", "region_model.matcher.embed_size=32",
         "region_model.matcher.sim_dim=32", "trainer.max_epochs=7", *CPU_TRAINER]
    )  # fmt: skip
    metrics = train(cfg, tmp_path / "run")
    assert metrics["t2i/R@1"] > 5 * 100 / 30, metrics
