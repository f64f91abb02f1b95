"""The end of a `-m` sweep whose jobs ran in other processes (Hydra's submitit launchers `local` and
`slurm`, Ray, joblib): the console saw none of what they printed, so one line per job with its overrides and
its result (read from the job's folder), and where each job's own output went.

Registered for every run as a Hydra callback (`hydra.callbacks` in conf/config.yaml); with Hydra's basic
launcher the jobs ran in this process and printed their own tables, so it says nothing."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from visa.method.metrics import BASE, RERANKED

_RECALL = re.compile(r"base/R@(\d+)")


def job_line(job_dir: Path) -> str:
    """One job of a sweep: its overrides and its first R@k (backbone -> + VISA), the model calls a shard
    computed, or where to look when it wrote no metrics."""
    overrides_file = job_dir / ".hydra" / "overrides.yaml"
    overrides = " ".join(yaml.safe_load(overrides_file.read_text()) or []) if overrides_file.is_file() else ""
    metrics_file = job_dir / "metrics.json"
    if not metrics_file.is_file():
        return f"{overrides}: no metrics.json (failed or not finished; {job_dir / 'run.log'})"
    metrics: dict[str, Any] = json.loads(metrics_file.read_text())
    recall = sorted(int(m.group(1)) for m in map(_RECALL.fullmatch, metrics) if m)
    if "shard/index" in metrics or not recall:
        computed = sum(v for k, v in metrics.items() if k.endswith("/computed"))
        return f"{overrides}: {computed} model calls computed ({job_dir})"
    k = recall[0]
    result = f"R@{k} {metrics[f'{BASE}/R@{k}']:.1f} -> {metrics[f'{RERANKED}/R@{k}']:.1f}"
    if f"{BASE}/mAP@50" in metrics:  # INQUIRE's primary metric
        result += f", mAP@50 {metrics[f'{BASE}/mAP@50']:.1f} -> {metrics[f'{RERANKED}/mAP@50']:.1f}"
    return f"{overrides}: {result} ({job_dir})"


def _job_dirs(sweep_dir: Path) -> list[Path]:
    dirs = [p.parent.parent for p in sweep_dir.glob("**/.hydra/overrides.yaml")]
    return sorted(dirs, key=lambda d: (len(d.parts), int(d.name) if d.name.isdigit() else 0, str(d)))


class SweepReport(Callback):
    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        launcher = str(config.hydra.launcher.get("_target_", ""))
        if launcher.endswith(".BasicLauncher"):
            return
        sweep_dir = Path(config.hydra.sweep.dir)
        jobs = _job_dirs(sweep_dir)
        lines = [f"sweep: {len(jobs)} job(s) in {sweep_dir}"] + [f"  {job_line(d)}" for d in jobs]
        folder = config.hydra.launcher.get("submitit_folder")
        if folder:  # submitit keeps what each job printed beside its pickles
            where = str(folder).replace("%j", "<job id>")
            lines.append(f"each job's printed output: {where}/<job id>_0_log.out (and _log.err)")
        print("\n".join(lines), flush=True)
