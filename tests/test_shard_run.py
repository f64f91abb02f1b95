"""A sharded run of the demo as one Hydra multirun through the real submitit plugin's local executor:
2 shards into one cache, then a run without shard settings computes nothing and gives the same metrics
and rankings as one unsharded process."""

from __future__ import annotations

import json

import pytest
from conftest import SMALL_DEMO, read_run, requires, run_cli

requires("hydra_plugins.hydra_submitit_launcher", "cluster")

MODEL_STAGES = ("encode_text", "encode_visual", "describe", "ask", "answer", "score")


def _ranking(results: list[dict]) -> list:
    return [(r["query"], [c["id"] for c in r["rerank_top"]], r["questions"]) for r in results]


# At the default batch sizes: a reply does not depend on its batch-mates, so the shard split changes none.
DEMO = SMALL_DEMO


@pytest.mark.slow
def test_two_shards_then_a_final_run_equal_one_process(tmp_path):
    reference = run_cli(*DEMO, cache=tmp_path / "reference-cache", run_dir=tmp_path / "reference")
    assert reference.returncode == 0, reference.stderr[-2000:]
    ref_metrics, ref_results = read_run(tmp_path / "reference")

    cache, sweep = tmp_path / "shared-cache", tmp_path / "multirun"
    shards = run_cli(
        "-m", "hydra/launcher=local", *DEMO, "shard.count=2", "shard.index=range(2)",
        f"hydra.sweep.dir={sweep}", cache=cache, run_dir=tmp_path / "unused",
    )  # fmt: skip
    assert shards.returncode == 0, shards.stderr[-3000:]
    # the console says what each job did and where its output is; no folder literally named %j
    assert f"sweep: 2 job(s) in {sweep}" in shards.stdout and "model calls computed" in shards.stdout
    assert not (sweep / ".submitit" / "%j").exists()
    shard_metrics = [json.loads((sweep / str(i) / "metrics.json").read_text()) for i in range(2)]
    assert [m["shard/index"] for m in shard_metrics] == [0, 1]
    for stage in MODEL_STAGES:
        total = ref_metrics[f"calls/{stage}/computed"] + ref_metrics[f"calls/{stage}/cached"]
        done = [m[f"calls/{stage}/computed"] for m in shard_metrics]
        assert sum(done) == total, (stage, done, total)  # nothing computed twice, nothing left out
        if stage in ("encode_visual", "ask", "answer", "score"):
            assert all(d > 0 for d in done), (stage, done)  # both shards did a share

    final = run_cli(*DEMO, cache=cache, run_dir=tmp_path / "final")
    assert final.returncode == 0, final.stderr[-2000:]
    metrics, results = read_run(tmp_path / "final")
    assert all(metrics[f"calls/{stage}/computed"] == 0 for stage in MODEL_STAGES)
    for key, value in ref_metrics.items():
        if key.startswith(("base/", "rerank/")):
            assert metrics[key] == value, key
    assert _ranking(results) == _ranking(ref_results)
    assert metrics["results/digest"] == ref_metrics["results/digest"]


def test_bad_shard_index_is_one_line(tmp_path, session_cache):
    bad = run_cli(*SMALL_DEMO, "shard.count=2", "shard.index=2", cache=session_cache, run_dir=tmp_path / "r")
    assert bad.returncode == 1
    assert bad.stderr.strip().splitlines() == [
        "error: shard.index=2 shard.count=2: the index must be in 0..count-1 "
        "(e.g. shard.count=4 'shard.index=range(4)')"
    ]
