"""Benchmark: what a 5 x 3 sweep (fusion.alpha x questions.num) costs next to one cold run, thanks to the
stage cache. Each of the two measurements starts from its own empty cache:

    A. one run at the sweep's most expensive point (questions.num=3, the default)
    B. `python -m visa.run -m sweep=alpha_questions` (15 jobs, Hydra's basic launcher, one process)

and reports wall time and model calls computed. The issue's target: B <= 1.5 x A.

    python experiments/bench_sweep.py                      # the whole demo (slow on a small CPU)
    python experiments/bench_sweep.py --limit 6 --top-k 3  # a slice of it

Writes experiments/bench_sweep.json (append-only list of measurements) unless --no-save; --keep DIR keeps
the sweep's run folders (experiments/runs/... feeds the results ledger).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STAGES = ("encode_text", "encode_visual", "describe", "ask", "answer", "score")


def run(args: list[str], cache: Path) -> float:
    env = {**os.environ, "VISA_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "visa.run", *args], cwd=REPO, env=env, capture_output=True, text=True
    )
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"failed: {' '.join(args)}\n{proc.stderr[-3000:]}")
    return seconds


def computed(run_dirs: list[Path]) -> int:
    total = 0
    for d in run_dirs:
        metrics = json.loads((d / "metrics.json").read_text())
        total += sum(metrics[f"calls/{s}/computed"] for s in STAGES)
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=None, help="first N demo images (default: all 45)")
    parser.add_argument("--top-k", type=int, default=None, help="retrieval.top_k (default: the demo's 5)")
    parser.add_argument("--no-save", action="store_true")
    parser.add_argument("--keep", type=Path, help="copy the sweep's multirun folder here (for the ledger)")
    args = parser.parse_args()
    common = ["progress=false", "questions.max=3"]
    if args.limit:
        common.append(f"dataset.limit={args.limit}")
    if args.top_k:
        common.append(f"retrieval.top_k={args.top_k}")
    with tempfile.TemporaryDirectory(prefix="visa-bench-") as tmp:
        tmp_path = Path(tmp)
        single_s = run(
            [*common, "questions.num=3", f"hydra.run.dir={tmp_path / 'single'}"], tmp_path / "cache-a"
        )
        sweep_dir = tmp_path / "sweep"
        sweep_s = run(
            ["-m", "sweep=alpha_questions", *common, f"hydra.sweep.dir={sweep_dir}"], tmp_path / "cache-b"
        )
        jobs = sorted(p.parent for p in sweep_dir.glob("*/metrics.json"))
        if args.keep:
            shutil.copytree(sweep_dir, args.keep, ignore=shutil.ignore_patterns("wandb"), dirs_exist_ok=True)
        result = {
            "date": time.strftime("%Y-%m-%d %H:%M"),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
            "command": "python experiments/bench_sweep.py " + " ".join(sys.argv[1:]),
            "settings": common,
            "single_s": round(single_s, 1),
            "sweep_s": round(sweep_s, 1),
            "sweep_jobs": len(jobs),
            "ratio": round(sweep_s / single_s, 3),
            "single_calls_computed": computed([tmp_path / "single"]),
            "sweep_calls_computed": computed(jobs),
        }
    print(json.dumps(result, indent=2))
    if not args.no_save:
        path = REPO / "experiments" / "bench_sweep.json"
        history = json.loads(path.read_text()) if path.exists() else []
        path.write_text(json.dumps([*history, result], indent=2) + "\n")


if __name__ == "__main__":
    main()
