"""Finding finished runs and reading each into a row: its settings (`params`), its metrics, and where its
per-query results are. Also what tells runs apart: the settings that differ (each run's label), the ones
every run shares, and runs whose settings are equal but whose rankings are not (`results/digest`)."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from visa.config import GROUPS
from visa.core.errors import VisaError
from visa.core.overrides import parse_overrides
from visa.method.metrics import RECALL_KEY, recall_gains

# Settings that explain a run, read from its config when they are not overridden.
KEY_SETTINGS = ("fusion.alpha", "questions.num", "questions.max", "retrieval.top_k", "answers.mode")
# Config groups whose choice (the yaml name, from Hydra's runtime.choices) is a setting: the config's own
# list of groups, plus `experiment` (a preset over them).
SETTING_GROUPS = ("experiment", *GROUPS)
# Metric prefixes of the re-ranked order: `visa/` in runs written before the `reranker` group, `rerank/`
# after; both are read, and `rerank/` is what the tables and plots show.
RERANKED = ("rerank", "visa")
# Text values in metrics.json that are outcomes, not settings (every other text value, `reranker`,
# `normalizer`, is a setting and labels runs like an override does).
OUTCOME_TEXT = ("results/digest",)
DIGEST = "results/digest"


def _natural_key(text: str | Path) -> list:
    """Sort 0, 1, 2, ..., 10 rather than 0, 1, 10, 2."""
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", str(text))]


def find_run_dirs(path: Path) -> list[Path]:
    """Run folders at or under `path`: the folders that hold a metrics.json, W&B's own folders excluded."""
    if (path / "metrics.json").is_file():
        return [path]
    found = [m.parent for m in path.rglob("metrics.json") if "wandb" not in m.parent.relative_to(path).parts]
    return sorted(found, key=_natural_key)


def _load_yaml(path: Path) -> Any:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.load(path), resolve=False) if path.is_file() else {}


def _select(config: dict, dotted: str) -> Any:
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node if isinstance(node, (int, float, str, bool)) else None


def _aliases(metrics: dict[str, Any]) -> dict[str, Any]:
    """`rerank/...` for every `visa/...` key (at any depth: FashionIQ's `dress/visa/R@10`) a run lacks, and
    `gain/...` = re-ranked - backbone for every metric both orders have."""
    out = dict(metrics)
    for key, value in metrics.items():
        parts = key.split("/")
        if "visa" in parts:
            out.setdefault("/".join("rerank" if p == "visa" else p for p in parts), value)
    for key, value in list(out.items()):
        parts = key.split("/")
        if "rerank" in parts and isinstance(value, (int, float)):
            base = out.get("/".join("base" if p == "rerank" else p for p in parts))
            if isinstance(base, (int, float)):
                out.setdefault(
                    "/".join("gain" if p == "rerank" else p for p in parts), round(value - base, 4)
                )
    return out


def _with_totals(metrics: dict[str, Any]) -> dict[str, Any]:
    """Metrics plus gains (`gain/R@k` = VISA - backbone), the `rerank/` names, total calls, and the fallback
    share for runs written before `questions/fallback_share` existed."""
    out = _aliases({**metrics, **recall_gains(metrics)})
    computed = [v for k, v in metrics.items() if k.startswith("calls/") and k.endswith("/computed")]
    cached = [v for k, v in metrics.items() if k.startswith("calls/") and k.endswith("/cached")]
    if computed:
        out["calls/computed"] = sum(computed)
        out["calls/cached"] = sum(cached)
    if "questions/fallback_share" not in out and out.get("data/queries") and "questions/fallback" in out:
        out["questions/fallback_share"] = round(100.0 * out["questions/fallback"] / out["data/queries"], 2)
    return out


def _split_metrics(metrics: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str], str | None]:
    """metrics.json as (numbers, text settings such as `reranker`, the results digest or None)."""
    numbers = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    texts = {
        k: v for k, v in metrics.items() if isinstance(v, str) and k not in OUTCOME_TEXT and "/" not in k
    }
    digest = metrics.get(DIGEST)
    return numbers, texts, str(digest) if digest is not None else None


def _results_path(run_dir: Path, config: dict) -> Path | None:
    name = _select(config, "results_file") or "results.jsonl"
    for candidate in (run_dir / str(name), run_dir / "results.jsonl", run_dir / "results.jsonl.gz"):
        if candidate.is_file():
            return candidate
    return None


