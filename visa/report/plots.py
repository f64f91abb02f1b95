"""The plots: quality against cost (the Pareto front), R@K against the fusion weight, the gain over the
backbone per run and the time per stage. Each takes the rows, saves a PNG and returns its figure (None and
no file when the runs have nothing to draw), so a notebook shows the same figures."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from visa.method.metrics import primary_metric as metrics_primary
from visa.report.runs import labels, recall_ks, show, stages, swept_params

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# Distinct marks for lines that may lie on top of each other: each one stays visible under the others.
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "h")
DASHES = ("-", (0, (6, 2)), (0, (2, 1.5)), (0, (6, 2, 1.5, 2)), (0, (10, 3)), (0, (1, 1)))


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


LABEL_CHARS = 28  # a point's label longer than this: the points are named by run folder instead


def wrap(text: str, width: int = 40) -> str:
    """A run's label on lines of about `width` characters, broken between settings (` · `)."""
    lines: list[str] = []
    for part in text.split(" · "):
        if lines and len(lines[-1]) + 3 + len(part) <= width:
            lines[-1] += " · " + part
        else:
            lines.append(part)
    return "\n".join(lines)


def _label(params: dict[str, Any], keys: Sequence[str]) -> str:
    return plain(", ".join(f"{k}={show(params.get(k))}" for k in keys) or "runs")


# -- quality against cost ------------------------------------------------------------------------------------
def primary_metric(rows: list[dict[str, Any]]) -> str | None:
    """The metric the runs are judged by (`visa.method.metrics.primary_metric` over all their keys)."""
    return metrics_primary(k for r in rows for k in r["metrics"])


def _per_query_seconds(row: dict[str, Any]) -> float | None:
    m = row["metrics"]
    if m.get("time/total") is not None and m.get("data/queries"):
        return m["time/total"] / m["data/queries"]
    return None


# The cost axis, first one that any run has: (name, how to read it from a row, what the axis says).
COSTS: tuple[tuple[str, Callable[[dict[str, Any]], Any], str], ...] = (
    ("cost/per_query/seconds", lambda r: r["metrics"].get("cost/per_query/seconds"), "seconds per query"),
    ("cost/per_query/calls", lambda r: r["metrics"].get("cost/per_query/calls"), "model calls per query"),
    ("cost/per_query/tokens", lambda r: r["metrics"].get("cost/per_query/tokens"), "tokens per query"),
    ("time/total ÷ data/queries", _per_query_seconds, "wall seconds per query (time/total ÷ queries)"),
)


