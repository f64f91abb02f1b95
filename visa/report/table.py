"""The comparison table: which metric columns the runs call for (grouped by family), runs.csv, the
comparison page (index.html) and the Markdown ledger."""

from __future__ import annotations

import csv
import html
import re
from pathlib import Path
from typing import Any

from visa.report.page import document, esc, number
from visa.report.runs import common_params, digest_conflicts, labels, recall_ks, show, swept_params

ORDERS = (("base", "backbone"), ("rerank", "re-ranked"), ("gain", "gain"))
# Metric names of one order, by family, in the order the table shows them.
FAMILIES = (
    ("Recall", re.compile(r"R@(\d+)")),
    ("Ranking", re.compile(r"(mAP|nDCG)@(\d+)|MRR")),
    ("CIRR subset recall", re.compile(r"R_subset@(\d+)")),
)
# Per-query cost (written with the `reranker` group) and what the run as a whole cost.
COST_PER_QUERY = (
    ("cost/per_query/seconds", "s"),
    ("cost/per_query/calls", "calls"),
    ("cost/per_query/tokens", "tokens"),
)
RUN_COST = (("calls/computed", "computed"), ("calls/cached", "cached"), ("time/total", "time s"))
QUESTIONS = (("questions/fallback_share", "fallback %"),)


NAME_ORDER = {"R": 0, "R_subset": 1, "mAP": 2, "nDCG": 3, "MRR": 4}


def _name_key(name: str) -> tuple:
    """R@1 < R@5 < R@10; mAP@50 < nDCG@50 < MRR; any other name after them, by its text."""
    match = re.fullmatch(r"([A-Za-z_]+)(?:@(\d+))?", name)
    if match is None:
        return (len(NAME_ORDER), name, 0)
    return (NAME_ORDER.get(match.group(1), len(NAME_ORDER)), match.group(1), int(match.group(2) or 0))


def metric_columns(rows: list[dict[str, Any]]) -> list[tuple[str, list[tuple[str, str]]]]:
    """The table's metric columns as families: [(family title, [(metric key, short header), ...]), ...];
    a family appears when any run wrote one of its keys."""
    keys = {k for r in rows for k in r["metrics"]}
    families: list[tuple[str, list[tuple[str, str]]]] = []
    for title, pattern in FAMILIES:
        for prefix, order in ORDERS:
            found = {k.split("/", 1)[1] for k in keys if k.startswith(prefix + "/")}
            names = sorted((n for n in found if pattern.fullmatch(n)), key=_name_key)
            if names:
                families.append((f"{title} · {order}", [(f"{prefix}/{n}", n) for n in names]))
    # Per gallery part (FashionIQ's categories): the re-ranked recall of each
    per_group = sorted(
        (m.group(1), m.group(2))
        for k in keys
        if (m := re.fullmatch(r"([^/]+)/rerank/(R@\d+)", k)) and m.group(1) not in ("base", "gain", "visa")
    )
    if per_group:
        cols = [
            (f"{g}/rerank/{n}", f"{g} {n}")
            for g, n in sorted(per_group, key=lambda p: (_name_key(p[1]), p[0]))
        ]
        families.append(("Per category · re-ranked", cols))
    for title, spec in (("Questions", QUESTIONS), ("Cost per query", COST_PER_QUERY), ("Run cost", RUN_COST)):
        cols = [(k, h) for k, h in spec if k in keys]
        if cols:
            families.append((title, cols))
    return families


def split_constant(
    rows: list[dict[str, Any]], families: list[tuple[str, list[tuple[str, str]]]]
) -> tuple[list[tuple[str, list[tuple[str, str]]]], list[tuple[str, list[tuple[str, Any]]]]]:
    """(families of the columns whose value differs between runs, families of the ones every run has with
    one value): the latter are shown once above the table, like the settings every run shares (a fusion
    sweep's backbone recall, say), which leaves the width to what tells runs apart. One run: all columns."""
    if len(rows) < 2:
        return families, []
    varying, constant = [], []
    for title, cols in families:
        keep, same = [], []
        for key, header in cols:
            values = [r["metrics"].get(key) for r in rows]
            if values[0] is not None and all(v == values[0] for v in values):
                same.append((header, values[0]))
            else:
                keep.append((key, header))
        if keep:
            varying.append((title, keep))
        if same:
            constant.append((title, same))
    return varying, constant


