"""The native light-weight re-ranker against FlagEmbedding's own scores on a tiny checkpoint in the
published layout (tests/fixtures/bge_lightweight: the checkpoint, reference.json and make_reference.py,
which made both)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from visa.core.errors import VisaError
from visa.scorers.bge_lightweight import BGELightweightReranker, load_lightweight

FIXTURE = Path(__file__).parent / "fixtures" / "bge_lightweight"
CHECKPOINT = str(FIXTURE / "checkpoint")
REFERENCE = json.loads((FIXTURE / "reference.json").read_text())
PAIRS = [tuple(p) for p in REFERENCE["pairs"]]
# reference.json's attention names: FlagEmbedding's default (SDPA under transformers 4.46, no soft-capping)
# and eager (Gemma 2's attention soft-capping)
SOFTCAPPING = {"eager": True, "default": False}


def scorer(case: dict, attention: str = "eager", batch_size: int = 8, **kwargs) -> BGELightweightReranker:
    return BGELightweightReranker(
        model=CHECKPOINT,
        cutoff_layers=case["cutoff_layers"],
        compress_ratio=case["compress_ratio"],
        compress_layers=case["compress_layers"],
        max_length=case["max_length"],
        query_max_length=case["query_max_length"],
        attention_softcapping=SOFTCAPPING[attention],
        dtype="float32",
        device="cpu",
        batch_size=batch_size,
        **kwargs,
    )


def test_fixture_is_what_the_equality_needs():
    assert len(PAIRS) >= 20 and REFERENCE["transformers"].startswith("4.")
    cases = REFERENCE["cases"]
    assert {c["compress_ratio"] for c in cases.values()} >= {1, 2, 4}
    # the two attentions give different scores: a scorer ignoring the soft-capping setting fails below
    plain = cases["plain"]
    assert max(abs(a - b) for a, b in zip(plain["eager_batch1"][0], plain["default_batch1"][0])) > 0.5


@pytest.mark.parametrize("attention", ["eager", "default"])
@pytest.mark.parametrize("batch_size", [1, 8])
@pytest.mark.parametrize("name", sorted(REFERENCE["cases"]))
def test_native_scores_match_flagembedding(name, batch_size, attention):
    case = REFERENCE["cases"][name]
    got = scorer(case, attention, batch_size).score_per_layer(PAIRS)
    expected = case[f"{attention}_batch{batch_size}"]
    assert len(got) == len(expected) == len(case["cutoff_layers"])
    for layer_got, layer_expected in zip(got, expected):
        assert layer_got == pytest.approx(layer_expected, abs=1e-3)


def test_score_is_the_deepest_cutoff_layer_and_tokens_are_the_references():
    case = REFERENCE["cases"]["two_cutoffs_truncated"]
    s = scorer(case)
    assert s.score(PAIRS) == pytest.approx(case["eager_batch8"][-1], abs=1e-3)
    tokenizer, net = load_lightweight(CHECKPOINT, "float32", "cpu", 5, True)
    assert len(net.decoder.layers) == 5  # layers past the deepest cutoff are neither built nor loaded
    assert (
        tokenizer([f"A: {q}" for q, _ in PAIRS], add_special_tokens=False)["input_ids"]
        == REFERENCE["query_ids"]
    )
    assert (
        tokenizer([f"B: {p}" for _, p in PAIRS], add_special_tokens=False)["input_ids"]
        == REFERENCE["passage_ids"]
    )


def test_truncations_are_counted():
    case = REFERENCE["cases"]["truncated_compress2"]  # query budget 16, passage budget 40
    s = scorer(case)
    s.score(PAIRS)
    long_queries = sum(len(ids) > 16 for ids in REFERENCE["query_ids"])
    long_passages = sum(len(ids) > 40 for ids in REFERENCE["passage_ids"])
    assert s.truncated_queries == long_queries > 0
    # a passage is cut by its own budget, or to fit the pair's budget after a long query
    assert s.truncated_passages >= long_passages > 0
    s.score(PAIRS[:1])
    assert s.truncated_queries == long_queries + (len(REFERENCE["query_ids"][0]) > 16)
    untouched = scorer(REFERENCE["cases"]["plain"])
    untouched.score(PAIRS)
    assert (untouched.truncated_queries, untouched.truncated_passages) == (0, 0)


def test_a_query_longer_than_its_budget_is_cut_not_fatal():
    query = " ".join(["a dog running on the grass near the river"] * 120)  # > 768 tokens
    case = dict(REFERENCE["cases"]["compress2"])
    s = scorer(case, pair_max_length=1024)
    (score,) = s.score([(query, "A brown dog runs across a green lawn.")])
    assert math.isfinite(score) and s.truncated_queries == 1 and s.truncated_passages == 0
    tokenizer, _ = load_lightweight(CHECKPOINT, "float32", "cpu", 4, True)
    (encoded,) = s.encode(tokenizer, [(query, "x " * 2000)])
    ids, query_part, prompt_part, query_cut, passage_cut = encoded
    assert query_part == 1 + 768 + 1 and len(ids) - prompt_part == 1024 and query_cut and passage_cut


def test_bad_settings_are_one_line_errors():
    with pytest.raises(VisaError, match="compress_ratio"):
        BGELightweightReranker(compress_ratio=3)
    with pytest.raises(VisaError, match="query_max_length"):
        BGELightweightReranker(query_max_length=2048, max_length=1024)
    with pytest.raises(VisaError) as e:
        BGELightweightReranker(model=CHECKPOINT, cutoff_layers=[1], device="cpu", dtype="float32").score(
            PAIRS[:1]
        )
    assert "cutoff_layers [1]" in str(e.value) and "\n" not in str(e.value)


def test_identity_names_what_changes_scores():
    base = BGELightweightReranker(cutoff_layers=[28], compress_ratio=2, compress_layers=[24, 40]).identity()
    assert (
        base
        == BGELightweightReranker(cutoff_layers=[28], compress_ratio=2, compress_layers=[24, 40]).identity()
    )
    for change in (
        {"attention_softcapping": False},
        {"pair_max_length": 1024},
        {"query_max_length": 512},
        {"compress_ratio": 1},
    ):
        kwargs = {"cutoff_layers": [28], "compress_ratio": 2, "compress_layers": [24, 40], **change}
        assert BGELightweightReranker(**kwargs).identity() != base


def test_the_experiments_scorer_config_matches_the_class():
    from hydra import compose, initialize_config_dir

    from visa.config import check_part, register

    register()
    conf = Path(__file__).resolve().parents[1] / "conf"
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["experiment=coco_siglip"])
    check_part(cfg.scorer, "scorer")
    assert cfg.scorer.cutoff_layers == [28] and cfg.scorer.query_max_length == 768
