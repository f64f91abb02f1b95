"""Every query as pictures: for one run, pages of query blocks showing the query, its ground truth, the
backbone's top-K and the re-ranked top-K as thumbnails with their scores (the ground truth marked, a click
shows the candidate's passage and its answers), filtered by whether re-ranking helped, hurt or left the
ground truth's rank unchanged; for two runs the same side by side, where they disagree first.

The results file is read twice, one record at a time (never all at once): first for each query's ranks, then
to write the pages. Thumbnails are written once each, small, into the report's `thumbs/` folder; the
gallery's paths come from the run's own dataset config (`.hydra/config.yaml`)."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from collections.abc import Callable, Iterator
from itertools import zip_longest
from pathlib import Path
from typing import Any

from visa.core.errors import VisaError
from visa.data import Item
from visa.method.records import query_summary, rank_key, read_results, reranked_top, truth_rank
from visa.report.page import document, esc, number

PER_PAGE = 50
THUMB = 112  # px, the longer side
VIDEO_FRAMES = 3  # a video's thumbnail: a strip of this many frames


# -- gallery items and thumbnails ----------------------------------------------------------------------------
class Gallery:
    """Gallery items by id, from each run's dataset config; loaded once per distinct dataset config."""

    def __init__(self) -> None:
        self._loaded: dict[str, tuple[dict[str, Item], str]] = {}

    def items(self, run_dir: str | Path) -> tuple[dict[str, Item], str]:
        """({id: Item}, "") for a run, or ({}, why not) when its dataset cannot be loaded here (the files
        moved, another machine): the pages then name items without pictures."""
        config = Path(run_dir) / ".hydra" / "config.yaml"
        if not config.is_file():
            return {}, f"{config} is missing: the run's dataset is unknown"
        from omegaconf import DictConfig, OmegaConf

        cfg = OmegaConf.load(config)
        if not isinstance(cfg, DictConfig) or "dataset" not in cfg:
            return {}, f"{config} has no dataset"
        key = OmegaConf.to_yaml(cfg.dataset) + str(cfg.get("data_dir", ""))
        if key not in self._loaded:
            self._loaded[key] = self._load(cfg)
        return self._loaded[key]

    @staticmethod
    def _load(cfg: Any) -> tuple[dict[str, Item], str]:
        from hydra.utils import instantiate

        from visa.config import register

        register()  # the ${pkg:...} resolver the demo datasets' paths use
        try:
            dataset = instantiate(cfg.dataset, _convert_="all").load()
        except Exception as e:  # any failure means the same here: pictures are not available
            reason = str(getattr(e, "__cause__", None) or e).splitlines()[0]
            return {}, f"the run's dataset cannot be loaded here ({reason})"
        items = {item.id: item for item in dataset.gallery}
        for query in dataset.queries:
            if query.reference is not None:
                items.setdefault(query.reference.id, query.reference)
        return items, ""


class Thumbnails:
    """Small JPEG thumbnails in `folder`, written once per item (a video: a strip of frames)."""

    def __init__(self, folder: Path, size: int = THUMB):
        self.folder, self.size = folder, size
        self._done: dict[str, str | None] = {}

    def name(self, item: Item | None) -> str | None:
        """The thumbnail's file name in `folder` (written now if new); None for text items and unreadable
        media."""
        if item is None or item.kind == "text" or not item.path:
            return None
        key = f"{item.kind}:{item.path}"
        if key not in self._done:
            self._done[key] = self._write(item, hashlib.sha1(key.encode()).hexdigest()[:16] + ".jpg")
        return self._done[key]

    def _write(self, item: Item, name: str) -> str | None:
        target = self.folder / name
        if target.is_file():
            return name
        from PIL import Image

        try:
            if item.kind == "video":
                from visa.data.video import sample_uniform

                frames = sample_uniform(item.path, VIDEO_FRAMES)
                for frame in frames:
                    frame.thumbnail((self.size, self.size))
                strip = Image.new(
                    "RGB",
                    (sum(f.width for f in frames) + 2 * (len(frames) - 1), max(f.height for f in frames)),
                    "white",
                )
                x = 0
                for frame in frames:
                    strip.paste(frame, (x, 0))
                    x += frame.width + 2
                image = strip
                image.thumbnail((2 * self.size, self.size))
            else:
                from visa.data.media import load_image

                image = load_image(item.path)
                image.thumbnail((self.size, self.size))
        except (VisaError, OSError, ValueError):
            return None
        self.folder.mkdir(parents=True, exist_ok=True)
        image.convert("RGB").save(target, "JPEG", quality=82)
        return name