def _lower_is_better(key: str) -> bool:
    return key.startswith(("cost/", "calls/computed", "time/", "questions/fallback"))


# -- runs.csv -----------------------------------------------------------------------------------------------
def columns(rows: list[dict[str, Any]]) -> list[str]:
    """The columns of `flat` rows: run, group, the settings that differ, the others, the digest, the
    table's metrics, then every other metric (per stage calls, times and costs). runs.csv adds `label`."""
    swept = swept_params(rows)
    others: list[str] = []
    for row in rows:
        others += [k for k in row["params"] if k not in swept and k not in others]
    shown = [k for _, cols in metric_columns(rows) for k, _ in cols]
    rest = sorted({k for r in rows for k in r["metrics"]} - set(shown))
    return ["run", "group", *swept, *others, "results/digest", *shown, *rest]


def flat(row: dict[str, Any]) -> dict[str, Any]:
    """A row as one flat mapping of column to value (runs.csv, a pandas DataFrame)."""
    return {
        "run": row["run"],
        "group": row["group"],
        **row["params"],
        **row["metrics"],
        "results/digest": row.get("digest"),
    }


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    cols = [*columns(rows), "label"]
    names = labels(rows)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        writer.writeheader()
        for row, label in zip(rows, names, strict=True):
            writer.writerow({**flat(row), "label": label})


# -- index.html ----------------------------------------------------------------------------------------------
TABLE_STYLE = """
.common { white-space: nowrap; overflow: hidden; text-overflow: ellipsis; cursor: pointer; margin: 4px 0; }
.common.open { white-space: normal; }
.top { display: flex; flex-wrap: wrap; gap: 16px; align-items: flex-start; }
.tablewrap { overflow-x: auto; max-width: 100%; min-width: 0; }
.top figure { flex: 1 1 540px; max-width: 820px; }
table.runs { border-collapse: collapse; font-size: 12px; font-variant-numeric: tabular-nums; }
table.runs th, table.runs td { border-bottom: 1px solid var(--line); padding: 3px 4px; text-align: right; }
table.runs thead th { background: #f1f4f7; font-weight: 600; }
table.runs tr.family th { background: #e4eaf0; text-align: center; border-left: 2px solid #fff;
                          font-weight: 600; color: #33404d; white-space: normal; }
table.runs th.first, table.runs td.first { border-left: 2px solid var(--line); }
table.runs th[data-key] { cursor: pointer; user-select: none; }
table.runs th[aria-sort="ascending"]::after { content: " \\25B2"; font-size: 9px; }
table.runs th[aria-sort="descending"]::after { content: " \\25BC"; font-size: 9px; }
table.runs td.run, table.runs th.run { text-align: left; min-width: 150px; max-width: 300px; }
table.runs tbody tr:hover { background: #f6f9fc; }
td.run .kv { white-space: nowrap; } td.run .kv b { font-weight: 600; }
td.run .dir { color: var(--muted); font-size: 11px; margin-left: 4px; }
td.run .flag { color: var(--bad); font-weight: bold; cursor: help; }
td.best { font-weight: 700; }
td.pos { color: var(--good); } td.neg { color: var(--bad); }
table.runs thead th.run { white-space: normal; }
th.run .sorters button { font-size: 11px; padding: 0 6px; margin: 1px 2px 1px 0; font-weight: normal; }
.plots { display: flex; flex-wrap: wrap; gap: 12px; }
figure { margin: 0; max-width: 100%; }
figure img { max-width: 100%; height: auto; border: 1px solid var(--line); }
figcaption { color: var(--muted); max-width: 900px; }
"""

