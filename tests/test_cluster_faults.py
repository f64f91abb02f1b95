"""The faults a cluster brings, each through the real command line (`python -m visa.run` on the 3-photo demo
slice, its question LLM and answerer behind a local fake server, docs/bad_inputs.md): a scheduler's stop
signal, a second Ctrl-C during clean-up, a full disk under the cache or the run folder, a server that answers
malformed replies, empty replies or stops answering, many requests failing at once. Each ends with one line
and loses nothing that was saved; docs/bad_inputs.md says what the user sees."""

from __future__ import annotations

import os
import re
import resource
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import pytest
from conftest import REPO, SMALL_DEMO, read_run
from helpers.fake_openai_server import FakeOpenAIServer
from helpers.runs import run_in_one_process

from visa.cache.shared import scan


def last_line(body: dict) -> str:
    content = body["messages"][-1]["content"]
    text = content if isinstance(content, str) else content[-1]["text"]
    return text.strip().splitlines()[-1]


def is_answer(body: dict) -> bool:
    return last_line(body).startswith("Question:")


def server_demo(url: str, answer_model: str = "fake-model") -> list[str]:
    """The small demo with its question LLM and its (description-reading) answerer behind `url`."""
    return [
        *SMALL_DEMO,
        "question_llm=server",
        f"question_llm.url={url}",
        "question_llm.model=fake-model",
        "answer_mllm=server",
        f"answer_mllm.url={url}",
        f"answer_mllm.model={answer_model}",
        "answer_mllm.uses_context=true",
        "questions.retries=0",
    ]


def env_for(cache: Path) -> dict[str, str]:
    return {**os.environ, "VISA_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def answers_saved(cache: Path, model: str | None = None) -> int:
    """Answer results in the cache (either layout), of `model` when given."""
    path = cache / "visa-cache.sqlite"
    if path.exists():
        # closed at once: an open reader would keep the run's own close from removing the WAL file (and
        # Python's sqlite3 connections are only freed by the garbage collector when left to it)
        with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)) as db:
            try:
                query, args = "SELECT COUNT(*) FROM results WHERE stage='answer'", ()
                if model:
                    query, args = query + " AND model=?", (model,)
                return db.execute(query, args).fetchone()[0]
            except sqlite3.OperationalError:  # the table is not created yet
                return 0
    if (cache / "writers").is_dir():
        table, _ = scan(cache)
        return sum(s.records for (stage, m), s in table.items() if stage == "answer" and model in (None, m))
    return 0


def stderr_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip()]