# -- one query -----------------------------------------------------------------------------------------------
def _rank_text(rank: int | None, depth: int) -> str:
    """A rank as shown: `3`, or `&gt;10` (escaped, ready for the page) when not in the top-K."""
    return str(rank) if rank is not None else f"&gt;{depth}"


class _Renderer:
    """Turns records into the HTML of a query section, with thumbnails relative to the page."""

    def __init__(self, items: dict[str, Item], thumbs: Thumbnails, prefix: str):
        self.items, self.thumbs, self.prefix = items, thumbs, prefix

    def picture(self, item_id: str, caption: str, gt: bool, detail: str | None, title: str = "") -> str:
        item = self.items.get(item_id)
        name = self.thumbs.name(item)
        if name is not None:
            video = ' class="video"' if item is not None and item.kind == "video" else ""
            inner = f'<img src="{esc(self.prefix + name)}" alt="{esc(item_id)}"{video}>'
        else:
            text = item.text if item is not None and item.text else item_id
            inner = f'<div class="ph">{esc(text[:140])}</div>'
        classes = "c gt" if gt else "c"
        data = f' data-d="{esc(detail)}" tabindex="0"' if detail else ""
        tip = f"{item_id}{' (ground truth)' if gt else ''}{' · ' + title if title else ''}"
        return (
            f'<figure class="{classes}"{data} title="{esc(tip)}">{inner}'
            f"<figcaption>{caption}</figcaption></figure>"
        )

    def strip(
        self, label: str, top: list[dict[str, Any]], truth: set[str], scores: str, detail: str, note: str = ""
    ) -> str:
        figures = []
        for rank, entry in enumerate(top, 1):
            score = entry.get(scores, entry.get("score"))
            caption = f"<b>{rank}</b> {esc(number(score) if isinstance(score, float) else score or '')}"
            title = " · ".join(f"{k} {entry[k]}" for k in ("score", "base", "text", "fused") if k in entry)
            figures.append(
                self.picture(entry["id"], caption, entry["id"] in truth, f"{detail}-{entry['id']}", title)
            )
        note_html = f'<span class="muted">{esc(note)}</span>' if note else ""
        return (
            f'<div class="rowlabel">{esc(label)}{note_html}</div>'
            f'<div class="strip">{"".join(figures) or "<span class=muted>(empty)</span>"}</div>'
        )

    def details(self, record: dict[str, Any], detail: str, *tops: list[dict[str, Any]]) -> str:
        """The hidden panels a click on a candidate opens: its scores, passage and answers; one per
        candidate, whichever of `tops` (the backbone's, the re-ranked) it is in."""
        questions = record.get("questions") or []
        candidates = {c["id"]: c for c in record.get("candidates") or []}
        merged: dict[str, dict[str, Any]] = {}
        for top in tops:
            for entry in top:
                merged.setdefault(entry["id"], {}).update(entry)
        panels = []
        for entry in merged.values():
            cand = candidates.get(entry["id"], {})
            scores = " · ".join(f"{k} {entry[k]}" for k in ("score", "base", "text", "fused") if k in entry)
            answers = cand.get("answers") or []
            pairs = "".join(
                f"<li><span class=q>{esc(q)}</span> → <span class=a>{esc(a)}</span></li>"
                for q, a in zip(questions, answers, strict=False)
            )
            extra = "".join(f"<li>{esc(a)}</li>" for a in answers[len(questions) :])
            item = self.items.get(entry["id"])
            item_text = f"<p><b>item text:</b> {esc(item.text)}</p>" if item is not None and item.text else ""
            panels.append(
                f'<div class="cand" id="{esc(detail)}-{esc(entry["id"])}" hidden>'
                f"<p><b>{esc(entry['id'])}</b> <span class=muted>{esc(scores)}</span></p>{item_text}"
                f"<p><b>passage the re-ranker scored:</b> {esc(cand.get('passage', '–'))}</p>"
                + (f"<ol>{pairs}{extra}</ol>" if pairs or extra else "<p class=muted>no answers</p>")
                + "</div>"
            )
        return "".join(panels)

    def header(self, record: dict[str, Any], badge: str) -> str:
        questions = record.get("questions") or []
        qs = (
            f'<div class="questions"><b>questions:</b> {" · ".join(esc(q) for q in questions)}</div>'
            if questions
            else ""
        )
        return (
            f'<div class="qhead"><span class="qn">#{record["index"]}</span> '
            f'<span class="qtext">{esc(record.get("query", ""))}</span> {badge}</div>{qs}'
        )

    def truth(self, record: dict[str, Any]) -> str:
        pictures = []
        if record.get("reference"):
            pictures.append(self.picture(record["reference"], "reference", False, None))
        for item_id in record.get("ground_truth") or []:
            pictures.append(self.picture(item_id, "ground truth", True, None))
        return f'<div class="truth">{"".join(pictures)}</div>'


