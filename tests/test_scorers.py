"""Text re-rankers: transformers cross-encoders on a tiny model; the bge light-weight re-ranker's checks."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import tiny_models  # noqa: E402

from visa.errors import VisaError  # noqa: E402
from visa.prompts import build_passage  # noqa: E402
from visa.scorers.bge_lightweight import BGELightweightReranker  # noqa: E402
from visa.scorers.hf_cross_encoder import HFCrossEncoder  # noqa: E402

PAIRS = [
    ("a dog on the grass", "a dog is running on the grass"),
    ("a red car", "two people at the beach"),
    ("a cat", "the cat is sitting " * 200),
]


def test_cross_encoder_batch_invariant_and_order_preserving(tmp_path):
    model = str(tiny_models.cross_encoder_dir(tmp_path / "ce"))
    scorer = HFCrossEncoder(model=model, device="cpu", max_length=64)
    scores = scorer.score(PAIRS)
    assert len(scores) == 3 and len(set(scores)) == 3
    assert scores == pytest.approx([scorer.score([p])[0] for p in PAIRS], abs=1e-5)
    assert scorer.score(PAIRS[::-1]) == pytest.approx(scores[::-1], abs=1e-5)
    assert scorer.identity()["model"] == "ce"


def test_cross_encoder_identity_names_what_changes_scores(tmp_path):
    a = HFCrossEncoder(model="BAAI/bge-reranker-v2-m3", max_length=1024).identity()
    assert a == HFCrossEncoder(model="BAAI/bge-reranker-v2-m3", max_length=1024, batch_size=4).identity()
    assert a != HFCrossEncoder(model="BAAI/bge-reranker-v2-m3", max_length=512).identity()


def test_bge_lightweight_missing_model_is_one_line(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # as on a cluster node: no waiting on the network
    with pytest.raises(VisaError) as e:
        BGELightweightReranker(model="BAAI/no-such-reranker", device="cpu", dtype="float32").score(PAIRS[:1])
    assert "\n" not in str(e.value) and "hf download" in str(e.value)


def test_passage_is_answers_without_uncertain_then_description():
    answers = ["A dog runs.", "Uncertain", "It is brown. Uncertain."]
    passage = build_passage(answers, "A park at noon.", True, separator=" ")
    assert passage == "A dog runs. It is brown. A park at noon."
    assert build_passage(["A dog runs."], "A park.", False) == "A park."
