"""A real Hydra multirun of the demo (small settings) with logger=wandb offline: the stage cache makes the
sweep compute each model call once, every job is one W&B run of the sweep's group, and visa.compare reads
the sweep folder. Also the joblib launcher's parallel jobs on the shared cache."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, SMALL_DEMO, requires
from helpers.wandb_log import read_transaction_log

requires("wandb", "tracking")

# The conftest's small demo, with questions.num swept: 0 (descriptions only) then 1; fusion.alpha 0 and 1.
SWEEP = [o for o in SMALL_DEMO if not o.startswith("questions.num=")]
SWEPT = ["questions.num=0,1", "fusion.alpha=0,1"]
STAGES = ("encode_text", "encode_visual", "describe", "ask", "answer", "score")


def run_multirun(base: Path, cache: Path, *overrides: str) -> subprocess.CompletedProcess:
    """`python -m visa.run -m ... logger=wandb` with W&B offline and all its folders under `base`."""
    env = {
        **os.environ,
        "VISA_CACHE": str(cache),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "WANDB_MODE": "offline",  # never upload from a test, even on a machine that has a key
        "WANDB_DIR": str(base / "wandb-runs"),
        "WANDB_DATA_DIR": str(base / "wandb-home" / "data"),
        "WANDB_CACHE_DIR": str(base / "wandb-home" / "cache"),
        "WANDB_CONFIG_DIR": str(base / "wandb-home" / "config"),
        "WANDB_ARTIFACT_DIR": str(base / "wandb-home" / "artifacts"),
    }
    env.pop("WANDB_API_KEY", None)
    (base / "wandb-runs").mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "visa.run",
        "-m",
        *overrides,
        "logger=wandb",
        f"hydra.sweep.dir={base / 'sweep'}",
    ]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)


def demo_sweep(tmp_path_factory, cache: Path) -> Path:
    """The 2 x 2 demo multirun, run once per test session (the notebook test reads it too)."""
    base = tmp_path_factory.getbasetemp() / "demo-multirun"
    if (
        not (base / "sweep" / "multirun.yaml").exists()
        or len(list((base / "sweep").glob("*/metrics.json"))) < 4
    ):
        proc = run_multirun(base, cache, *SWEEP, *SWEPT)
        assert proc.returncode == 0, proc.stderr[-4000:]
    return base


@pytest.fixture(scope="module")
def sweep_base(tmp_path_factory, session_cache) -> Path:
    return demo_sweep(tmp_path_factory, session_cache)


def jobs(sweep: Path) -> list[tuple[dict, dict]]:
    """(overrides as {key: value}, metrics) per job, in job order."""
    out = []
    for n in range(len(list(sweep.glob("*/metrics.json")))):
        lines = (sweep / str(n) / ".hydra" / "overrides.yaml").read_text().splitlines()
        overrides = dict(line.removeprefix("- ").split("=", 1) for line in lines if "=" in line)
        out.append((overrides, json.loads((sweep / str(n) / "metrics.json").read_text())))
    return out


def wandb_runs(base: Path) -> dict[str, dict]:
    """run_dir -> {group, config, history, artifacts, exit_code} from each offline run's transaction log."""
    runs = {}
    for wandb_file in sorted((base / "wandb-runs" / "wandb").glob("offline-run-*/*.wandb")):
        info: dict = {"history": {}, "artifacts": {}}
        for record in read_transaction_log(wandb_file):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                info["group"] = record.run.run_group
                info["config"] = {u.key: json.loads(u.value_json) for u in record.run.config.update}
            elif kind == "history":
                for item in record.history.item:
                    info["history"]["/".join(item.nested_key) or item.key] = json.loads(item.value_json)
            elif kind == "artifact":
                info["artifacts"][record.artifact.type] = [e.path for e in record.artifact.manifest.contents]
            elif kind == "exit":
                info["exit_code"] = record.exit.exit_code
        runs[info["config"]["run_dir"]] = info
    return runs


