"""The type checker over visa/ (mypy, configured in pyproject.toml) passes, and it enforces the parts'
Protocols: a part that lacks a required method is reported where a stage takes it."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _mypy(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mypy", *args], cwd=REPO, capture_output=True, text=True, timeout=600
    )


def test_mypy_passes_over_the_package():
    proc = _mypy()  # the files and settings of [tool.mypy]
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]


def test_a_part_without_a_required_method_is_reported():
    proc = _mypy("tests/fixtures/typecheck/parts.py")
    errors = [line for line in proc.stdout.splitlines() if ": error:" in line]
    assert proc.returncode == 1
    assert len(errors) == 1, proc.stdout  # the complete backbone passes
    assert "parts.py:38" in errors[0] and "TextOnlyBackbone" in errors[0] and "Backbone" in errors[0]
    assert '"encode_visual"' in proc.stdout  # mypy names the missing member
