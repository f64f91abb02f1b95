"""Compare finished runs: `python -m visa.compare DIR... [--out OUT] [--ledger FILE]`.

A DIR is a run folder (it holds metrics.json), a Hydra multirun folder, or any folder above them; every run
found under it is read. `wandb:ENTITY/PROJECT/GROUP` reads the runs of a W&B group instead (needs the API).
Writes to OUT: index.html (a table of runs and the plots), the plots as PNG, and runs.csv. With --ledger,
also a Markdown table of the runs (the results ledger, e.g. experiments/results.md).

Everything is a plain function of rows (one dict per run), so a notebook can use the same steps.
"""

from __future__ import annotations

import argparse
import csv
import html
import json
import math
import re
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from visa.config import PART_GROUPS
from visa.core.errors import VisaError
from visa.core.overrides import parse_overrides
from visa.method.metrics import BASE, RERANKED, recall_gains

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# Settings that explain a run, read from its config when they are not overridden (always shown).
KEY_SETTINGS = ("fusion.alpha", "questions.num", "questions.max", "retrieval.top_k", "answers.mode")
# Parts whose choice (the yaml name, from Hydra's runtime.choices) is shown.
KEY_PARTS = ("experiment", *(group.name for group in PART_GROUPS if group.compared))


def _natural_key(path: Path) -> list:
    """Sort job folders 0, 1, 2, ..., 10 rather than 0, 1, 10, 2."""
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", str(path))]


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


def _with_gains(metrics: dict[str, Any]) -> dict[str, Any]:
    out = {**metrics, **recall_gains(metrics)}
    computed = [v for k, v in metrics.items() if k.startswith("calls/") and k.endswith("/computed")]
    cached = [v for k, v in metrics.items() if k.startswith("calls/") and k.endswith("/cached")]
    if computed:
        out["calls/computed"] = sum(computed)
        out["calls/cached"] = sum(cached)
    return out