def test_sweep_computes_each_model_call_once(sweep_base):
    runs = jobs(sweep_base / "sweep")
    settings = [(o["questions.num"], o["fusion.alpha"]) for o, _ in runs]
    assert settings == [("0", "0"), ("0", "1"), ("1", "0"), ("1", "1")]
    computed = [{s: m[f"calls/{s}/computed"] for s in STAGES} for _, m in runs]
    needed = [{s: m[f"calls/{s}/computed"] + m[f"calls/{s}/cached"] for s in STAGES} for _, m in runs]
    # A job that differs from the one before only in the fusion weight computes nothing.
    assert computed[1] == dict.fromkeys(STAGES, 0) and computed[3] == dict.fromkeys(STAGES, 0)
    # Neither retrieval nor descriptions depend on the number of questions; questions.num=0 asks nothing,
    # and the job with questions.num=1 asks each query once (questions generated once, at questions.max).
    for stage in ("encode_text", "encode_visual", "describe"):
        assert computed[2][stage] == 0
        assert needed[2][stage] == needed[0][stage] > 0
    assert needed[0]["ask"] == 0 and needed[2]["ask"] > 0
    # questions.num=0 needs no answers; =1 needs one per candidate of each query whose questions parsed.
    # (identical prompts, e.g. the same question about the same item for two queries, are one call)
    queries, top_k = runs[0][1]["data/queries"], 2
    assert needed[0]["answer"] == 0
    assert 0 < needed[2]["answer"] <= (queries - runs[2][1]["questions/fallback"]) * top_k
    assert needed[0]["score"] == needed[2]["score"] == queries * top_k
    # alpha = 0 keeps the backbone's order, so its recall is the backbone's
    for _, m in (runs[0], runs[2]):
        assert [m[f"rerank/R@{k}"] for k in (1, 5, 10)] == [m[f"base/R@{k}"] for k in (1, 5, 10)]


def test_each_job_is_a_wandb_run_of_the_sweep_group(sweep_base):
    sweep = sweep_base / "sweep"
    runs = wandb_runs(sweep_base)
    assert sorted(runs) == [str(sweep / str(n)) for n in range(4)]
    for n, (overrides, metrics) in enumerate(jobs(sweep)):
        run = runs[str(sweep / str(n))]
        assert run["group"] == str(sweep)
        # The swept parameters are config columns, as numbers, beside the resolved config.
        assert run["config"]["sweep"]["questions.num"] == int(overrides["questions.num"])
        assert run["config"]["sweep"]["fusion.alpha"] == int(overrides["fusion.alpha"])
        assert run["config"]["fusion"]["alpha"] == float(overrides["fusion.alpha"])
        assert run["config"]["questions"]["num"] == int(overrides["questions.num"])
        for key in ("base/R@1", "rerank/R@5", "calls/answer/computed", "calls/ask/cached", "time/answer"):
            assert run["history"][key] == metrics[key]
        assert run["history"]["gain/R@1"] == pytest.approx(metrics["rerank/R@1"] - metrics["base/R@1"])
        assert set(run["artifacts"]["run-outputs"]) == {"metrics.json", "results.jsonl"}
        assert "samples.table.json" in run["artifacts"]["run_table"]
        assert any(p.endswith(".png") for p in run["artifacts"]["run_table"])  # thumbnails
        assert run["exit_code"] == 0


def test_compare_reads_the_sweep(sweep_base, tmp_path):
    sweep = sweep_base / "sweep"
    out = tmp_path / "compare"
    proc = subprocess.run(
        [sys.executable, "-m", "visa.compare", str(sweep), "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    with open(out / "runs.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["run"] for r in rows] == ["0", "1", "2", "3"]
    assert set(list(rows[0])[2:4]) == {"questions.num", "fusion.alpha"}  # the swept parameters first
    for row, (_, metrics) in zip(rows, jobs(sweep), strict=True):
        assert float(row["rerank/R@1"]) == pytest.approx(metrics["rerank/R@1"])
        assert float(row["time/answer"]) == pytest.approx(metrics["time/answer"])
        assert int(row["calls/computed"]) == sum(metrics[f"calls/{s}/computed"] for s in STAGES)
        assert row["dataset"] == "demo" and row["retrieval.top_k"] == "2"
    assert {p.name for p in out.glob("*.png")} == {
        "pareto.png",
        "recall_vs_alpha.png",
        "gain.png",
        "stage_time.png",
    }
    assert (out / "index.html").read_text().count("<tr>") == 5


def test_joblib_launcher_jobs_share_the_cache(sweep_base, session_cache, tmp_path):
    """Two jobs in parallel processes: both read the cache the first sweep filled, and agree with it."""
    requires("hydra_plugins.hydra_joblib_launcher", "tracking")
    settings = [
        *SWEEP,
        "questions.num=1",
        "fusion.alpha=0,1",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
    ]
    proc = run_multirun(tmp_path, session_cache, *settings)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "Joblib" in proc.stdout + proc.stderr  # Hydra's joblib launcher ran the jobs
    parallel = jobs(tmp_path / "sweep")
    sequential = jobs(sweep_base / "sweep")[2:]  # the same settings, run one after the other
    assert len(parallel) == 2
    for (_, p), (_, s) in zip(parallel, sequential, strict=True):
        assert all(p[f"calls/{stage}/computed"] == 0 for stage in STAGES)
        assert {k: v for k, v in p.items() if "/R@" in k} == {k: v for k, v in s.items() if "/R@" in k}
    runs = wandb_runs(tmp_path)
    assert {r["group"] for r in runs.values()} == {str(tmp_path / "sweep")} and len(runs) == 2
