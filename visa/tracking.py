"""Experiment loggers, each a class instantiated from `conf/logger/<name>.yaml` that satisfies `Logger`.

`logger=none` (NullLogger) writes nothing beyond the run folder's own files; `logger=wandb` (WandbLogger)
sends one W&B run per Hydra job. wandb is imported only by WandbLogger, so `logger=none` needs neither the
package nor an account.
"""

from __future__ import annotations

import netrc
import os
import re
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol, runtime_checkable
from urllib.parse import urlparse

from visa.core.errors import VisaError
from visa.core.overrides import is_secret_key, parse_overrides
from visa.data import Dataset, Item
from visa.method.metrics import RERANKED, primary_metric, recall_gains
from visa.method.records import query_summary, reranked_top


@runtime_checkable
class Logger(Protocol):
    """What a run needs of a logger: started before the stages, given the results (records read back from
    the run's results file, one at a time: iterate them, do not hold them all), finished always."""

    def start(self, config: dict, run_dir: Path) -> None: ...

    def log(self, metrics: dict, results: Iterable[dict], dataset: Dataset) -> None: ...

    def finish(self) -> None: ...


class NullLogger:
    """logger=none: writes nothing beyond the run directory's own files."""

    def start(self, config: dict, run_dir: Path) -> None:
        pass

    def log(self, metrics: dict, results: Iterable[dict], dataset: Dataset) -> None:
        pass

    def finish(self) -> None:
        pass


def redact(config: Any) -> Any:
    """`config` without the entries whose key looks like a secret (`is_secret_key`), at any depth."""
    if isinstance(config, dict):
        return {k: redact(v) for k, v in config.items() if not is_secret_key(str(k))}
    if isinstance(config, list):
        return [redact(v) for v in config]
    return config


def hydra_job() -> dict[str, Any]:
    """What Hydra knows about the current job: its sweep folder (None outside a multirun), job number,
    override string and the command-line/sweep overrides as {key: value}. Empty outside Hydra."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return {}
    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    return {
        "sweep_dir": str(hc.sweep.dir) if multirun else None,
        "job_num": int(hc.job.num) if multirun else None,
        "override_dirname": safe_override_dirname(list(hc.overrides.task), hc.job.override_dirname),
        "overrides": parse_overrides(hc.overrides.task),  # one column each in comparisons
    }


def safe_override_dirname(task_overrides: list[str], override_dirname: str) -> str:
    """Hydra's `key=value,...` string of the job's overrides (W&B names runs by it), without any override
    whose key looks like a secret."""
    kept = [o for o in task_overrides if not is_secret_key(o.split("=", 1)[0].lstrip("+~"))]
    return override_dirname if len(kept) == len(task_overrides) else ",".join(sorted(kept))


def scrub(text: str) -> str:
    """`text` (a folder name that may embed overrides) without the `key=value` parts with a secret key."""

    def keep(match: re.Match) -> str:
        return "" if is_secret_key(match.group().split("=")[0]) else match.group()

    return re.sub(r"[^,/=]+=[^,/]*", keep, text)


def has_wandb_key() -> bool:
    """Whether wandb could log in without asking: a key in the environment or in ~/.netrc for the host."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or "api.wandb.ai"
    try:
        return netrc.netrc().authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def thumbnail(item: Item | None, size: int):
    """A small RGB PIL thumbnail of an item: the image, or a video's middle frame; None when unreadable."""
    if item is None:
        return None
    try:
        if item.kind == "video":
            from visa.data.video import sample_uniform

            image = sample_uniform(item.path, 1)[0]  # one segment: its middle frame
        else:
            from visa.data.media import load_image

            image = load_image(item.path)
    except VisaError:
        return None
    image.thumbnail((size, size))
    return image


def quality_summary(metrics: dict) -> dict[str, Any]:
    """The run's primary quality for a cross-run scatter against `cost/per_query/seconds`:
    `quality/primary` (the re-ranked order's metric that `visa.compare`'s Pareto plot uses: mAP@50 where
    the run reports it, else the smallest R@K) and `quality/primary_name` (which metric that is). Empty when
    the run has no re-ranked quality metric."""
    metric = primary_metric(metrics)
    name = f"{RERANKED}/{metric}"
    if metric is None or not isinstance(metrics.get(name), (int, float)):
        return {}
    return {"quality/primary": metrics[name], "quality/primary_name": name}