def load_run(run_dir: Path, root: Path | None = None) -> dict[str, Any]:
    """One row: `run` (its name), `group` (its multirun folder, or ""), `params` (overrides, key settings and
    part choices) and `metrics` (metrics.json plus gain/R@k = VISA - backbone, and total calls)."""
    run_dir = Path(run_dir)
    try:
        metrics = json.loads((run_dir / "metrics.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise VisaError(f"{run_dir}/metrics.json cannot be read: {e}") from e
    hydra_dir = run_dir / ".hydra"
    config = _load_yaml(hydra_dir / "config.yaml")
    hydra = _load_yaml(hydra_dir / "hydra.yaml").get("hydra", {})
    overrides = parse_overrides(_load_yaml(hydra_dir / "overrides.yaml") or [])
    params: dict[str, Any] = {}
    choices = hydra.get("runtime", {}).get("choices", {})
    for part in KEY_PARTS:
        if choices.get(part) is not None:
            params[part] = choices[part]
    for key in KEY_SETTINGS:
        value = _select(config, key)
        if value is not None:
            params[key] = value
    params.update({k: v for k, v in overrides.items() if not k.startswith("hydra")})
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
        "metrics": _with_gains(metrics),
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
        summary = {k: v for k, v in dict(run.summary).items() if isinstance(v, (int, float)) and "/" in k}
        rows.append(
            {
                "run": run.name,
                "group": group,
                "path": run.url,
                "params": params,
                "metrics": _with_gains(summary),
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


def swept_params(rows: list[dict[str, Any]]) -> list[str]:
    """The parameters whose value differs between runs: the ones to compare them by."""
    keys: list[str] = []
    for row in rows:
        keys += [k for k in row["params"] if k not in keys]
    return [k for k in keys if len({json.dumps(r["params"].get(k)) for r in rows}) > 1]


def recall_ks(rows: list[dict[str, Any]]) -> list[int]:
    prefix = f"{RERANKED}/R@"
    ks = {int(k[len(prefix) :]) for r in rows for k in r["metrics"] if k.startswith(prefix)}
    return sorted(ks)


def stages(rows: list[dict[str, Any]]) -> list[str]:
    names: list[str] = []
    for row in rows:
        names += [
            k[5:]
            for k in row["metrics"]
            if k.startswith("time/") and k != "time/total" and k[5:] not in names
        ]
    return names


def columns(rows: list[dict[str, Any]]) -> list[str]:
    """Table columns: run, swept parameters, the other parameters, recall and gains, costs, stage times."""
    swept = swept_params(rows)
    others: list[str] = []
    for row in rows:
        others += [k for k in row["params"] if k not in swept and k not in others]
    metric_cols = [f"{p}/R@{k}" for p in (BASE, RERANKED, "gain") for k in recall_ks(rows)]
    cost_cols = ["calls/computed", "calls/cached", "time/total"]
    return ["run", "group", *swept, *others, *metric_cols, *cost_cols, *(f"time/{s}" for s in stages(rows))]


def flat(row: dict[str, Any]) -> dict[str, Any]:
    return {"run": row["run"], "group": row["group"], **row["params"], **row["metrics"]}


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    cols = columns(rows)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow(flat(row))


# -- plots ---------------------------------------------------------------------------------------------------
def _figure(figsize: tuple[float, float]):
    # A bare Figure (matplotlib's Agg canvas) rather than pyplot: no global backend or figure state, so a
    # notebook that calls these keeps its own inline backend, and servers need no display.
    from matplotlib.figure import Figure

    return Figure(figsize=figsize)


def plain(text: str) -> str:
    """User text (override values, run names) as matplotlib draws it literally: a `$` would start mathtext
    (`$\\frac$` stops the plot with a parse error), and a legend hides labels that start with `_`."""
    text = text.replace("$", r"\$")
    return " " + text if text.startswith("_") else text


def _label(params: dict[str, Any], keys: Sequence[str]) -> str:
    return plain(", ".join(f"{k}={params.get(k)}" for k in keys) or "runs")


def plot_recall_vs_alpha(rows: list[dict[str, Any]], path: Path) -> Figure | None:
    """R@K against the fusion weight, one line per questions.num (and per value of the other swept
    parameters), one panel per K; the backbone's R@K dashed. Saved to `path` and returned; None (no file)
    without fusion.alpha values."""
    rows = [r for r in rows if isinstance(r["params"].get("fusion.alpha"), (int, float))]
    if not rows:
        return None
    ks = recall_ks(rows)
    line_keys = [k for k in swept_params(rows) if k != "fusion.alpha"]
    if "questions.num" not in line_keys and "questions.num" in rows[0]["params"]:
        line_keys.insert(0, "questions.num")
    lines: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        lines.setdefault(_label(row["params"], line_keys), []).append(row)
    fig = _figure((4.2 * len(ks), 3.6))
    axes = fig.subplots(1, len(ks), squeeze=False)
    for ax, k in zip(axes[0], ks, strict=True):
        for label, members in lines.items():
            members = sorted(members, key=lambda r: r["params"]["fusion.alpha"])
            xs = [r["params"]["fusion.alpha"] for r in members]
            line = ax.plot(
                xs, [r["metrics"].get(f"{RERANKED}/R@{k}", math.nan) for r in members], "o-", label=label
            )
            ax.plot(
                xs,
                [r["metrics"].get(f"base/R@{k}", math.nan) for r in members],
                "--",
                color=line[0].get_color(),
                alpha=0.5,
            )
        ax.set_title(f"R@{k} (dashed: backbone)")
        ax.set_xlabel("fusion weight alpha")
        ax.set_ylabel(f"R@{k} (%)")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return fig


def plot_gain(rows: list[dict[str, Any]], path: Path) -> Figure | None:
    """VISA's gain over the backbone (R@K points) per run, one bar per K."""
    ks = recall_ks(rows)
    if not ks:
        return None
    fig = _figure((max(5.0, 0.5 * len(rows) * len(ks)), 3.6))
    ax = fig.subplots()
    width = 0.8 / len(ks)
    for i, k in enumerate(ks):
        xs = [j + i * width for j in range(len(rows))]
        ax.bar(xs, [r["metrics"].get(f"gain/R@{k}", math.nan) for r in rows], width, label=f"R@{k}")
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(rows))])
    ax.set_xticklabels([plain(r["run"]) for r in rows], rotation=60, ha="right", fontsize=7)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_ylabel("VISA - backbone (points)")
    ax.set_title("VISA gain over the backbone")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return fig


def plot_stage_time(rows: list[dict[str, Any]], path: Path) -> Figure | None:
    """Seconds per stage per run, stacked: where the time goes, and what the cache saved."""
    names = stages(rows)
    if not names:
        return None
    fig = _figure((7.5, max(2.5, 0.3 * len(rows) + 1.2)))
    ax = fig.subplots()
    left = [0.0] * len(rows)
    for name in names:
        widths = [float(r["metrics"].get(f"time/{name}", 0.0)) for r in rows]
        ax.barh(range(len(rows)), widths, left=left, label=name)
        left = [a + b for a, b in zip(left, widths, strict=True)]
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([plain(r["run"]) for r in rows], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("seconds")
    ax.set_title("time per stage")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return fig


PLOTS = (
    ("recall_vs_alpha.png", "R@K against the fusion weight", plot_recall_vs_alpha),
    ("gain.png", "VISA gain over the backbone", plot_gain),
    ("stage_time.png", "Time per stage", plot_stage_time),
)


# -- outputs -------------------------------------------------------------------------------------------------
def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.2f}" if not math.isnan(value) else ""
    return str(value)


def write_html(rows: list[dict[str, Any]], plots: list[tuple[str, str]], path: Path) -> None:
    cols = columns(rows)
    swept = set(swept_params(rows))
    head = "".join(f'<th class="{"swept" if c in swept else ""}">{html.escape(c)}</th>' for c in cols)
    body = "\n".join(
        "<tr>" + "".join(f"<td>{html.escape(_fmt(flat(r).get(c)))}</td>" for c in cols) + "</tr>"
        for r in rows
    )
    figures = "\n".join(
        f'<figure><img src="{html.escape(f)}" alt="{html.escape(t)}">'
        f"<figcaption>{html.escape(t)}</figcaption></figure>"
        for f, t in plots
    )
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>VISA runs</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; }}
table {{ border-collapse: collapse; font-size: 12px; }}
th, td {{ border: 1px solid #ccc; padding: 2px 6px; text-align: right; }}
th.swept {{ background: #ffe9b3; }}
figure {{ display: inline-block; margin: 1em; }}
img {{ max-width: 100%; }}
#status.bad {{ color: #b00; font-weight: bold; }}
</style></head>
<body>
<h1>VISA runs</h1>
<p id="summary">{len(rows)} runs; swept parameters (highlighted):
{html.escape(", ".join(sorted(swept)) or "none")}.
Data: <a href="runs.csv">runs.csv</a>.</p>
<p id="status"></p>
<table id="runs"><thead><tr>{head}</tr></thead>
<tbody>
{body}
</tbody></table>
<h2>Plots</h2>
{figures}
<script>
// Say on the page whether every plot loaded (a moved or missing PNG shows up here, not as a silent gap).
window.addEventListener("load", () => {{
  const images = Array.from(document.images);
  const ok = images.filter((img) => img.complete && img.naturalWidth > 0).length;
  document.body.dataset.imagesLoaded = ok + "/" + images.length;
  const status = document.getElementById("status");
  status.textContent = ok === images.length ? "" : "missing plots: " + (images.length - ok);
  if (ok !== images.length) status.className = "bad";
}});
</script>
</body></html>
"""
    path.write_text(page, encoding="utf-8")


def write_ledger(rows: list[dict[str, Any]], path: Path, command: str) -> None:
    """A Markdown table of the runs (swept parameters, recall before and after VISA, cost) for the repo."""
    swept = swept_params(rows)
    shown = [k for k in ("dataset", "backbone", "scorer") if any(k in r["params"] for r in rows)]
    shown += [k for k in swept if k not in shown]
    ks = recall_ks(rows)
    cols = [
        "run",
        *shown,
        "backbone R@" + "/".join(map(str, ks)),
        "+ VISA R@" + "/".join(map(str, ks)),
        "calls computed",
        "time (s)",
    ]
    lines = [
        "<!-- Generated by `python -m visa.compare`; edit the runs, not this table. -->",
        f"Regenerate: `{command}`",
        "",
        "| " + " | ".join(cols) + " |",
        "|" + "---|" * len(cols),
    ]
    for r in rows:
        m = r["metrics"]
        cells = [r["run"], *(_fmt(r["params"].get(k)) for k in shown)]
        cells += [" / ".join(_fmt(m.get(f"{p}/R@{k}")) for k in ks) for p in (BASE, RERANKED)]
        cells += [_fmt(m.get("calls/computed")), _fmt(m.get("time/total"))]
        # a cell is text, never markup: Markdown renderers take raw HTML (<img>, <details>) and pipes
        lines.append("| " + " | ".join(html.escape(c, quote=False).replace("|", "\\|") for c in cells) + " |")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def compare(sources: Sequence[str | Path], out: Path) -> list[dict[str, Any]]:
    """Read the runs and write index.html, the PNG plots and runs.csv into `out`; returns the rows."""
    rows = load_runs(sources)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(rows, out / "runs.csv")
    plots = [(name, title) for name, title, plot in PLOTS if plot(rows, out / name) is not None]
    write_html(rows, plots, out / "index.html")
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m visa.compare", description=__doc__.splitlines()[0])
    parser.add_argument(
        "sources", nargs="+", help="run folders, multirun folders, or wandb:ENTITY/PROJECT/GROUP"
    )
    parser.add_argument(
        "--out", type=Path, default=Path("compare"), help="output folder (default: ./compare)"
    )
    parser.add_argument("--ledger", type=Path, help="also write a Markdown table of the runs to this file")
    args = parser.parse_args(argv)
    try:
        rows = compare(args.sources, args.out)
        if args.ledger:
            sources = " ".join(map(str, args.sources))
            command = f"python -m visa.compare {sources} --out {args.out} --ledger {args.ledger}"
            write_ledger(rows, args.ledger, command)
    except VisaError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"{len(rows)} runs -> {args.out / 'index.html'}" + (f", {args.ledger}" if args.ledger else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
