"""Reports comparing finished runs (`python -m visa.compare`), split by job: `runs` finds and reads runs and
says what tells them apart, `table` writes the comparison page and runs.csv, `plots` the figures (quality
against cost first), `queries` the per-query pages with thumbnails. `build` runs them all into one folder;
a notebook can call each step on its own."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from visa.core.errors import VisaError
from visa.report.page import esc
from visa.report.plots import PLOTS
from visa.report.queries import (
    PER_PAGE,
    Gallery,
    Thumbnails,
    run_folder_name,
    write_pair_pages,
    write_run_pages,
)
from visa.report.runs import labels, load_runs, swept_params
from visa.report.table import write_csv, write_html


def build(
    sources: Sequence[str | Path], out: Path, queries: bool = True, per_page: int = PER_PAGE
) -> list[dict[str, Any]]:
    """Read the runs and write into `out`: index.html (the comparison page), the plots as PNG, runs.csv, and
    with `queries` the per-query pages of every run that has a results file (queries/<run>/) and, for
    exactly two runs, the two side by side (queries/A-vs-B/). Returns the rows."""
    rows = load_runs(sources)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(rows, out / "runs.csv")
    plots, notes = [], []
    for name, title, plot, caption in PLOTS:
        if plot(rows, out / name) is not None:
            plots.append((name, title, caption(rows) if caption else ""))
        elif caption is not None:  # say why a plot that explains itself is missing
            notes.append(
                f'<p class="muted" id="no-{esc(name.split(".")[0])}">{esc(title)}: {esc(caption(rows))}</p>'
            )
    names = labels(rows)
    pages: dict[int, str] = {}
    extra = ""
    if queries:
        thumbs, gallery = Thumbnails(out / "thumbs"), Gallery()
        counts = {}
        for i, (row, name) in enumerate(zip(rows, names, strict=True)):
            if row.get("results"):
                folder = out / "queries" / run_folder_name(row["run"])
                try:
                    counts[i] = write_run_pages(
                        row, name, folder, thumbs, gallery, "../../index.html", per_page
                    )
                except VisaError as e:  # one run's bad results file leaves the others' pages
                    notes.append(f'<p class="banner">Queries of {esc(row["run"])}: {esc(e)}</p>')
                    continue
                pages[i] = f"queries/{folder.name}/index.html"
        if len(rows) == 2 and len(counts) == 2:
            keys = swept_params(rows)
            pair = (names[0], names[1]) if keys and names[0] != names[1] else (rows[0]["run"], rows[1]["run"])
            folder = out / "queries" / "A-vs-B"
            result = write_pair_pages(
                (rows[0], rows[1]), pair, folder, thumbs, gallery, "../../index.html", per_page
            )
            extra = (
                "<h2>The two runs side by side</h2>"
                f'<p><a id="pair" href="queries/A-vs-B/index.html">every query, '
                f"A against B</a>: A ranks the ground truth higher in {result['A-better']} queries, B in "
                f"{result['B-better']}, the same in {result['same']}.</p>"
            )
    write_html(rows, plots, out / "index.html", query_pages=pages, extra="".join(notes) + extra)
    return rows


__all__ = ["build"]