TABLE_SCRIPT = r"""
const table = document.getElementById("runs");
const tbody = table.tBodies[0];
function valueOf(tr, th) {
  const cell = tr.cells[+th.dataset.col];
  const v = th.dataset.attr ? cell.getAttribute(th.dataset.attr) : cell.dataset.v;
  return v === null || v === undefined ? "" : v;
}
function compare(a, b) {
  const x = parseFloat(a), y = parseFloat(b);
  if (a !== "" && b !== "" && isFinite(a) && isFinite(b)) return x - y;
  return a.localeCompare(b, undefined, {numeric: true});
}
function sortBy(th, descending) {
  const rows = Array.from(tbody.rows);
  rows.sort((r, s) => {
    const a = valueOf(r, th), b = valueOf(s, th);
    if (a === "" || b === "") return (a === "") - (b === "");  // runs without the value last
    return descending ? compare(b, a) : compare(a, b);
  });
  rows.forEach((r) => tbody.appendChild(r));
  table.querySelectorAll("[aria-sort]").forEach((h) => h.removeAttribute("aria-sort"));
  th.setAttribute("aria-sort", descending ? "descending" : "ascending");
  document.body.dataset.order = rows.map((r) => r.cells[0].dataset.run).join(",");
  document.body.dataset.sortedBy = th.dataset.key + (descending ? ":desc" : ":asc");
}
table.querySelectorAll("[data-key]").forEach((th) => th.addEventListener("click", (e) => {
  e.stopPropagation();
  const state = th.getAttribute("aria-sort");
  sortBy(th, state ? state === "ascending" : th.dataset.first === "desc");
}));
document.querySelectorAll(".common").forEach((p) => p.addEventListener("click", () => {
  p.classList.toggle("open");
}));
// #sort=KEY or #sort=KEY:desc opens the page sorted (a link that keeps a view; the tests use it too)
function sortFromHash() {
  const m = /sort=([^&]+)/.exec(decodeURIComponent(location.hash));
  if (!m) return;
  const [key, dir] = m[1].split(/:(?=asc$|desc$)/);
  const th = Array.from(table.querySelectorAll("[data-key]")).find((h) => h.dataset.key === key);
  if (th) sortBy(th, dir === "desc");
}
sortFromHash();
window.addEventListener("hashchange", sortFromHash);
// What a person sees, written on the page for checks: whether it scrolls sideways, every label shown, plots
window.addEventListener("load", () => {
  const images = Array.from(document.images);
  const ok = images.filter((img) => img.complete && img.naturalWidth > 0).length;
  const d = document.body.dataset;
  d.imagesLoaded = ok + "/" + images.length;
  d.pageWidth = document.documentElement.scrollWidth;
  d.viewWidth = window.innerWidth;
  const wrap = document.querySelector(".tablewrap");
  d.tableFits = wrap.scrollWidth <= wrap.clientWidth ? "yes" : "no";
  const labels = Array.from(document.querySelectorAll("td.run .label"));
  const seen = labels.filter((l) => { const r = l.getBoundingClientRect();
    return r.width > 0 && r.height > 0 && r.left >= 0 && r.right <= window.innerWidth; });
  d.labelsVisible = seen.length + "/" + labels.length;
  d.order = Array.from(tbody.rows).map((r) => r.cells[0].dataset.run).join(",");
  const status = document.getElementById("status");
  if (ok !== images.length) {
    status.textContent = "missing plots: " + (images.length - ok);
    status.className = "banner bad";
  }
});
"""


def _sort_value(value: Any) -> str:
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, (int, float)):
        return repr(value)
    return show(value) if value is not None else ""