def pick_samples(results: Iterable[dict], n: int) -> list[dict]:
    """Up to `n` query records for the sample table: first those whose top-1 VISA changed (the interesting
    ones on a dashboard), then the others, shown in query order. Holds at most 2n records while reading."""
    changed: list[dict] = []
    same: list[dict] = []
    for r in results:
        reranked = reranked_top(r)
        if r["base_top"][:1] and reranked[:1] and r["base_top"][0]["id"] != reranked[0]["id"]:
            if len(changed) < n:
                changed.append(r)
        elif len(same) < n:
            same.append(r)
    return sorted((changed + same)[:n], key=lambda r: r["index"])


class WandbLogger:
    """logger=wandb: one W&B run per job, grouped by Hydra multirun.

    Logs the resolved config (secrets removed) plus the job's overrides under `sweep` (the columns to compare
    runs by), the metrics, the primary quality in the run's summary (`quality_summary`: with
    `cost/per_query/seconds`, the axes of a quality-vs-cost scatter across a sweep's runs), a table of sample
    queries with thumbnails of the top items before and after re-ranking and what re-ranking did to the
    ground truth's rank, and metrics.json + results.jsonl as an artifact. Without an API key it logs offline
    into the run folder and prints the `wandb sync` command that uploads it later.
    """

    def __init__(
        self,
        project: str = "visa",
        entity: str | None = None,
        mode: str = "auto",
        group: str | None = None,
        name: str | None = None,
        tags: list[str] | None = None,
        dir: str | None = None,
        num_samples: int = 16,
        top_items: int = 5,
        thumb_size: int = 96,
        log_artifact: bool = True,
    ):
        if mode not in ("auto", "online", "offline", "disabled"):
            raise VisaError(f"logger.mode={mode!r} must be one of auto, online, offline, disabled")
        self.project, self.entity, self.mode, self.group, self.name = project, entity, mode, group, name
        self.tags = list(tags or [])
        self.dir, self.num_samples, self.top_items, self.thumb_size = dir, num_samples, top_items, thumb_size
        self.log_artifact = log_artifact
        self.run: Any = None
        self.run_dir: Path | None = None
        self.logged = False

    def _mode(self) -> str:
        if self.mode != "auto":
            return self.mode
        if os.environ.get("WANDB_MODE"):  # the user's explicit choice wins
            return os.environ["WANDB_MODE"]
        return "online" if has_wandb_key() else "offline"

    def start(self, config: dict, run_dir: Path) -> None:
        try:
            import wandb
        except ImportError as e:
            raise VisaError("logger=wandb needs wandb: pip install 'visa-retrieval[tracking]'") from e
        self.run_dir = Path(run_dir)
        job = hydra_job()
        sweep_dir = job.get("sweep_dir")
        # A multirun is one group; its folder is unique and names the sweep on disk too. W&B caps it at 128.
        group = self.group or (scrub(str(sweep_dir))[-128:] if sweep_dir else None)
        name = self.name
        if name is None and job.get("override_dirname"):
            prefix = f"{job['job_num']}:" if job.get("job_num") is not None else ""
            name = (prefix + job["override_dirname"])[:128]
        logged_config = redact(config)
        logged_config["sweep"] = redact(job.get("overrides", {}))
        logged_config["run_dir"] = str(self.run_dir)
        mode = self._mode()
        # Offline files go beside metrics.json unless the user points WANDB_DIR (or logger.dir) elsewhere.
        directory = self.dir or os.environ.get("WANDB_DIR") or str(self.run_dir)
        Path(directory).mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(
            project=self.project,
            entity=self.entity,
            group=group,
            name=name,
            job_type="eval",
            tags=self.tags,
            config=logged_config,
            dir=directory,
            mode=mode,  # type: ignore[arg-type]  # _mode() returns one of wandb's literals
        )
        if mode == "offline":
            print(
                "W&B: no API key found (or offline mode chosen): logging offline. Upload later with\n"
                f"  wandb login && wandb sync {self.offline_dir()}",
                file=sys.stderr,
            )

    def offline_dir(self) -> Path | None:
        """The run's local W&B folder (the argument `wandb sync` takes)."""
        return Path(self.run.dir).parent if self.run is not None else None

    def log(self, metrics: dict, results: Iterable[dict], dataset: Dataset) -> None:
        import wandb

        if self.run is None:
            raise VisaError("WandbLogger.log called before start")
        self.run.log({**metrics, **recall_gains(metrics)})
        # The summary is what W&B's workspace scatter plots per run (the last logged value of each key,
        # cost/per_query/seconds included); the primary metric's own key differs between datasets.
        self.run.summary.update(quality_summary(metrics))
        samples = pick_samples(results, self.num_samples) if self.num_samples > 0 else []
        if samples:
            self.run.log({"samples": self.sample_table(samples, dataset)})
        if self.log_artifact and self.run_dir is not None:
            artifact = wandb.Artifact(f"outputs-{self.run.id}", type="run-outputs")
            for filename in ("metrics.json", "results.jsonl", "results.jsonl.gz"):
                if (self.run_dir / filename).exists():
                    artifact.add_file(str(self.run_dir / filename))
            self.run.log_artifact(artifact)
        self.logged = True

    def sample_table(self, samples: list[dict], dataset: Dataset):
        """wandb.Table of the sample records (`pick_samples`): query, ground truth, what re-ranking did
        (`status`: helped, hurt or unchanged, and the ground truth's rank before and after, empty when it is
        not in the top-K; `visa.method.records.query_summary`), key phrases, questions, then the top items
        before (base_i) and after (rerank_i) re-ranking as thumbnails whose captions give the id, the scores
        and, after re-ranking, the MLLM's answers."""
        import wandb

        items = {item.id: item for item in dataset.gallery}
        thumbs: dict[str, Any] = {}

        def image(item_id: str, caption: str):
            if item_id not in thumbs:
                thumbs[item_id] = thumbnail(items.get(item_id), self.thumb_size)
            picture = thumbs[item_id]
            if picture is None:  # unreadable media: a blank tile, the path in the caption
                from PIL import Image

                picture = Image.new("RGB", (self.thumb_size, self.thumb_size), "lightgray")
                caption += f"\n{items[item_id].path if item_id in items else item_id}"
            return wandb.Image(picture, caption=caption)

        # Every row needs the same columns: as many thumbnails as the shortest list has.
        n = min([self.top_items] + [min(len(r["base_top"]), len(reranked_top(r))) for r in samples])
        columns: list[str | int] = ["index", "query", "ground_truth", "status", "gt_rank_before"]
        columns += ["gt_rank_after", "key_phrases", "questions"]
        columns += [f"base_{i + 1}" for i in range(n)] + [f"rerank_{i + 1}" for i in range(n)]
        table = wandb.Table(columns=columns)
        for r in samples:
            truth = set(r["ground_truth"])
            summary = query_summary(r)
            answers = {c["id"]: c.get("answers", []) for c in r.get("candidates", [])}
            mark = {True: " ✓", False: ""}
            questions = r.get("questions", [])  # VISA's; other re-rankers' records have none
            fallback = not r.get("questions_parsed", True)
            row: list[Any] = [
                r["index"],
                r["query"],
                ", ".join(r["ground_truth"]),
                summary["status"],
                summary["before"],
                summary["after"],
                ", ".join(r.get("key_phrases", [])),
                "\n".join(questions) + ("\n(fallback, not used)" if fallback else ""),
            ]
            for t in r["base_top"][:n]:
                row.append(image(t["id"], f"{t['id']}{mark[t['id'] in truth]} base {t['score']:.3f}"))
            for t in reranked_top(r)[:n]:
                lines = [f"{t['id']}{mark[t['id'] in truth]} fused {t['fused']:.3f} (text {t['text']:.2f})"]
                lines += [f"A{j + 1}: {a}" for j, a in enumerate(answers.get(t["id"], []))]
                row.append(image(t["id"], "\n".join(lines)))
            table.add_data(*row)
        return table

    def finish(self) -> None:
        if self.run is None:
            return
        # A run that never reached log() failed: mark it so on the dashboard (wandb itself prints, for an
        # offline run, the `wandb sync` command again).
        self.run.finish(exit_code=0 if self.logged else 1)
        self.run = None