def start(overrides: list[str], cache: Path, run_dir: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "visa.run", *overrides, f"hydra.run.dir={run_dir}"]
    return subprocess.Popen(
        cmd, cwd=REPO, env=env_for(cache), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def wait_for_answers(proc: subprocess.Popen, cache: Path, n: int = 1, limit: float = 600) -> None:
    deadline = time.monotonic() + limit
    while answers_saved(cache) < n and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert proc.poll() is None and answers_saved(cache) >= n, "the run ended before the answer stage"


def resume(overrides: list[str], cache: Path, run_dir: Path) -> dict:
    done = subprocess.run(
        [sys.executable, "-m", "visa.run", *overrides, f"hydra.run.dir={run_dir}"],
        cwd=REPO,
        env=env_for(cache),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return read_run(run_dir)[0]


SAVED = (
    r"\d+ new result\(s\) \(encode_text \d+, encode_visual \d+, describe \d+, ask \d+, answer (\d+)\) saved "
    r"in the cache .*; run the same command again to resume \(nothing saved is computed again\)"
)


@pytest.mark.slow
@pytest.mark.parametrize(
    "sig, layout", [(signal.SIGTERM, "sqlite"), (signal.SIGUSR2, "shared")], ids=["SIGTERM", "SIGUSR2"]
)
def test_a_stop_signal_prints_what_was_saved_and_the_run_resumes(tmp_path, sig, layout):
    """SLURM's SIGTERM (preemption, time limit) and SIGUSR2 (`--signal`) stop a run as Ctrl-C does: one line
    with what was saved and how to resume, the shell's status for the signal, the cache closed cleanly; the
    same command then computes only what was not saved."""
    cache = tmp_path / "cache"
    with FakeOpenAIServer(fault_rule=lambda body: "slow:0.3" if is_answer(body) else None) as server:
        overrides = [*server_demo(server.url), "answer_mllm.max_concurrency=1", f"cache_layout={layout}"]
        proc = start(overrides, cache, tmp_path / "run1")
        try:
            wait_for_answers(proc, cache)
            proc.send_signal(sig)
            stdout, stderr = proc.communicate(timeout=300)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert "Traceback" not in stdout + stderr, stderr[-3000:]
        assert proc.returncode == 128 + sig, stderr[-3000:]
        name = signal.Signals(sig).name
        lines = stderr_lines(stderr)  # nothing else on stderr: progress=false quiets the loaders' bars too
        assert len(lines) == 1, stderr
        match = re.fullmatch(rf"interrupted \({name}\): {SAVED}", lines[0])
        assert match, lines[0]
        # looked at before this test opens the file: a reader opening a WAL database makes the -wal file
        if layout == "sqlite":  # closed cleanly: the last connection's close folds the WAL in and removes it
            assert not (cache / "visa-cache.sqlite-wal").exists()
        else:  # the writer's log ends with its closing record
            _, logs = scan(cache)
            assert logs and all(log.closed for log in logs)
        saved = answers_saved(cache)
        assert int(match.group(1)) == saved > 0
        metrics = resume(server_demo(server.url) + [f"cache_layout={layout}"], cache, tmp_path / "run2")
    assert metrics["calls/answer/cached"] == saved
    assert metrics["calls/answer/computed"] + saved == 7 * 2  # 7 queries x top-2 x 1 question


@pytest.mark.slow
def test_ctrl_c_again_during_clean_up_is_ignored(tmp_path):
    """Ctrl-C pressed many times: the first stops the run, the others (some during its clean-up: closing the
    cache, cancelling the requests in flight) change nothing: one line, status 130, no traceback, the cache
    closed cleanly."""
    cache = tmp_path / "cache"
    with FakeOpenAIServer(fault_rule=lambda body: "slow:0.3" if is_answer(body) else None) as server:
        proc = start([*server_demo(server.url), "answer_mllm.max_concurrency=2"], cache, tmp_path / "run")
        try:
            wait_for_answers(proc, cache)
            for _ in range(30):
                if proc.poll() is not None:
                    break
                proc.send_signal(signal.SIGINT)
                time.sleep(0.01)
            stdout, stderr = proc.communicate(timeout=300)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert "Traceback" not in stdout + stderr and "KeyboardInterrupt" not in stderr, stderr[-3000:]
    assert proc.returncode == 130, stderr[-3000:]
    lines = stderr_lines(stderr)
    assert len(lines) == 1 and re.fullmatch(rf"interrupted: {SAVED}", lines[0]), stderr
    assert not (cache / "visa-cache.sqlite-wal").exists()


def limited(size: int):
    """A child process that may not write a file beyond `size` bytes (RLIMIT_FSIZE): the kernel refuses the
    write as on a full disk (EFBIG instead of ENOSPC; Python ignores SIGXFSZ, so the write fails)."""

    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))

    return apply


@pytest.mark.slow
def test_a_full_disk_under_the_cache_stops_with_one_line_and_keeps_what_was_saved(tmp_path):
    cache = tmp_path / "cache"
    with FakeOpenAIServer() as server:
        overrides = server_demo(server.url)
        cmd = [sys.executable, "-m", "visa.run", *overrides, f"hydra.run.dir={tmp_path / 'run1'}"]
        full = subprocess.run(
            cmd,
            cwd=REPO,
            env=env_for(cache),
            capture_output=True,
            text=True,
            timeout=900,
            preexec_fn=limited(48 * 1024),  # the cache's write-ahead log outgrows it part-way
        )
        assert "Traceback" not in full.stdout + full.stderr, full.stderr[-3000:]
        assert full.returncode == 1
        assert stderr_lines(full.stderr) == stderr_lines(full.stderr)[-1:], full.stderr
        assert re.fullmatch(
            r"error: cannot write to the cache .*visa-cache\.sqlite: disk I/O error; the results saved "
            r"before are kept\. Free space or fix its permissions and run the same command again to resume, "
            r"or point cache_dir at another folder",
            stderr_lines(full.stderr)[-1],
        ), full.stderr
        with closing(sqlite3.connect(cache / "visa-cache.sqlite")) as db:
            kept = db.execute("SELECT COUNT(*) FROM results").fetchone()[0]
        assert kept > 0  # it failed part-way: something was saved before
        metrics = resume(overrides, cache, tmp_path / "run2")
    cached = sum(v for k, v in metrics.items() if k.startswith("calls/") and k.endswith("/cached"))
    assert cached == kept  # every result saved before the disk filled up is used, none computed again