def _badge(before: int | None, after: int | None, depth: int, status: str) -> str:
    return (
        f'<span class="badge {status}">ground truth {_rank_text(before, depth)} → '
        f"{_rank_text(after, depth)} · {status}</span>"
    )


def run_section(record: dict[str, Any], renderer: _Renderer) -> tuple[dict[str, Any], str]:
    """One query of one run: (its summary, its <section>)."""
    s = query_summary(record)
    truth = set(record.get("ground_truth") or [])
    d = f"d{record['index']}"
    reranked = reranked_top(record)
    body = (
        renderer.header(record, _badge(s["before"], s["after"], s["depth"], s["status"]))
        + '<div class="qbody">'
        + renderer.truth(record)
        + '<div class="lists">'
        + renderer.strip("backbone", record.get("base_top") or [], truth, "score", d)
        + renderer.strip("re-ranked", reranked, truth, "fused", d, " (fused score)")
        + "</div></div>"
        + renderer.details(record, d, record.get("base_top") or [], reranked)
    )
    html_ = (
        f'<section class="q" id="q{record["index"]}" data-status="{s["status"]}" '
        f'data-change="{s["change"]}" data-index="{record["index"]}">{body}</section>'
    )
    return s, html_


def pair_summary(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Two runs' records of one query: the ground truth's rank in each re-ranked list, which run ranks it
    higher (`A better`, `B better`, `same`), and whether their top-K lists differ at all."""
    truth = set(a.get("ground_truth") or [])
    ta, tb = reranked_top(a), reranked_top(b)
    depth = max(len(ta), len(tb))
    ra, rb = truth_rank(ta, truth), truth_rank(tb, truth)
    change = rank_key(rb, depth) - rank_key(ra, depth)  # > 0: A ranks the ground truth higher
    status = "A-better" if change > 0 else "B-better" if change < 0 else "same"
    differ = [e["id"] for e in ta] != [e["id"] for e in tb]
    return {
        "index": a["index"],
        "a": ra,
        "b": rb,
        "depth": depth,
        "change": change,
        "status": status,
        "differ": differ,
    }


def pair_section(
    a: dict[str, Any], b: dict[str, Any], names: tuple[str, str], renderer: _Renderer
) -> tuple[dict[str, Any], str]:
    s = pair_summary(a, b)
    truth = set(a.get("ground_truth") or [])
    d = f"d{a['index']}"
    s_base = query_summary(a)
    badge = (
        f'<span class="badge {s["status"]}">ground truth: A {_rank_text(s["a"], s["depth"])} · '
        f"B {_rank_text(s['b'], s['depth'])} · backbone {_rank_text(s_base['before'], s_base['depth'])}"
        f"{' · lists differ' if s['differ'] else ''}</span>"
    )
    # each run's candidates open its own panels (their passages and answers may differ)
    strips = renderer.strip("backbone", a.get("base_top") or [], truth, "score", d + "a")
    if [e["id"] for e in b.get("base_top") or []] != [e["id"] for e in a.get("base_top") or []]:
        strips += renderer.strip("backbone (B)", b.get("base_top") or [], truth, "score", d + "b")
    strips += renderer.strip(f"A: {names[0]}", reranked_top(a), truth, "fused", d + "a")
    strips += renderer.strip(f"B: {names[1]}", reranked_top(b), truth, "fused", d + "b")
    body = (
        renderer.header(a, badge)
        + '<div class="qbody">'
        + renderer.truth(a)
        + '<div class="lists">'
        + strips
        + "</div></div>"
        + renderer.details(a, d + "a", a.get("base_top") or [], reranked_top(a))
        + renderer.details(b, d + "b", b.get("base_top") or [], reranked_top(b))
    )
    html_ = (
        f'<section class="q" id="q{a["index"]}" data-status="{s["status"]}" data-change="{s["change"]}" '
        f'data-index="{a["index"]}">{body}</section>'
    )
    return s, html_


# -- pages ---------------------------------------------------------------------------------------------------
QUERY_STYLE = """
.nav { margin: 4px 0 10px; } .nav a, .nav span { margin-right: 10px; }
.controls { position: sticky; top: 0; background: #fff; padding: 6px 0; border-bottom: 1px solid var(--line);
            z-index: 2; }
.controls button { margin: 2px 3px 2px 0; }
section.q { border-bottom: 1px solid var(--line); padding: 10px 0; }
.qhead { font-size: 14px; margin-bottom: 4px; }
.qn { color: var(--muted); font-variant-numeric: tabular-nums; }
.qtext { font-weight: 600; }
.questions { color: var(--muted); font-size: 12px; margin-bottom: 4px; }
.badge { font-size: 11px; border-radius: 10px; padding: 1px 8px; margin-left: 6px; white-space: nowrap;
         background: #eef1f4; }
.badge.helped, .badge.A-better { background: #dcf3e1; color: var(--good); }
.badge.hurt, .badge.B-better { background: #fbe0e0; color: var(--bad); }
.qbody { display: flex; gap: 14px; align-items: flex-start; }
.truth { display: flex; flex-direction: column; gap: 4px; flex: none; }
.lists { display: grid; grid-template-columns: max-content 1fr; gap: 4px 10px; align-items: center;
         min-width: 0; }
.rowlabel { font-size: 12px; font-weight: 600; color: #33404d; max-width: 200px; }
.rowlabel .muted { font-weight: normal; display: block; font-size: 11px; }
.strip { display: flex; flex-wrap: wrap; gap: 4px; }
figure.c { margin: 0; width: 96px; text-align: center; font-size: 11px; cursor: default;
           border: 2px solid transparent; border-radius: 4px; padding: 1px; }
figure.c[data-d] { cursor: pointer; }
figure.c img, figure.c .ph { width: 88px; height: 66px; object-fit: cover; display: block; margin: 0 auto;
                              border-radius: 2px; background: #e9edf1; }
figure.c img.video { object-fit: contain; background: #111; }  /* a strip of frames, shown whole */
figure.c .ph { font-size: 9px; overflow: hidden; padding: 2px; color: #333; text-align: left; }
figure.c.gt { border-color: var(--good); background: #e7f6ea; }
figure.c.open { outline: 2px solid var(--accent); }
.cand { background: #f6f8fa; border: 1px solid var(--line); border-radius: 4px; padding: 6px 10px;
        margin: 6px 0;
        font-size: 12px; } .cand p { margin: 2px 0; } .cand ol { margin: 4px 0; padding-left: 22px; }
.cand .q { color: var(--muted); }
table.pages { border-collapse: collapse; } table.pages td, table.pages th { padding: 2px 10px;
  border-bottom: 1px solid var(--line); text-align: right; }
table.pages td:first-child, table.pages th:first-child { text-align: left; }
ul.moves { columns: 2; }
"""

QUERY_SCRIPT = r"""
const sections = Array.from(document.querySelectorAll("section.q"));
const list = document.getElementById("queries");
let filter = "all", order = "pos";  // pos: the order the pages were written in
function apply() {
  let shown = 0;
  sections.forEach((s) => {
    const on = filter === "all" || s.dataset.status === filter;
    s.hidden = !on;
    shown += on;
  });
  const key = (s) => (order === "pos" ? +s.dataset.pos
                      : order === "up" ? -s.dataset.change : +s.dataset.change);
  sections.slice().sort((a, b) => key(a) - key(b) || a.dataset.pos - b.dataset.pos)
    .forEach((s) => list.appendChild(s));
  const mark = (b, on) => b.classList.toggle("on", on);
  document.querySelectorAll("[data-filter]").forEach((b) => mark(b, b.dataset.filter === filter));
  document.querySelectorAll("[data-order]").forEach((b) => mark(b, b.dataset.order === order));
  document.body.dataset.shown = shown;
  document.body.dataset.visibleOrder = Array.from(list.children).filter((s) => !s.hidden)
    .map((s) => s.dataset.index).join(",");
}
document.querySelectorAll("[data-filter]").forEach((b) => b.addEventListener("click", () => {
  filter = b.dataset.filter;
  apply();
}));
document.querySelectorAll("[data-order]").forEach((b) => b.addEventListener("click", () => {
  order = b.dataset.order;
  apply();
}));
// a click on a candidate shows its passage and answers under the query (a second click hides them)
list.addEventListener("click", (e) => {
  const fig = e.target.closest("figure[data-d]");
  if (!fig) return;
  const section = fig.closest("section");
  const panel = document.getElementById(fig.dataset.d);
  const open = panel && !panel.hidden;
  section.querySelectorAll(".cand").forEach((p) => { p.hidden = true; });
  section.querySelectorAll("figure.open").forEach((f) => f.classList.remove("open"));
  if (panel && !open) { panel.hidden = false; fig.classList.add("open"); section.appendChild(panel); }
});
// #filter=hurt&order=down opens the page so (links from the run's index; the tests use it too)
const hash = new URLSearchParams(location.hash.slice(1));
if (hash.get("filter")) filter = hash.get("filter");
if (hash.get("order")) order = hash.get("order");
apply();
const opened = hash.get("open") && document.querySelector(`figure[data-d="${CSS.escape(hash.get("open"))}"]`);
if (opened) opened.click();  // #open=<candidate>: a link to one candidate's passage and answers
window.addEventListener("load", () => {
  const images = Array.from(document.querySelectorAll("section.q img"));
  const ok = images.filter((img) => img.complete && img.naturalWidth > 0).length;
  const d = document.body.dataset;
  d.imagesLoaded = ok + "/" + images.length;
  d.pageWidth = document.documentElement.scrollWidth;
  d.viewWidth = window.innerWidth;
  // where each list shows the ground truth, as drawn (0: not shown): for checks of what a person sees
  sections.forEach((s) => {
    s.dataset.shownRanks = Array.from(s.querySelectorAll(".strip")).map((st) => {
      const figs = Array.from(st.querySelectorAll("figure"));
      const at = figs.findIndex((f) => f.classList.contains("gt") && f.getBoundingClientRect().width > 0);
      return at + 1;
    }).join(",");
  });
  const target = location.hash.match(/^#q\d+$/) && document.querySelector(location.hash);
  if (target) target.scrollIntoView();
});
"""


def run_folder_name(text: str) -> str:
    """A folder name for a run: its readable part plus a short hash, so two runs never share a folder."""
    readable = re.sub(r"[^A-Za-z0-9._=-]+", "_", text).strip("_")[:60] or "run"
    return f"{readable}-{hashlib.sha1(text.encode()).hexdigest()[:6]}"


def _page_name(n: int) -> str:
    return f"page-{n + 1:04d}.html"


def _write_pages(
    folder: Path,
    title: str,
    subtitle: str,
    summarize: Callable[[], Iterator[dict[str, Any]]],
    stream: Callable[[], Iterator[tuple[dict[str, Any], str]]],
    order: Callable[[list[dict[str, Any]]], list[int]],
    filters: list[tuple[str, str]],
    orders: list[tuple[str, str]],
    back: str,
    per_page: int,
) -> list[dict[str, Any]]:
    """Pages of `per_page` query sections in the order `order` gives (positions into the summaries of a
    first pass, `summarize`); the second pass, `stream`, appends each section to its page's part file as it
    comes, so no more than one record is held at a time. Returns the summaries, each with its `page`."""
    summaries = list(summarize())
    if not summaries:
        raise VisaError("its results file has no records")
    position = {summaries[i]["index"]: p for p, i in enumerate(order(summaries))}
    for s in summaries:
        s["page"] = position[s["index"]] // per_page
    pages = (len(summaries) + per_page - 1) // per_page
    parts = folder / ".parts"
    shutil.rmtree(parts, ignore_errors=True)
    parts.mkdir(parents=True)
    for summary, section in stream():
        pos = position[summary["index"]]
        with open(parts / f"{pos // per_page}.jsonl", "a", encoding="utf-8") as f:
            section = section.replace("<section ", f'<section data-pos="{pos}" ', 1)
            f.write(json.dumps([pos, section]) + "\n")
    for n in range(pages):
        with open(parts / f"{n}.jsonl", encoding="utf-8") as f:
            sections = [json.loads(line) for line in f]
        sections.sort()
        on_page = [s for s in summaries if s["page"] == n]
        counts = {key: sum(1 for s in on_page if s["status"] == key) for key, _ in filters}
        buttons = f'<button data-filter="all">all {len(on_page)}</button>' + "".join(
            f'<button data-filter="{esc(key)}">{esc(text)} {counts[key]}</button>' for key, text in filters
        )
        sorters = "".join(f'<button data-order="{esc(key)}">{esc(text)}</button>' for key, text in orders)
        prev = (
            f'<a href="{_page_name(n - 1)}">‹ previous</a>'
            if n > 0
            else '<span class="muted">‹ previous</span>'
        )
        nxt = (
            f'<a href="{_page_name(n + 1)}">next ›</a>'
            if n + 1 < pages
            else '<span class="muted">next ›</span>'
        )
        body = (
            f"<h1>{esc(title)}</h1><p class='muted'>{subtitle}</p>"
            f'<div class="nav">{prev}<span>page {n + 1} of {pages}</span>{nxt}'
            f'<a href="index.html">all pages</a><a href="{esc(back)}">comparison</a></div>'
            f'<div class="controls">show {buttons} &nbsp; order {sorters}</div>'
            f'<div id="queries">{"".join(s for _, s in sections)}</div>'
        )
        (folder / _page_name(n)).write_text(
            document(f"{title} — page {n + 1}", body, QUERY_STYLE, QUERY_SCRIPT), encoding="utf-8"
        )
    shutil.rmtree(parts)
    return summaries


def _index_page(
    folder: Path,
    title: str,
    subtitle: str,
    summaries: list[dict[str, Any]],
    filters: list[tuple[str, str]],
    back: str,
    moves: list[tuple[str, list[dict[str, Any]]]],
) -> None:
    """The run's (or pair's) overview: counts, every page with its counts, the largest moves."""
    counts = {key: sum(1 for s in summaries if s["status"] == key) for key, _ in filters}
    pages = sorted({s["page"] for s in summaries})
    rows = []
    for n in pages:
        on = [s for s in summaries if s["page"] == n]
        idx = sorted(s["index"] for s in on)
        cells = "".join(
            f'<td><a href="{_page_name(n)}#filter={esc(key)}">'
            f"{sum(1 for s in on if s['status'] == key)}</a></td>"
            for key, _ in filters
        )
        rows.append(
            f'<tr><td><a href="{_page_name(n)}">page {n + 1}</a> <span class="muted">queries '
            f"{idx[0]}–{idx[-1]}</span></td>{cells}</tr>"
        )
    heads = "".join(f"<th>{esc(text)}</th>" for _, text in filters)
    totals = " · ".join(f"<b>{counts[key]}</b> {esc(text)}" for key, text in filters)
    lists = ""
    for heading, chosen in moves:
        if chosen:
            items = "".join(
                f'<li><a href="{_page_name(s["page"])}#q{s["index"]}">#{s["index"]}</a> {s["text"]}</li>'
                for s in chosen
            )
            lists += f"<h2>{esc(heading)}</h2><ul class='moves'>{items}</ul>"
    body = (
        f"<h1>{esc(title)}</h1><p class='muted'>{subtitle}</p>"
        f'<div class="nav"><a href="{esc(back)}">comparison</a></div>'
        f"<p id='counts'>{len(summaries)} queries: {totals}.</p>"
        f"<table class='pages'><thead><tr><th>page</th>{heads}</tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
        f"{lists}"
    )
    (folder / "index.html").write_text(document(title, body, QUERY_STYLE, ""), encoding="utf-8")


RUN_FILTERS = [("helped", "helped"), ("hurt", "hurt"), ("unchanged", "unchanged")]
RUN_ORDERS = [("pos", "query order"), ("up", "most helped first"), ("down", "most hurt first")]


def write_run_pages(
    row: dict[str, Any],
    label: str,
    folder: Path,
    thumbs: Thumbnails,
    gallery: Gallery,
    back: str,
    per_page: int = PER_PAGE,
) -> dict[str, int]:
    """A run's per-query pages in `folder` (index.html, page-0001.html, ...); returns the counts of queries
    re-ranking helped, hurt or left unchanged."""
    if not row.get("results"):
        raise VisaError(f"{row['path']}: no results.jsonl to draw the queries from")
    results = Path(row["results"])
    items, why = gallery.items(row["path"])
    folder.mkdir(parents=True, exist_ok=True)
    prefix = "../" * len(folder.relative_to(thumbs.folder.parent).parts) + thumbs.folder.name + "/"
    renderer = _Renderer(items, thumbs, prefix)

    def stream() -> Iterator[tuple[dict[str, Any], str]]:
        for record in read_results(results):
            yield run_section(record, renderer)

    note = f" Pictures unavailable: {esc(why)}." if why else ""
    subtitle = (
        f"Each query's ground truth (green), the backbone's top-K and the re-ranked top-K; click a "
        f"candidate for the passage the re-ranker scored and its answers. Run folder "
        f"<code>{esc(row['path'])}</code>.{note}"
    )
    title = f"Queries · {label}"
    summaries = _write_pages(
        folder,
        title,
        subtitle,
        lambda: map(query_summary, read_results(results)),
        stream,
        lambda s: list(range(len(s))),
        RUN_FILTERS,
        RUN_ORDERS,
        back,
        per_page,
    )
    helped = sorted((s for s in summaries if s["change"] > 0), key=lambda s: -s["change"])[:20]
    hurt = sorted((s for s in summaries if s["change"] < 0), key=lambda s: s["change"])[:20]
    chosen = {s["index"]: s for s in helped + hurt}
    for record in read_results(results):  # the texts of the listed queries only
        if record["index"] in chosen:
            s = chosen[record["index"]]
            s["text"] = (
                f"ground truth {_rank_text(s['before'], s['depth'])} → "
                f"{_rank_text(s['after'], s['depth'])}: {esc(record.get('query', ''))}"
            )
    _index_page(
        folder, title, subtitle, summaries, RUN_FILTERS, back, [("Helped most", helped), ("Hurt most", hurt)]
    )
    return {key: sum(1 for s in summaries if s["status"] == key) for key, _ in RUN_FILTERS}


PAIR_FILTERS = [("A-better", "A better"), ("B-better", "B better"), ("same", "same rank")]
PAIR_ORDERS = [("pos", "disagreements first"), ("up", "A better first"), ("down", "B better first")]


def _pairs(a: Path, b: Path) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """The two runs' records of each query, side by side; the two files must hold the same queries."""
    for line, (ra, rb) in enumerate(zip_longest(read_results(a), read_results(b)), 1):
        if ra is None or rb is None or ra["index"] != rb["index"] or ra.get("query") != rb.get("query"):
            raise VisaError(
                f"{a} and {b} do not hold the same queries (line {line} differs); "
                "compare two runs of the same dataset"
            )
        yield ra, rb


def write_pair_pages(
    rows: tuple[dict[str, Any], dict[str, Any]],
    names: tuple[str, str],
    folder: Path,
    thumbs: Thumbnails,
    gallery: Gallery,
    back: str,
    per_page: int = PER_PAGE,
) -> dict[str, int]:
    """Two runs side by side, query by query: pages ordered with the queries where their re-ranked lists
    disagree first (the largest difference in the ground truth's rank first)."""
    a, b = rows
    for row in rows:
        if not row.get("results"):
            raise VisaError(f"{row['path']}: no results.jsonl to draw the queries from")
    items, why = gallery.items(a["path"])
    folder.mkdir(parents=True, exist_ok=True)
    prefix = "../" * len(folder.relative_to(thumbs.folder.parent).parts) + thumbs.folder.name + "/"
    renderer = _Renderer(items, thumbs, prefix)

    def stream() -> Iterator[tuple[dict[str, Any], str]]:
        for ra, rb in _pairs(Path(a["results"]), Path(b["results"])):
            yield pair_section(ra, rb, names, renderer)

    def disagreements_first(summaries: list[dict[str, Any]]) -> list[int]:
        return sorted(
            range(len(summaries)),
            key=lambda i: (not summaries[i]["differ"], -abs(summaries[i]["change"]), summaries[i]["index"]),
        )

    note = f" Pictures unavailable: {esc(why)}." if why else ""
    subtitle = (
        f"A: <b>{esc(names[0])}</b> (<code>{esc(a['path'])}</code>) · B: <b>{esc(names[1])}</b> "
        f"(<code>{esc(b['path'])}</code>). Queries where the two re-ranked lists differ come first.{note}"
    )
    title = "Queries · A against B"

    def summarize() -> Iterator[dict[str, Any]]:
        return (pair_summary(ra, rb) for ra, rb in _pairs(Path(a["results"]), Path(b["results"])))

    summaries = _write_pages(
        folder,
        title,
        subtitle,
        summarize,
        stream,
        disagreements_first,
        PAIR_FILTERS,
        PAIR_ORDERS,
        back,
        per_page,
    )
    for s in summaries:
        s["text"] = f"ground truth A {_rank_text(s['a'], s['depth'])}, B {_rank_text(s['b'], s['depth'])}"
    a_better = sorted((s for s in summaries if s["change"] > 0), key=lambda s: -s["change"])[:20]
    b_better = sorted((s for s in summaries if s["change"] < 0), key=lambda s: s["change"])[:20]
    _index_page(
        folder,
        title,
        subtitle,
        summaries,
        PAIR_FILTERS,
        back,
        [("A ranks the ground truth higher", a_better), ("B ranks the ground truth higher", b_better)],
    )
    return {key: sum(1 for s in summaries if s["status"] == key) for key, _ in PAIR_FILTERS}
