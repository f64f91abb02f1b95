"""Shared fixtures: runs of the real CLI on a small slice of the demo, with a cache private to the session."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# A small demo: 3 images (7 queries), top-2 re-ranking, 2 generated questions of which 1 is used.
SMALL_DEMO = ["dataset.limit=3", "retrieval.top_k=2", "questions.max=2", "questions.num=1", "progress=false"]


@pytest.fixture(scope="session")
def session_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("visa-cache")


def run_cli(
    *overrides: str, cache: Path, run_dir: Path, module: str = "visa.run"
) -> subprocess.CompletedProcess:
    """`python -m visa.run overrides...` in a fresh process, as a user would type it."""
    env = {**os.environ, "VISA_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    cmd = [sys.executable, "-m", module, *overrides, f"hydra.run.dir={run_dir}"]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)


def read_run(run_dir: Path) -> tuple[dict, list[dict]]:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    results = [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]
    return metrics, results