@pytest.mark.slow
def test_a_full_disk_under_the_run_folder_keeps_the_results_in_the_cache(tmp_path):
    """The run folder's results file on a full disk (a real ENOSPC: the file is /dev/full): one line saying
    the model results are in the cache; the same command elsewhere computes nothing."""
    cache, run_dir = tmp_path / "cache", tmp_path / "run1"
    run_dir.mkdir()
    (run_dir / "results.jsonl.part").symlink_to("/dev/full")
    with FakeOpenAIServer() as server:
        overrides = server_demo(server.url)
        proc = start(overrides, cache, run_dir)
        stdout, stderr = proc.communicate(timeout=900)
        assert "Traceback" not in stdout + stderr and proc.returncode == 1, stderr[-3000:]
        assert stderr_lines(stderr) == [
            f"error: cannot write the run's outputs to {run_dir}: No space left on device; the model results "
            f"are kept in the cache {cache / 'visa-cache.sqlite'}, so after freeing space (or with "
            "hydra.run.dir=... on another disk) the same command writes them again without computing anything"
        ]
        metrics = resume(overrides, cache, tmp_path / "run2")
    assert sum(v for k, v in metrics.items() if k.startswith("calls/") and k.endswith("/computed")) == 0


# answer_mllm.model -> how the server answers that model's answer requests
SERVER_FAULTS = {
    "garbage-model": lambda n: "garbage",  # a proxy's HTML page instead of JSON
    "nochoices-model": lambda n: "malformed" if n == 0 else None,  # once: JSON without choices
    "404-model": lambda n: "404",  # every request refused at once (8 in flight)
    "hang-model": lambda n: None if n < 3 else "slow:20",  # stops answering after 3 replies
}


@pytest.fixture(scope="module")
def server_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("server-faults")
    seen: dict[str, int] = {}

    def rule(body: dict) -> str | None:
        model = body.get("model", "")
        if model not in SERVER_FAULTS or not is_answer(body):
            return None
        n = seen[model] = seen.get(model, -1) + 1
        return SERVER_FAULTS[model](n)

    def empty_reply(body: dict) -> str:
        if body.get("model") == "empty-model" and is_answer(body):
            return ""
        from helpers.fake_openai_server import default_reply

        return default_reply(body)

    cases = {
        "garbage": ["answer_mllm.max_retries=1", "answer_mllm.retry_backoff=0.01"],
        "nochoices": ["answer_mllm.retry_backoff=0.01"],
        "404": ["answer_mllm.max_concurrency=8"],
        "hang": [
            "answer_mllm.max_concurrency=1",
            "answer_mllm.request_timeout=1",
            "answer_mllm.max_retries=1",
            "answer_mllm.retry_backoff=0.01",
        ],
        "empty": [],
        "fake": [],  # a good run afterwards: what the failed runs saved is used
    }
    with FakeOpenAIServer(fault_rule=rule, reply=empty_reply) as server:
        argvs = [
            [*server_demo(server.url, f"{name}-model"), *extra, f"hydra.run.dir={root / name}"]
            for name, extra in cases.items()
        ]
        outputs, stderr = run_in_one_process(argvs, REPO, env_for(root / "cache"), timeout=900)
    return root, dict(zip(cases, outputs)), stderr


def one_error_line(got: dict, expected: str) -> None:
    assert "Traceback" not in got["stdout"] + got["stderr"], got["stderr"][-3000:]
    assert got["code"] == 1, got["stderr"][-3000:]
    lines = stderr_lines(got["stderr"])
    assert len(lines) == 1 and re.fullmatch(expected, lines[0]), got["stderr"]


