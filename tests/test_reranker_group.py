"""The `reranker` group: every option is one class and one yaml, builds from the parts it names (and only
those), and reports the same metric family; on the demo's packaged models each orders the top-K as its
protocol says."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from conftest import REPO, SMALL_DEMO
from helpers.runs import run_in_one_process
from hydra import compose, initialize_config_dir

from visa.assembly import Assembly
from visa.config import register
from visa.method.fusion import MinMaxFusion, rerank
from visa.method.rerankers.none import NoReranker

OPTIONS = sorted(p.stem for p in (REPO / "conf" / "reranker").glob("*.yaml"))


def compose_cfg(*overrides: str):
    register()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose("config", overrides=list(overrides))


def test_the_shipped_rerankers():
    assert OPTIONS == ["cross_encoder", "none", "pointwise", "visa", "visa_description"]
    assert compose_cfg().reranker._target_ == "visa.method.rerankers.visa.VisaReranker"  # the default


@pytest.mark.parametrize(
    "option, uses",
    [
        ("visa", ("question_llm", "answer_mllm", "describer", "scorer")),
        ("visa_description", ("describer", "scorer")),
        ("pointwise", ("judge", "describer")),
        ("cross_encoder", ("cross_encoder",)),
        ("none", ()),
    ],
)
def test_a_reranker_is_built_from_the_groups_it_uses_only(option, uses):
    """The groups a re-ranker does not use need not be configured: removed from the config, the run's
    checks still pass and the re-ranker builds (no weights load until a stage runs)."""
    optional = ("question_llm", "answer_mllm", "describer", "scorer", "judge", "cross_encoder")
    unused = [g for g in optional if g not in uses]
    assembly = Assembly(compose_cfg(f"reranker={option}", *(f"~{g}" for g in unused)))
    assert assembly.uses == uses
    reranker = assembly.reranker()
    for group in uses:
        assert getattr(reranker, group) is not None


def test_none_keeps_the_backbones_order_whatever_the_fusion_weight():
    base = torch.tensor([[0.9, 0.7, 0.7, 0.1], [0.5, 0.4, 0.3, 0.2]])
    candidates = torch.tensor([[3, 1, 2, 0], [0, 1, 2, 3]])
    scored = NoReranker().score(None, [0, 1], candidates, base)  # type: ignore[arg-type]
    for alpha in (0.0, 0.5, 1.0):
        fused = MinMaxFusion(alpha=alpha)(base, scored.scores)
        assert torch.equal(rerank(candidates, fused), candidates)


def _read(run_dir: Path) -> tuple[dict, list[dict]]:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    records = [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]
    return metrics, records


@pytest.mark.slow
def test_every_reranker_on_the_demo(tmp_path):
    """The demo's packaged models, one cache: each option writes the rerank/ family with `reranker` naming
    it; none keeps the backbone's order; visa_description ranks as visa at questions.num=0 from the same
    cached scores (nothing computed again); pointwise asks the judge once per (query, candidate) and keeps
    each candidate's P(Yes) in [0, 1], ordering the top-K by it at alpha 1."""
    cache = tmp_path / "cache"
    runs = {
        "visa0": ["reranker=visa", "questions.num=0"],
        "visa_description": ["reranker=visa_description"],
        "none": ["reranker=none"],
        "pointwise": ["reranker=pointwise", "fusion.alpha=1"],
    }
    argvs = [
        [*SMALL_DEMO, *args, f"cache_dir={cache}", f"hydra.run.dir={tmp_path / name}"]
        for name, args in runs.items()
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    outputs, _ = run_in_one_process(argvs, REPO, env, timeout=1200)
    for name, out in zip(runs, outputs):
        assert out["code"] in (0, None), (name, out["stderr"][-3000:])
    read = {name: _read(tmp_path / name) for name in runs}
    for name, (metrics, _) in read.items():
        assert {"rerank/R@1", "rerank/R@5", "base/R@1", "reranker", "normalizer"} <= set(metrics), name
        assert not any(k.startswith("visa/") for k in metrics), name
    assert [read[n][0]["reranker"] for n in runs] == ["visa", "visa_description", "none", "pointwise"]

    none_metrics, none_records = read["none"]
    assert all(none_metrics[f"rerank/R@{k}"] == none_metrics[f"base/R@{k}"] for k in (1, 5, 10))
    assert all([c["id"] for c in r["rerank_top"]] == [c["id"] for c in r["base_top"]] for r in none_records)
    assert (
        none_metrics["calls/describe/computed"] == none_metrics["calls/describe/cached"] == 0
    )  # loads nothing

    desc_metrics, _ = read["visa_description"]
    assert desc_metrics["results/digest"] == read["visa0"][0]["results/digest"]
    assert desc_metrics["calls/score/computed"] == 0 and desc_metrics["calls/score/cached"] > 0
    assert desc_metrics["calls/ask/cached"] == desc_metrics["calls/ask/computed"] == 0

    point_metrics, point_records = read["pointwise"]
    k = len(point_records[0]["candidates"])
    assert point_metrics["calls/judge/computed"] == len(point_records) * k
    assert point_metrics["calls/describe/computed"] == 0  # the judge reads the descriptions VISA wrote
    for record in point_records:
        p_yes = {c["id"]: c["p_yes"] for c in record["candidates"]}
        assert all(0.0 <= p <= 1.0 for p in p_yes.values())
        ranked = [p_yes[c["id"]] for c in record["rerank_top"][:k]]
        assert ranked == sorted(ranked, reverse=True)  # alpha 1: the judge's order
    assert "+ pointwise P(Yes)" in outputs[3]["stdout"]