def load_run(run_dir: Path, root: Path | None = None) -> dict[str, Any]:
    """One row: `run` (its folder, relative to `root`), `group` (its multirun folder, or ""), `params` (part
    choices, key settings, overrides, and text settings from metrics.json such as `reranker`), `metrics`
    (metrics.json's numbers plus gains, `rerank/` names and totals), `digest` (`results/digest` or None) and
    `results` (its results.jsonl, or None)."""
    run_dir = Path(run_dir)
    try:
        raw = json.loads((run_dir / "metrics.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise VisaError(f"{run_dir}/metrics.json cannot be read: {e}") from e
    if not isinstance(raw, dict):
        raise VisaError(f"{run_dir}/metrics.json is not a mapping of metric names to values")
    hydra_dir = run_dir / ".hydra"
    config = _load_yaml(hydra_dir / "config.yaml")
    hydra = _load_yaml(hydra_dir / "hydra.yaml").get("hydra", {})
    overrides = parse_overrides(_load_yaml(hydra_dir / "overrides.yaml") or [])
    params: dict[str, Any] = {}
    choices = hydra.get("runtime", {}).get("choices", {})
    for part in SETTING_GROUPS:
        if choices.get(part) is not None:
            params[part] = choices[part]
    for key in KEY_SETTINGS:
        value = _select(config, key)
        if value is not None:
            params[key] = value
    params.update({k: v for k, v in overrides.items() if not k.startswith("hydra")})
    numbers, texts, digest = _split_metrics(raw)
    for key, value in texts.items():
        params.setdefault(key, value)
    group = run_dir.parent if (run_dir.parent / "multirun.yaml").is_file() else None
    base = root if root is not None else run_dir.parent
    try:
        name = str(run_dir.relative_to(base)) if run_dir != base else run_dir.name
    except ValueError:
        name = str(run_dir)
    return {
        "run": name,
        "group": str(group) if group is not None else "",
        "path": str(run_dir),
        "params": params,
        "metrics": _with_totals(numbers),
        "digest": digest,
        "results": str(path) if (path := _results_path(run_dir, config)) is not None else None,
    }


def load_wandb_group(spec: str) -> list[dict[str, Any]]:
    """Rows from a W&B group, `wandb:ENTITY/PROJECT/GROUP`, as WandbLogger logged them (needs the API)."""
    parts = spec.removeprefix("wandb:").strip("/").split("/")
    if len(parts) != 3:
        raise VisaError(f"{spec!r}: write a W&B group as wandb:ENTITY/PROJECT/GROUP")
    entity, project, group = parts
    try:
        import wandb

        runs = list(wandb.Api(timeout=30).runs(f"{entity}/{project}", filters={"group": group}))
    except Exception as e:  # no key, no network, no such project: all say the same to the user
        raise VisaError(f"cannot read W&B group {spec}: {e}") from e
    rows = []
    for run in runs:
        config = dict(run.config)
        params = {k: v for k, v in (config.get("sweep") or {}).items()}
        for key in KEY_SETTINGS:
            value = _select(config, key)
            if value is not None:
                params.setdefault(key, value)
        numbers, texts, digest = _split_metrics(dict(run.summary))
        for key, value in texts.items():
            params.setdefault(key, value)
        numbers = {k: v for k, v in numbers.items() if "/" in k}
        rows.append(
            {
                "run": run.name,
                "group": group,
                "path": run.url,
                "params": params,
                "metrics": _with_totals(numbers),
                "digest": digest,
                "results": None,
            }
        )
    return rows


def load_runs(sources: Iterable[str | Path]) -> list[dict[str, Any]]:
    """Rows for every run found in `sources` (folders or wandb: groups), in order."""
    rows: list[dict[str, Any]] = []
    for source in sources:
        if str(source).startswith("wandb:"):
            rows += load_wandb_group(str(source))
            continue
        path = Path(source)
        if not path.exists():
            raise VisaError(f"{path}: no such folder")
        dirs = find_run_dirs(path)
        if not dirs:
            raise VisaError(f"{path}: no finished runs (no metrics.json under it)")
        root = path if path.is_dir() and dirs != [path] else path.parent
        rows += [load_run(d, root) for d in dirs]
    return rows


# -- what tells runs apart -----------------------------------------------------------------------------------
def swept_params(rows: list[dict[str, Any]]) -> list[str]:
    """The settings whose value differs between runs (absent counts as a value): the ones that label runs."""
    keys: list[str] = []
    for row in rows:
        keys += [k for k in row["params"] if k not in keys]
    return [k for k in keys if len({json.dumps(r["params"].get(k), default=str) for r in rows}) > 1]


def common_params(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The settings every run has, with the same value: folded into one line above the table."""
    if not rows:
        return {}
    swept = set(swept_params(rows))
    return {k: v for k, v in rows[0]["params"].items() if k not in swept}


def show(value: Any) -> str:
    """A setting's value as a person reads it: 0.25 rather than 0.25000000001, `–` when unset."""
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:g}" if math.isfinite(value) else str(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(show(v) for v in value) + "]"
    return str(value)


def run_label(row: dict[str, Any], keys: list[str], sep: str = " · ") -> str:
    """The run named by the settings that differ (`reranker=pointwise · normalizer=nnn`); its folder when
    no setting differs."""
    if not keys:
        return row["run"]
    return sep.join(f"{k}={show(row['params'].get(k))}" for k in keys)


def labels(rows: list[dict[str, Any]]) -> list[str]:
    """Each run's label; runs whose settings are all equal keep them apart by their folder."""
    keys = swept_params(rows)
    names = [run_label(r, keys) for r in rows]
    repeated = {n for n in names if names.count(n) > 1}
    return [f"{n} ({r['run']})" if n in repeated and keys else n for n, r in zip(names, rows, strict=True)]


def digest_conflicts(rows: list[dict[str, Any]]) -> list[list[int]]:
    """Runs whose settings are all equal but whose final rankings differ (`results/digest`), as lists of row
    positions: a nondeterministic model, a changed cache, or a code change between the runs. Runs without a
    digest (written before it existed) are never flagged."""
    by_settings: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        if row.get("digest"):
            key = json.dumps(row["params"], sort_keys=True, default=str)
            by_settings.setdefault(key, []).append(i)
    return [members for members in by_settings.values() if len({rows[i]["digest"] for i in members}) > 1]


def recall_ks(rows: list[dict[str, Any]]) -> list[int]:
    """The K of every R@K of the re-ranked order in any run."""
    ks = set()
    for row in rows:
        for key in row["metrics"]:
            match = RECALL_KEY.fullmatch(key)
            if match:
                ks.add(int(match.group(1)))
    return sorted(ks)


def stages(rows: list[dict[str, Any]]) -> list[str]:
    """The pipeline stages any run timed (`time/<stage>`), in the order they ran."""
    names: list[str] = []
    for row in rows:
        names += [
            k[5:]
            for k in row["metrics"]
            if k.startswith("time/") and k != "time/total" and k[5:] not in names
        ]
    return names