@pytest.mark.slow
def test_html_instead_of_json_stops_after_the_retries(server_runs):
    root, runs, _ = server_runs
    one_error_line(
        runs["garbage"],
        r"error: http://127\.0\.0\.1:\d+/v1/chat/completions failed 2 times \(last: a malformed reply "
        r"'<html>proxy error</html>'\); check that url= is the server's OpenAI-compatible /v1 address \(a "
        r"proxy or a login page answers HTML\)",
    )
    assert answers_saved(root / "cache", "garbage-model") == 0  # a malformed reply is never cached


@pytest.mark.slow
def test_a_reply_without_choices_is_asked_again(server_runs):
    root, runs, _ = server_runs
    assert runs["nochoices"]["code"] == 0, runs["nochoices"]["stderr"][-3000:]
    metrics, results = read_run(root / "nochoices")
    assert metrics["generation/answer_mllm/malformed"] == 1 and metrics["generation/answer_mllm/retried"] == 1
    answers = [a for r in results for c in r["candidates"] for a in c["answers"]]
    assert len(answers) == 14 and all(a.startswith("Reply to: Question:") for a in answers)


@pytest.mark.slow
def test_empty_replies_are_kept_and_counted(server_runs):
    root, runs, _ = server_runs
    assert runs["empty"]["code"] == 0 and stderr_lines(runs["empty"]["stderr"]) == []
    metrics, results = read_run(root / "empty")
    assert metrics["generation/answer_mllm/empty"] == metrics["calls/answer/computed"] == 14
    assert all(a == "" for r in results for c in r["candidates"] for a in c["answers"])


@pytest.mark.slow
def test_many_requests_failing_at_once_give_one_line(server_runs):
    """8 requests refused together: one error line, and no asyncio "Task exception was never retrieved"."""
    _, runs, driver_stderr = server_runs
    got = runs["404"]
    one_error_line(
        got,
        r"error: http://127\.0\.0\.1:\d+/v1/chat/completions answered HTTP 404 for model '404-model': "
        r"'\{\"error\": \"injected 404\"\}'; check model= against http://127\.0\.0\.1:\d+/v1/models",
    )
    everything = driver_stderr + "".join(r["stdout"] + r["stderr"] for r in runs.values())
    assert "exception was never retrieved" not in everything


@pytest.mark.slow
def test_a_server_that_stops_answering_stops_the_run_and_keeps_the_answers(server_runs):
    root, runs, _ = server_runs
    one_error_line(
        runs["hang"],
        r"error: http://127\.0\.0\.1:\d+/v1/chat/completions failed 2 times \(last: TimeoutError\); check "
        r"that the server is up and reachable, or raise max_retries / request_timeout=1",
    )
    assert answers_saved(root / "cache", "hang-model") == 3  # the replies before it stopped are kept


@pytest.mark.slow
def test_the_questions_of_failed_runs_are_not_asked_again(server_runs):
    root, runs, _ = server_runs
    assert runs["fake"]["code"] == 0, runs["fake"]["stderr"][-3000:]
    metrics, _ = read_run(root / "fake")
    assert metrics["calls/ask/computed"] == 0 and metrics["calls/ask/cached"] == metrics["data/queries"]


@pytest.mark.slow
def test_a_shard_says_that_the_final_run_writes_the_results(tmp_path):
    """A shard evaluates nothing: it writes no results file (an empty one looked like a failed run) and says
    on its output that the final run, the same command without shard.*, writes the results."""
    with FakeOpenAIServer() as server:
        overrides = [
            *server_demo(server.url),
            "shard.count=2",
            "shard.index=0",
            "shard.idle_seconds=1",  # alone: it computes the other shard's share of the shared stages
            "shard.poll_seconds=0.2",
        ]
        proc = start(overrides, tmp_path / "cache", tmp_path / "shard0")
        stdout, stderr = proc.communicate(timeout=900)
    assert proc.returncode == 0, stderr[-3000:]
    assert re.search(r"^shard 0/2: \d+ model calls computed$", stdout, re.M), stdout
    assert (
        "no results.jsonl in a shard's folder: the final run (the same command without shard.*) reads every "
        "shard's results from the cache and writes them with the metrics"
    ) in stdout
    assert (tmp_path / "shard0" / "metrics.json").exists()
    assert not list((tmp_path / "shard0").glob("results.jsonl*"))
