"""The whole pipeline through the real CLI, on a slice of the demo with its real (packaged) weights."""

import pytest
from conftest import SMALL_DEMO, read_run, run_cli

from visa.method.stages import MODEL_STAGES


def test_demo_run_then_rerun_computes_nothing(session_cache, tmp_path):
    first = run_cli(*SMALL_DEMO, cache=session_cache, run_dir=tmp_path / "first")
    assert first.returncode == 0, first.stderr[-3000:]
    metrics, results = read_run(tmp_path / "first")

    for prefix in ("base", "rerank"):
        for k in (1, 5, 10):
            assert 0.0 <= metrics[f"{prefix}/R@{k}"] <= 100.0
    for stage in MODEL_STAGES:
        assert f"calls/{stage}/computed" in metrics and f"calls/{stage}/cached" in metrics
    for stage in ("encode_text", "encode_visual", "retrieve", "describe", "ask", "score", "fuse", "evaluate"):
        assert metrics[f"time/{stage}"] >= 0.0
    assert "R@1" in first.stdout and "+ VISA" in first.stdout

    # 3 images with 2-3 captions each; every caption is a query with its own image as ground truth.
    assert metrics["data/gallery"] == 3 and metrics["data/queries"] == len(results) >= 6
    parsed = [r for r in results if r["questions_parsed"]]
    assert metrics["questions/fallback"] == len(results) - len(parsed)
    # the questions' own report: constrained by default, the fallback share, each query's raw reply
    assert metrics["questions/constrained"] is True
    assert metrics["questions/fallback_share"] == round(100 * metrics["questions/fallback"] / len(results), 2)
    assert all(r["question_reply"].startswith("key phrases:\n") for r in results)  # the layout, always
    assert "queries fell back to generic questions" in first.stdout  # the summary line (logged)
    for r in results:
        assert len(r["base_top"]) == len(r["rerank_top"]) == len(r["candidates"]) == 2
        # only the order changes
        assert {c["id"] for c in r["base_top"]} == {c["id"] for c in r["rerank_top"]}
        assert len(r["questions"]) == 1
        for cand in r["candidates"]:
            # Answers exist only for parsed questions (fallback answers are left out of the passage).
            assert len(cand["answers"]) == (1 if r["questions_parsed"] else 0)
            assert cand["passage"]
    # one call per (candidate, question); identical prompts about the same item are asked once
    answer_calls = metrics["calls/answer/computed"] + metrics["calls/answer/cached"]
    assert (answer_calls > 0) == bool(parsed) and answer_calls <= 2 * len(parsed)
    assert metrics["calls/score/computed"] + metrics["calls/score/cached"] == 2 * len(results)

    second = run_cli(*SMALL_DEMO, cache=session_cache, run_dir=tmp_path / "second")
    assert second.returncode == 0, second.stderr[-3000:]
    metrics2, results2 = read_run(tmp_path / "second")
    assert all(metrics2[f"calls/{s}/computed"] == 0 for s in MODEL_STAGES)
    assert metrics2["calls/encode_visual/cached"] == 3
    assert {k: v for k, v in metrics2.items() if "/R@" in k} == {
        k: v for k, v in metrics.items() if "/R@" in k
    }
    assert [r["rerank_top"] for r in results2] == [r["rerank_top"] for r in results]
    # cost describes the method, not the cache state: the warm rerun reports what the results cost to compute
    costs = {k: v for k, v in metrics.items() if k.startswith("cost/")}
    for stage in MODEL_STAGES:
        for field in ("calls", "tokens_in", "tokens_out", "media", "seconds", "unknown"):
            assert f"cost/{stage}/{field}" in costs
    assert {f"cost/per_query/{f}" for f in ("calls", "tokens", "seconds")} <= costs.keys()
    assert metrics["cost/ask/tokens_in"] > 0 and metrics["cost/ask/tokens_out"] > 0  # the demo's LLM
    assert metrics["cost/encode_visual/media"] == 3 and metrics["cost/encode_visual/calls"] == 3
    for key, value in costs.items():
        assert metrics2[key] == pytest.approx(value, abs=1e-3), key


def test_sweep_over_questions_num_reuses_questions_and_answers(session_cache, tmp_path):
    """questions.num=2 after num=1: the questions (generated at questions.max) are all cached."""
    base = [o for o in SMALL_DEMO if not o.startswith("questions.num")]
    one = run_cli(*base, "questions.num=1", cache=session_cache, run_dir=tmp_path / "one")
    assert one.returncode == 0, one.stderr[-3000:]
    two = run_cli(*base, "questions.num=2", cache=session_cache, run_dir=tmp_path / "two")
    assert two.returncode == 0, two.stderr[-3000:]
    m1, _ = read_run(tmp_path / "one")
    m2, results = read_run(tmp_path / "two")
    assert m2["calls/ask/computed"] == 0 and m2["calls/encode_text/computed"] == 0
    parsed = sum(r["questions_parsed"] for r in results)
    # the first question's answers come from the num=1 run; only the second question's are new
    assert m2["calls/answer/cached"] == m1["calls/answer/computed"] + m1["calls/answer/cached"]
    assert m2["calls/answer/computed"] + m2["calls/answer/cached"] <= 2 * 2 * parsed