def cost_axis(rows: list[dict[str, Any]]) -> tuple[str, Callable[[dict[str, Any]], Any], str] | None:
    """Which cost the Pareto plot uses: the first of COSTS that any run has; None when none has any."""
    for name, read, axis in COSTS:
        if any(isinstance(read(r), (int, float)) for r in rows):
            return name, read, axis
    return None


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """The positions of the points no other point beats (cost no higher and quality no lower, one of them
    strictly), cheapest first."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front: list[int] = []
    best = -math.inf
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def pareto_caption(rows: list[dict[str, Any]]) -> str:
    """What the Pareto plot shows, in words (the page's caption): which metric and which cost."""
    metric, cost = primary_metric(rows), cost_axis(rows)
    if metric is None:
        return "No run has a re-ranked quality metric."
    if cost is None:
        return "No run has a cost: no cost/per_query/* keys, nor time/total and data/queries."
    name = cost[0]
    note = (
        ""
        if name.startswith("cost/")
        else (
            " The runs have no cost/per_query/* keys (written by newer runs): wall time per query stands in, "
            "and "
            "cached model calls make it small."
        )
    )
    return (
        f"Re-ranked {metric} against {name}, one point per run; the line joins the runs no other beats.{note}"
    )


def _overlap(box: tuple, frame: tuple, taken: list[tuple]) -> float:
    """How badly a label's box (x0, y0, x1, y1) sits: outside the axes' frame first, then the area it
    shares with the boxes already taken."""
    outside = (box[0] < frame[0]) + (box[2] > frame[2]) + (box[1] < frame[1]) + (box[3] > frame[3])
    covered = sum(
        max(0.0, min(box[2], t[2]) - max(box[0], t[0])) * max(0.0, min(box[3], t[3]) - max(box[1], t[1]))
        for t in taken
    )
    return outside * 1e9 + covered


def _place_labels(ax: Any, pts: list[tuple[float, float]], texts: list[str], size: float = 7.5) -> None:
    """Label points without letting labels cover each other: points closer than a marker are labelled
    together (`a; b; +3`), and each label takes the first spot around its point that is free."""
    ax.get_xlim(), ax.get_ylim()  # settle the limits (autoscaling is lazy) before reading positions
    screen = [tuple(ax.transData.transform(p)) for p in pts]
    clusters: list[list[int]] = []
    for i, (x, y) in enumerate(screen):
        for cluster in clusters:
            cx, cy = screen[cluster[0]]
            if abs(cx - x) < 9 and abs(cy - y) < 9:
                cluster.append(i)
                break
        else:
            clusters.append([i])
    height = size * 100 / 72 + 2  # pixels at the figure's 100 dpi
    taken = [(x - 5, y - 5, x + 5, y + 5) for x, y in screen]  # the markers themselves
    left, bottom, right, top = ax.bbox.extents
    for cluster in sorted(clusters, key=lambda c: screen[c[0]]):
        names = [texts[i] for i in cluster]
        text = "; ".join(names[:3]) + (f"; +{len(names) - 3}" if len(names) > 3 else "")
        width = 0.58 * height * len(text)
        x, y = screen[cluster[0]]
        rises = [3.0]
        for n in range(1, 6):  # further and further up and down, joined to the point by a thin line
            rises += [-3 - n * height, 3 + n * height]
        spots = [(dx, dy) for dy in rises for dx in (6, -6 - width)]
        scores = [
            _overlap((x + dx, y + dy, x + dx + width, y + dy + height), (left, bottom, right, top), taken)
            for dx, dy in spots
        ]
        chosen = spots[min(range(len(spots)), key=lambda i: (scores[i] > 0, scores[i]))]  # the first free one
        dx, dy = chosen
        taken.append((x + dx, y + dy, x + dx + width, y + dy + height))
        ax.annotate(
            plain(text),
            pts[cluster[0]],
            xytext=(dx * 72 / 100, dy * 72 / 100),
            textcoords="offset points",
            fontsize=size,
            color="#222222",
            va="bottom",
            arrowprops={"arrowstyle": "-", "color": "0.6", "linewidth": 0.6} if abs(dy) > height else None,
        )


def plot_pareto(rows: list[dict[str, Any]], path: Path) -> Figure | None:
    """Quality (the primary re-ranked metric) against cost per query, one point per run labelled by the
    settings that differ, the Pareto front drawn (one per dataset when the runs span several), the
    backbone's quality as a reference line."""
    metric, cost = primary_metric(rows), cost_axis(rows)
    if metric is None or cost is None:
        return None
    _, read, axis = cost
    names = labels(rows)
    keys = swept_params(rows)
    pts, who = [], []
    for row, name in zip(rows, names, strict=True):
        x, y = read(row), row["metrics"].get(f"rerank/{metric}")
        if isinstance(x, (int, float)) and isinstance(y, (int, float)):
            pts.append((float(x), float(y)))
            who.append((row, name))
    if not pts:
        return None
    fig = _figure((8.0, 5.0))
    ax = fig.subplots()
    bases = sorted({r["metrics"][f"base/{metric}"] for r, _ in who if f"base/{metric}" in r["metrics"]})
    if 0 < len(bases) <= 3:
        for n, base in enumerate(bases):
            ax.axhline(
                base,
                color="0.35",
                linestyle=DASHES[1 + n % (len(DASHES) - 1)],
                linewidth=1.4,
                label=f"backbone {metric} = {base:.1f}" if len(bases) > 1 else f"backbone alone ({base:.1f})",
                zorder=1,
            )
    # Runs on different datasets are not on one scale of quality: each dataset its own colour and front
    by_data: dict[str, list[int]] = {}
    for i, (row, _) in enumerate(who):
        by_data.setdefault(show(row["params"].get("dataset")) if "dataset" in keys else "", []).append(i)
    colours = ("#d9480f", "#1c7ed6", "#2b8a3e", "#862e9c", "#e67700", "#495057")
    for n, (data, members) in enumerate(by_data.items()):
        colour, suffix = colours[n % len(colours)], f" (dataset={data})" if data else ""
        front = [members[i] for i in pareto_front([pts[i] for i in members])]
        others = [i for i in members if i not in front]
        ax.scatter(
            [pts[i][0] for i in others],
            [pts[i][1] for i in others],
            s=46,
            facecolors="white",
            edgecolors=colour if data else "#4a6785",
            linewidths=1.4,
            label="run" + suffix,
            zorder=3,
        )
        fx, fy = [pts[i][0] for i in front], [pts[i][1] for i in front]
        ax.plot(
            fx,
            fy,
            "-",
            color=colour,
            linewidth=1.6,
            drawstyle="steps-post",
            zorder=2,
            label="Pareto front" + suffix,
        )
        ax.scatter(
            fx,
            fy,
            s=70,
            color=colour,
            edgecolors="black",
            linewidths=0.6,
            zorder=4,
            label="run on the front" + suffix,
        )
    xs = [p[0] for p in pts]
    if min(xs) > 0 and max(xs) / min(xs) > 30:  # a cold run next to cached reruns: orders of magnitude apart
        ax.set_xscale("log")
    ax.margins(x=0.12, y=0.12)
    ax.autoscale_view()
    ax.set_xlabel(axis)
    ax.set_ylabel(f"re-ranked {metric} (%)")
    shorts = [" · ".join(show(row["params"].get(k)) for k in keys) if keys else name for row, name in who]
    if keys and max(len(t) for t in shorts) > LABEL_CHARS:  # many settings: name points by their folder
        shorts = [row["run"] for row, _ in who]
        named = "points named by run folder (grey in the table)"
    else:
        named = "points labelled " + (" · ".join(keys) if keys else "by run")
    ax.set_title(f"{metric} against cost\n" + plain(wrap(named, 95)), fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best", framealpha=0.9)
    fig.tight_layout()
    # labels last: placing them needs the points where the final layout puts them
    _place_labels(ax, pts, shorts)
    fig.savefig(path, dpi=100)
    return fig


# -- the older views, made readable --------------------------------------------------------------------------
def plot_recall_vs_alpha(rows: list[dict[str, Any]], path: Path) -> Figure | None:
    """R@K against the fusion weight, one line per questions.num (and per value of the other swept
    parameters), one panel per K; the backbone's R@K dashed, drawn once and on top when the lines share it.
    Lines that coincide stay apart by their markers (hollow, each a different shape and size). Saved to
    `path` and returned; None (no file) without fusion.alpha values."""
    rows = [r for r in rows if isinstance(r["params"].get("fusion.alpha"), (int, float))]
    if not rows:
        return None
    ks = recall_ks(rows)
    if not ks:
        return None
    line_keys = [k for k in swept_params(rows) if k != "fusion.alpha"]
    if "questions.num" not in line_keys and "questions.num" in rows[0]["params"]:
        line_keys.insert(0, "questions.num")
    lines: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        lines.setdefault(_label(row["params"], line_keys), []).append(row)
    if all(len(members) < 2 for members in lines.values()):
        return None  # no setting was swept along alpha with the rest fixed: no line to draw
    fig = _figure((4.0 * len(ks), 3.9))
    axes = fig.subplots(1, len(ks), squeeze=False)
    for ax, k in zip(axes[0], ks, strict=True):
        bases: dict[tuple, list[float]] = {}
        for n, (label, members) in enumerate(lines.items()):
            members = sorted(members, key=lambda r: r["params"]["fusion.alpha"])
            xs = [r["params"]["fusion.alpha"] for r in members]
            ax.plot(
                xs,
                [r["metrics"].get(f"rerank/R@{k}", math.nan) for r in members],
                linestyle="-",
                marker=MARKERS[n % len(MARKERS)],
                markersize=max(4.0, 10.0 - 1.6 * n),
                markerfacecolor="none",
                markeredgewidth=1.5,
                linewidth=1.5,
                label=label,
                zorder=2 + n * 0.01,
            )
            base = [r["metrics"].get(f"base/R@{k}", math.nan) for r in members]
            bases.setdefault((tuple(xs), tuple(base)), base)
        # the backbone does not depend on the fusion weight: one dashed line per distinct curve, on top
        for n, (xs_base, base) in enumerate(bases.items()):
            ax.plot(
                list(xs_base[0]),
                base,
                linestyle="--",
                color="0.2",
                linewidth=1.8,
                alpha=0.85,
                label="backbone" if n == 0 else None,
                zorder=10,
            )
        ax.set_title(f"R@{k} (dashed: backbone)")
        ax.set_xlabel("fusion weight alpha")
        ax.set_ylabel(f"R@{k} (%)")
        ax.grid(alpha=0.3)
    handles, names = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=min(len(names), 5), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.08 + 0.04 * (len(names) // 6), 1, 1))
    fig.savefig(path, dpi=100)
    return fig


def plot_gain(rows: list[dict[str, Any]], path: Path) -> Figure | None:
    """The re-ranker's gain over the backbone (R@K points) per run, one bar per K, runs named by what
    differs (bars across, so that long names stay readable)."""
    ks = recall_ks(rows)
    if not ks:
        return None
    names = [plain(wrap(n)) for n in labels(rows)]
    lines = sum(n.count("\n") + 1 for n in names)
    fig = _figure((8.0, max(2.8, 0.16 * lines + 0.12 * len(rows) * len(ks) + 1.4)))
    ax = fig.subplots()
    height = 0.8 / len(ks)
    for i, k in enumerate(ks):
        ys = [j + i * height for j in range(len(rows))]
        ax.barh(ys, [r["metrics"].get(f"gain/R@{k}", math.nan) for r in rows], height, label=f"R@{k}")
    ax.set_yticks([j + 0.4 - height / 2 for j in range(len(rows))])
    ax.set_yticklabels(names, fontsize=7)
    ax.invert_yaxis()
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_xlabel("re-ranked - backbone (points)")
    ax.set_title("Gain over the backbone")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=8, loc="best", framealpha=0.9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return fig


def plot_stage_time(rows: list[dict[str, Any]], path: Path) -> Figure | None:
    """Seconds per stage per run, stacked: where the time goes, and what the cache saved. Uses
    `cost/<stage>/seconds` where a run has it, `time/<stage>` otherwise."""
    names = stages(rows)
    if not names:
        return None
    run_names = [plain(wrap(n)) for n in labels(rows)]
    lines = sum(n.count("\n") + 1 for n in run_names)
    fig = _figure((8.0, max(2.6, 0.16 * lines + 0.12 * len(rows) + 1.4)))
    ax = fig.subplots()
    left = [0.0] * len(rows)
    for name in names:
        widths = [
            float(r["metrics"].get(f"cost/{name}/seconds", r["metrics"].get(f"time/{name}", 0.0)))
            for r in rows
        ]
        ax.barh(range(len(rows)), widths, left=left, label=name)
        left = [a + b for a, b in zip(left, widths, strict=True)]
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels(run_names, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("seconds")
    ax.set_title("Time per stage")
    ax.legend(fontsize=7, ncol=2, loc="lower right", framealpha=0.9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return fig


# (file, title, function, caption function or None)
PLOTS = (
    ("pareto.png", "Quality against cost", plot_pareto, pareto_caption),
    ("recall_vs_alpha.png", "R@K against the fusion weight", plot_recall_vs_alpha, None),
    ("gain.png", "Gain over the backbone", plot_gain, None),
    ("stage_time.png", "Time per stage", plot_stage_time, None),
)