def _cells(rows: list[dict[str, Any]], key: str, first: bool) -> list[str]:
    """One column's <td>s: its value (gains signed and coloured), the best run's in bold; `first`: the
    first column of its family (a rule on its left)."""
    values = [r["metrics"].get(key) for r in rows]
    present = [v for v in values if isinstance(v, (int, float))]
    best = None
    if len(set(present)) > 1:
        best = min(present) if _lower_is_better(key) else max(present)
    gain = key.split("/")[-2:-1] == ["gain"]
    out = []
    for v in values:
        classes = ["first"] if first else []
        if best is not None and v == best:
            classes.append("best")
        if gain and isinstance(v, (int, float)) and v != 0:
            classes.append("pos" if v > 0 else "neg")
        cls = f' class="{" ".join(classes)}"' if classes else ""
        text = f"{v:+.1f}" if gain and isinstance(v, float) else number(v, signed=gain)
        out.append(f'<td data-v="{_sort_value(v)}"{cls}>{esc(text)}</td>')
    return out


def _breakable(header: str) -> str:
    """A column header that may wrap before `@` and after a space (`nDCG` over `@50`) when the page is
    narrow, and stays on one line when it is not."""
    return "<wbr>@".join(esc(p) for p in header.split("@"))


def _header_key(text: str) -> str:
    """A setting's name with break points after dots, so a long one wraps instead of widening the page."""
    return "<wbr>.".join(esc(p) for p in text.split("."))


