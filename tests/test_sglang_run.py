"""The sglang backend inside real stages: results reach the cache as they arrive, a killed or interrupted
stage resumes from the cache, and `python -m visa.run` works with generators attached to a server."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import SMALL_DEMO, read_run, run_cli
from helpers.fake_openai_server import FakeOpenAIServer

from visa.cache import SQLiteStore, StageRunner, make_key
from visa.generation.openai_api import OpenAIChatGenerator
from visa.method.prompts import Prompt

N = 300
CONCURRENCY = 4

STAGE = """
import sys
from visa.cache import SQLiteStore, StageRunner, make_key
from visa.generation.openai_api import OpenAIChatGenerator
from visa.method.prompts import Prompt

url, cache_dir, n, concurrency = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
gen = OpenAIChatGenerator(model="fake-model", url=url, max_concurrency=concurrency)
prompts = [Prompt(f"prompt\\nitem {i}") for i in range(n)]
keys = [make_key("answer", gen.identity(), p.as_key()) for p in prompts]
out = StageRunner(SQLiteStore(cache_dir), progress=False).run("answer", keys, prompts, gen.stream)
assert out == [f"Reply to: item {i}" for i in range(n)]
"""


def cached_rows(cache_dir: Path) -> int:
    path = cache_dir / "visa-cache.sqlite"
    if not path.exists():
        return 0
    with sqlite3.connect(path, timeout=30) as db:
        try:
            return db.execute("SELECT COUNT(*) FROM results").fetchone()[0]
        except sqlite3.OperationalError:  # the table is not created yet
            return 0


def run_stage_here(url: str, cache_dir: Path) -> list[str]:
    gen = OpenAIChatGenerator(model="fake-model", url=url, max_concurrency=CONCURRENCY)
    prompts = [Prompt(f"prompt\nitem {i}") for i in range(N)]
    keys = [make_key("answer", gen.identity(), p.as_key()) for p in prompts]
    store = SQLiteStore(cache_dir)
    try:
        return StageRunner(store, progress=False).run("answer", keys, prompts, gen.stream)
    finally:
        store.close()


def start_and_stop_midway(url: str, cache_dir: Path, sig: int) -> subprocess.Popen:
    """Run the stage in a child process and send it `sig` once part of the results are in the cache."""
    child = subprocess.Popen(
        [sys.executable, "-c", STAGE, url, str(cache_dir), str(N), str(CONCURRENCY)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while cached_rows(cache_dir) < 70 and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert child.poll() is None, child.communicate()[1]
    child.send_signal(sig)
    child.communicate(timeout=60)
    return child


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_a_stopped_stage_resumes_from_the_cache(tmp_path, sig):
    with FakeOpenAIServer(latency=0.02) as server:
        child = start_and_stop_midway(server.url, tmp_path, sig)
        assert child.returncode != 0
        kept, answered = cached_rows(tmp_path), server.completed
        assert 0 < kept < N
        if sig == signal.SIGINT:
            # Ctrl-C flushes every result received; only replies still on the wire (or not yet taken from
            # the client's queue) are lost.
            assert answered - kept <= 2 * CONCURRENCY
        sent_before = len(server.requests)
        out = run_stage_here(server.url, tmp_path)
        assert out == [f"Reply to: item {i}" for i in range(N)]
        assert len(server.requests) - sent_before == N - kept  # only what the cache lacked was asked again


@pytest.mark.slow
def test_visa_run_with_generators_on_a_server(tmp_path):
    """The demo with its question LLM and its (description-reading) answerer behind a server."""
    with FakeOpenAIServer(faults=["503", None, "malformed"]) as server:
        overrides = [
            *SMALL_DEMO,
            *(
                f"{g}{k}={v}"
                for g in ("question_llm", "answer_mllm")
                for k, v in (("", "server"), (".url", server.url), (".model", "fake-model"))
            ),
            "answer_mllm.uses_context=true",  # the demo's description-reading answerer
            "question_llm.max_concurrency=2",
            "questions.retries=0",
        ]
        first = run_cli(*overrides, cache=tmp_path / "cache", run_dir=tmp_path / "run1")
        assert first.returncode == 0, first.stderr[-2000:]
        metrics, results = read_run(tmp_path / "run1")
        asked = len(server.requests)
        n_queries = metrics["data/queries"]
        assert metrics["calls/ask/computed"] == n_queries
        assert metrics["generation/question_llm/retried"] == 2  # the 503 and the malformed reply
        assert metrics["generation/question_llm/malformed"] == 1  # asked again: not an answer, not cached
        assert sum(not r["questions_parsed"] for r in results) == 0
        answers = [a for r in results for c in r.get("candidates", []) for a in c["answers"]]
        assert len(answers) > 0
        assert all(
            a == "Reply to: Question: Is detail 1 of the query visible in the picture?" for a in answers
        )
        # One request per distinct (item, prompt) and two retried requests.
        assert asked == n_queries + 2 + metrics["calls/answer/computed"]

        second = run_cli(*overrides, cache=tmp_path / "cache", run_dir=tmp_path / "run2")
        assert second.returncode == 0, second.stderr[-2000:]
        metrics2, _ = read_run(tmp_path / "run2")
        assert len(server.requests) == asked  # all from the cache
        assert metrics2["calls/ask/cached"] == n_queries and metrics2["calls/answer/computed"] == 0
