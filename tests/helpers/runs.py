"""Several `python -m visa.run ARGS` in one fresh Python process (the imports and the demo's models, most of
a start-up on a busy machine, are paid once), each run's exit status and output captured apart."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

# A garbage collection after each run, so that an asyncio task whose error was never looked at reports itself
# ("Task exception was never retrieved") inside the run that made it.
_DRIVER = """
import contextlib, gc, io, json, runpy, sys
out = []
for argv in json.loads(sys.argv[1]):
    sys.argv = ["visa.run", *argv]
    stdout, stderr, code = io.StringIO(), io.StringIO(), 0
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            runpy.run_module("visa.run", run_name="__main__")
        except SystemExit as e:
            code = e.code
        gc.collect()
    out.append({"code": code, "stdout": stdout.getvalue(), "stderr": stderr.getvalue()})
print(json.dumps(out))
"""


def run_in_one_process(
    argvs: list[list[str]], cwd: Path, env: dict[str, str], timeout: float
) -> tuple[list[dict], str]:
    """({"code", "stdout", "stderr"} of each run in order, the process's own stderr)."""
    proc = subprocess.run(
        [sys.executable, "-c", _DRIVER, json.dumps(argvs)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.splitlines()[-1]), proc.stderr