def write_html(
    rows: list[dict[str, Any]],
    plots: list[tuple[str, str, str]],
    path: Path,
    title: str | None = None,
    query_pages: dict[int, str] | None = None,
    extra: str = "",
) -> None:
    """The comparison page: the runs named by what differs between them, the shared settings in one line,
    every metric family any run wrote (sortable), then the plots ((file, title, caption) each).
    `query_pages` maps a row's position to its per-query pages (a link in its cell)."""
    query_pages = query_pages or {}
    groups = {Path(r["group"]).name for r in rows if r["group"]}
    if title is None:  # the sweep's folder names the page: several sweeps open side by side stay apart
        title = f"Runs of {groups.pop()}" if len(groups) == 1 else "VISA runs"
    swept = swept_params(rows)
    common = common_params(rows)
    names = labels(rows)
    families, constant = split_constant(rows, metric_columns(rows))
    conflicts = digest_conflicts(rows)
    flagged = {i: members for members in conflicts for i in members}

    # the header: a row of families over a row of sortable columns
    sorters = "".join(
        f'<button data-key="setting:{esc(k)}" data-col="0" data-attr="data-s{j}" '
        f'title="sort by {esc(k)}">{_header_key(k)}</button>'
        for j, k in enumerate(swept)
    )
    sort_line = f'<div class="sorters">sort by {sorters}</div>' if swept else ""
    fam_row = '<th class="run"></th>' + "".join(
        f'<th colspan="{len(cols)}" class="first">{esc(title)}</th>' for title, cols in families
    )
    col_heads = [
        f'<th class="run" data-key="run" data-col="0" data-v="">run{" · " if swept else ""}'
        f"{'settings that differ' if swept else ''}{sort_line}</th>"
    ]
    col = 1
    for _, cols in families:
        for n, (key, header) in enumerate(cols):
            first = "desc" if not _lower_is_better(key) else "asc"
            cls = ' class="first"' if n == 0 else ""
            col_heads.append(
                f'<th{cls} data-key="{esc(key)}" data-col="{col}" data-first="{first}" title="{esc(key)}">'
                f"{_breakable(header)}</th>"
            )
            col += 1

    # the body: one row per run (a plain "<tr>": its folder sits on the run cell, for checks and sorting)
    columns_cells = [_cells(rows, key, n == 0) for _, cols in families for n, (key, _) in enumerate(cols)]
    body = []
    for i, (row, name) in enumerate(zip(rows, names, strict=True)):
        attrs = "".join(f' data-s{j}="{esc(_sort_value(row["params"].get(k)))}"' for j, k in enumerate(swept))
        if swept:
            pairs = " · ".join(
                f'<span class="kv">{esc(k)}=<b>{esc(show(row["params"].get(k)))}</b></span>' for k in swept
            )
            bits = f'<span class="dir" title="{esc(row["path"])}">{esc(row["run"])}</span>'
        else:
            pairs, bits = f'<span class="kv"><b>{esc(row["run"])}</b></span>', ""
        if i in query_pages:
            bits += f' <a class="dir" href="{esc(query_pages[i])}">queries&nbsp;›</a>'
        if i in flagged:
            others = ", ".join(rows[j]["run"] for j in flagged[i] if j != i)
            bits += (
                f' <span class="flag" title="same settings as {esc(others)}, but different rankings '
                f'(results/digest {esc(row["digest"])})">⚠ differs</span>'
            )
        cells = [
            f'<td class="run" data-run="{esc(row["run"])}" data-v="{esc(name)}"{attrs}>'
            f'<span class="label">{pairs}</span>{bits}</td>'
        ]
        cells += [column[i] for column in columns_cells]
        body.append("<tr>" + "".join(cells) + "</tr>")

    common_text = " · ".join(f"{k}={show(v)}" for k, v in common.items())
    same_metrics = " · ".join(
        f"{title} " + ", ".join(f"{h} {number(v, signed=title.endswith('gain'))}" for h, v in values)
        for title, values in constant
    )
    same_line = (
        f'<p class="common" title="{esc(same_metrics)}"><b>Same result in every run:</b> '
        f"{esc(same_metrics)}</p>"
        if same_metrics
        else ""
    )
    sources = sorted({r["group"] for r in rows if r["group"]})
    where = f" from {esc(', '.join(sources))}" if sources else ""
    banner = ""
    if conflicts:
        flagged_runs = "; ".join(", ".join(rows[i]["run"] for i in members) for members in conflicts)
        banner = (
            '<p class="banner bad" id="digests">Same settings, different rankings (results/digest differs): '
            f"{esc(flagged_runs)}. A model that is not deterministic, or a cache or code that changed "
            "between them.</p>"
        )
    figures = [
        f'<figure><img src="{esc(f)}" alt="{esc(t)}">'
        f"<figcaption><b>{esc(t)}</b>. {esc(c)}</figcaption></figure>"
        for f, t, c in plots
    ]
    # the first plot (quality against cost) beside the table when both fit, below it when not
    beside = figures.pop(0) if figures else ""
    body_html = f"""<h1>{esc(title)}</h1>
<p id="summary" class="muted">{len(rows)} runs{where}. Differ: <b>{esc(", ".join(swept) or "nothing")}</b>.
Click a column to sort. Data: <a href="runs.csv">runs.csv</a>.</p>
<p class="common" title="{esc(common_text)}"><b>Same in every run:</b> {esc(common_text or "nothing")}</p>
{same_line}
{banner}
<p id="status"></p>
<div class="top"><div class="tablewrap"><table class="runs" id="runs"><thead>
<tr class="family">{fam_row}</tr>
<tr>{"".join(col_heads)}</tr>
</thead>
<tbody>
{chr(10).join(body)}
</tbody></table></div>
{beside}</div>
{extra}
{"<h2>More plots</h2>" if figures else ""}
<div class="plots">
{chr(10).join(figures)}
</div>"""
    path.write_text(document(title, body_html, TABLE_STYLE, TABLE_SCRIPT), encoding="utf-8")


# -- the Markdown ledger -------------------------------------------------------------------------------------
def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.2f}" if value == value else ""
    return str(value)


def write_ledger(rows: list[dict[str, Any]], path: Path, command: str) -> None:
    """A Markdown table of the runs (swept parameters, recall before and after re-ranking, cost)."""
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
        cells += [" / ".join(_fmt(m.get(f"{p}/R@{k}")) for k in ks) for p in ("base", "rerank")]
        cells += [_fmt(m.get("calls/computed")), _fmt(m.get("time/total"))]
        # a cell is text, never markup: Markdown renderers take raw HTML (<img>, <details>) and pipes
        lines.append("| " + " | ".join(html.escape(c, quote=False).replace("|", "\\|") for c in cells) + " |")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
