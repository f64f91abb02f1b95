"""Compare finished runs: `python -m visa.compare DIR... [--out OUT] [--ledger FILE] [--no-queries]`.

A DIR is a run folder (it holds metrics.json), a Hydra multirun folder, or any folder above them; every run
found under it is read. `wandb:ENTITY/PROJECT/GROUP` reads the runs of a W&B group instead (needs the API).
Writes to OUT: index.html (the runs named by the settings that differ, every metric family, sortable, and
the plots: quality against cost first), the plots as PNG, runs.csv, and the per-query pages of each run
(queries/<run>/: the backbone's and the re-ranked top-K as thumbnails, helped / hurt / unchanged); given
exactly two runs, also the two side by side (queries/A-vs-B/). With --ledger, also a Markdown table of the
runs (the results ledger, e.g. experiments/results.md).

The work is done by `visa.report` (runs, table, plots, queries); the names below are kept here so that a
notebook can call each step: `compare.load_runs(...)`, `compare.plot_pareto(rows, path)`, ...
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from visa.core.errors import VisaError
from visa.report import build
from visa.report.plots import (
    PLOTS,
    cost_axis,
    pareto_caption,
    pareto_front,
    plain,
    plot_gain,
    plot_pareto,
    plot_recall_vs_alpha,
    plot_stage_time,
    primary_metric,
)
from visa.report.queries import PER_PAGE, query_summary, write_pair_pages, write_run_pages
from visa.report.runs import (
    KEY_SETTINGS,
    SETTING_GROUPS,
    common_params,
    digest_conflicts,
    find_run_dirs,
    labels,
    load_run,
    load_runs,
    load_wandb_group,
    recall_ks,
    stages,
    swept_params,
)
from visa.report.table import columns, flat, metric_columns, write_csv, write_html, write_ledger

__all__ = [
    "KEY_SETTINGS",
    "SETTING_GROUPS",
    "PLOTS",
    "columns",
    "common_params",
    "compare",
    "cost_axis",
    "digest_conflicts",
    "find_run_dirs",
    "flat",
    "labels",
    "load_run",
    "load_runs",
    "load_wandb_group",
    "main",
    "metric_columns",
    "pareto_caption",
    "pareto_front",
    "plain",
    "plot_gain",
    "plot_pareto",
    "plot_recall_vs_alpha",
    "plot_stage_time",
    "primary_metric",
    "query_summary",
    "recall_ks",
    "stages",
    "swept_params",
    "write_csv",
    "write_html",
    "write_ledger",
    "write_pair_pages",
    "write_run_pages",
]


def compare(
    sources: Sequence[str | Path], out: Path, queries: bool = True, per_page: int = PER_PAGE
) -> list[dict[str, Any]]:
    """Read the runs and write the report into `out` (see the module's docstring); returns the rows."""
    return build(sources, Path(out), queries=queries, per_page=per_page)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m visa.compare", description=__doc__.splitlines()[0])
    parser.add_argument(
        "sources", nargs="+", help="run folders, multirun folders, or wandb:ENTITY/PROJECT/GROUP"
    )
    parser.add_argument(
        "--out", type=Path, default=Path("compare"), help="output folder (default: ./compare)"
    )
    parser.add_argument("--ledger", type=Path, help="also write a Markdown table of the runs to this file")
    parser.add_argument(
        "--no-queries", action="store_true", help="skip the per-query pages (only the table and plots)"
    )
    parser.add_argument(
        "--per-page", type=int, default=PER_PAGE, help=f"queries per page (default: {PER_PAGE})"
    )
    args = parser.parse_args(argv)
    if args.per_page < 1:
        parser.error(f"--per-page={args.per_page} must be at least 1")
    try:
        rows = compare(args.sources, args.out, queries=not args.no_queries, per_page=args.per_page)
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
