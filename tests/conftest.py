"""Shared fixtures: runs of the real CLI on a small slice of the demo, with a cache private to the session."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# A skip for something the install did not provide: every such skip in tests/ says "<what> is not installed"
# (`requires` below, or a skipif reason); pytest.importorskip without a reason says "could not import".
MISSING = re.compile(r"\bis not installed\b|\bcould not import\b")
INSTALL_HINT = "bash install.sh installs it, README: Install"


def requires(module: str, extra: str):
    """pytest.importorskip(module), with the reason that the CI=true check below recognises."""
    return pytest.importorskip(
        module, reason=f"{module} is not installed (the '{extra}' extra of visa-retrieval; {INSTALL_HINT})"
    )


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def _missing_reason(report) -> str | None:
    """Under CI=true, the reason of a skip for a package or program that is not installed; else None."""
    if not (report.skipped and _in_ci()) or hasattr(report, "wasxfail"):
        return None
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
    reason = reason.removeprefix("Skipped: ")
    return reason if MISSING.search(reason) else None


def _ci_message(reason: str) -> str:
    return f"CI=true: a test skipped for something the install did not provide fails in CI: {reason}"


# Under CI=true a test skipped because a package or program is not installed fails instead, so CI's summary
# shows 0 skipped for that cause; every other skip stays a skip.
@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    reason = _missing_reason(report)
    if reason is not None:
        report.outcome, report.longrepr = "failed", _ci_message(reason)
    return report


class _NotInstalled(pytest.Item):
    """Stands for a test module that a module-level requires() skipped: one failing test, so that the rest of
    the suite still runs (a failed collection would stop the session)."""

    def __init__(self, *, reason: str, **kwargs):
        super().__init__(**kwargs)
        self.reason = reason

    def runtest(self) -> None:
        pytest.fail(_ci_message(self.reason), pytrace=False)

    def reportinfo(self):
        return self.path, None, f"{self.name}: {self.reason}"


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector):
    report = yield
    reason = _missing_reason(report)
    if reason is None:
        return report
    item = _NotInstalled.from_parent(collector, name="not_installed", reason=reason)
    return pytest.CollectReport(collector.nodeid, "passed", None, [item])


def pytest_configure(config) -> None:
    """The session's own model and results caches, so that what the machine holds outside the clone (a model
    converted by an earlier run, results cached by another checkout) changes no test: every test process and
    every run it starts reads these. A test that needs a state of its own (an empty model cache) sets it."""
    import tempfile

    if hasattr(config, "workerinput"):  # a pytest-xdist worker: the controller's folders
        return
    root = Path(tempfile.mkdtemp(prefix="visa-tests-"))
    os.environ["VISA_MODEL_CACHE"] = str(root / "models")
    os.environ["VISA_CACHE"] = str(root / "cache")
    config._visa_session_root = root  # type: ignore[attr-defined]


def pytest_unconfigure(config) -> None:
    import shutil

    root = getattr(config, "_visa_session_root", None)
    if root is not None:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def converted_models() -> Path:
    """The demo's question LLM converted into the session's model cache, on purpose, once (what install.sh
    does for a newcomer): for the tests that want a run to start from the converted state."""
    done = subprocess.run(
        [sys.executable, "-m", "visa.prepare"], cwd=REPO, capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return Path(os.environ["VISA_MODEL_CACHE"])


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
