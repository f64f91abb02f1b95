"""The W&B logger in offline mode, read back from the run's own transaction log (no network, no account)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import requires
from helpers.wandb_log import read_transaction_log
from PIL import Image

from visa.data import Dataset, Item, Query
from visa.tracking import NullLogger, WandbLogger, pick_samples, quality_summary, redact

wandb = requires("wandb", "tracking")


@pytest.fixture
def wandb_offline_env(tmp_path, monkeypatch) -> Path:
    """No API key anywhere (HOME without .netrc), every wandb folder inside tmp_path."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for var in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_DIR", "WANDB_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    for var, sub in (
        ("WANDB_DATA_DIR", "data"),
        ("WANDB_CACHE_DIR", "cache"),
        ("WANDB_CONFIG_DIR", "config"),
    ):
        monkeypatch.setenv(var, str(tmp_path / "wandb-home" / sub))
    monkeypatch.setenv("WANDB_ARTIFACT_DIR", str(tmp_path / "wandb-home" / "artifacts"))
    return home


def records(wandb_file: Path) -> dict[str, list]:
    # wandb's service writes the file in the background; shutting it down flushes and closes the file, as
    # the end of a real `python -m visa.run` process does.
    wandb.teardown()
    by_type: dict[str, list] = {}
    for record in read_transaction_log(wandb_file):
        by_type.setdefault(record.WhichOneof("record_type"), []).append(record)
    return by_type


def tiny_dataset(tmp_path: Path) -> Dataset:
    gallery = []
    for i, colour in enumerate(("red", "green", "blue")):
        path = tmp_path / f"img{i}.png"
        Image.new("RGB", (300, 200), colour).save(path)
        gallery.append(Item(id=f"img{i}", path=str(path)))
    gallery.append(Item(id="gone", path=str(tmp_path / "missing.png")))  # unreadable: a placeholder tile
    return Dataset(name="tiny", gallery=gallery, queries=[Query("a red square", (0,)), Query("green", (1,))])


def record(index: int, query: str, truth: str, base: list[str], visa: list[str]) -> dict:
    return {
        "index": index,
        "query": query,
        "ground_truth": [truth],
        "key_phrases": ["colour"],
        "questions": ["What colour is it?"],
        "questions_parsed": True,
        "base_top": [{"id": i, "score": 0.9 - 0.1 * r} for r, i in enumerate(base)],
        "rerank_top": [
            {"id": i, "base": 0.5, "text": 1.0, "fused": 1.0 - 0.1 * r} for r, i in enumerate(visa)
        ],
        "candidates": [{"id": i, "answers": [f"It is {i}."], "passage": f"It is {i}."} for i in base],
    }


def test_redact_drops_secret_keys_at_any_depth():
    config = {
        "question_llm": {"url": "http://h:1/v1", "api_key": "sk-1", "server": {"hf_token": "t", "tp": 2}},
        "list": [{"password": "p", "ok": 1}],
        "Auth": "x",
        "alpha": 0.5,
    }
    assert redact(config) == {
        "question_llm": {"url": "http://h:1/v1", "server": {"tp": 2}},
        "list": [{"ok": 1}],
        "alpha": 0.5,
    }


def test_pick_samples_prefers_changed_rankings():
    results = [
        record(0, "q0", "img0", ["img0", "img1"], ["img0", "img1"]),
        record(1, "q1", "img1", ["img0", "img1"], ["img1", "img0"]),
        record(2, "q2", "img0", ["img0", "img1"], ["img0", "img1"]),
    ]
    assert [r["index"] for r in pick_samples(results, 2)] == [0, 1]
    assert [r["index"] for r in pick_samples(results, 1)] == [1]


def test_null_logger_does_not_import_wandb():
    code = "import sys, visa.tracking, visa.run; sys.exit('wandb' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], timeout=300).returncode == 0
    NullLogger().start({}, Path("."))  # and does nothing


def test_wandb_logger_offline_without_key(tmp_path, wandb_offline_env, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    dataset = tiny_dataset(tmp_path)
    results = [
        record(0, "a red square", "img0", ["img1", "img0", "gone"], ["img0", "img1", "gone"]),
        record(1, "green", "img1", ["img1", "img2", "img0"], ["img1", "img2", "img0"]),
    ]
    metrics = {"base/R@1": 50.0, "rerank/R@1": 100.0, "calls/answer/computed": 6, "time/answer": 1.5}
    metrics.update({"cost/answer/tokens_in": 120, "cost/per_query/tokens": 60.5})
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    (run_dir / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in results))
    config = {"fusion": {"alpha": 0.5}, "question_llm": {"api_key": "sk-never-logged", "model": "m"}}

    logger = WandbLogger(project="visa-test", top_items=2, thumb_size=32)
    logger.start(config, run_dir)
    offline_dir = logger.offline_dir()
    logger.log(metrics, results, dataset)
    logger.finish()

    assert "logging offline" in capsys.readouterr().err
    assert offline_dir.parent == run_dir / "wandb" and offline_dir.name.startswith("offline-run-")
    (wandb_file,) = offline_dir.glob("*.wandb")
    assert b"sk-never-logged" not in wandb_file.read_bytes()
    log = records(wandb_file)

    run = log["run"][0].run
    assert run.project == "visa-test" and run.run_group == ""  # outside a multirun: no group
    config_logged = {u.key: json.loads(u.value_json) for u in run.config.update}
    assert config_logged["fusion"] == {"alpha": 0.5}
    assert config_logged["question_llm"] == {"model": "m"}
    assert config_logged["run_dir"] == str(run_dir)

    history = {}
    for h in log["history"]:
        history.update({"/".join(i.nested_key) or i.key: i.value_json for i in h.history.item})
    assert json.loads(history["rerank/R@1"]) == 100.0 and json.loads(history["gain/R@1"]) == 50.0
    assert json.loads(history["calls/answer/computed"]) == 6
    assert json.loads(history["cost/answer/tokens_in"]) == 120  # the cost keys go to W&B as they are
    assert json.loads(history["cost/per_query/tokens"]) == 60.5

    artifacts = {a.artifact.type: a.artifact for a in log["artifact"]}
    outputs = {e.path: e for e in artifacts["run-outputs"].manifest.contents}
    assert set(outputs) == {"metrics.json", "results.jsonl"}
    assert json.loads(Path(outputs["metrics.json"].local_path).read_text()) == metrics

    table_files = {e.path: e.local_path for e in artifacts["run_table"].manifest.contents}
    table = json.loads(Path(table_files["samples.table.json"]).read_text())
    assert table["columns"] == [
        "index",
        "query",
        "ground_truth",
        "status",
        "gt_rank_before",
        "gt_rank_after",
        "key_phrases",
        "questions",
        "base_1",
        "base_2",
        "rerank_1",
        "rerank_2",
    ]
    assert [row[0] for row in table["data"]] == [0, 1]
    first = dict(zip(table["columns"], table["data"][0], strict=True))
    assert first["rerank_1"]["_type"] == "image-file" and first["rerank_1"]["width"] == 32
    # Thumbnails: 3 colours + 1 placeholder, each stored once however often it appears.
    pngs = [p for p in table_files if p.endswith(".png")]
    assert len(pngs) == 3
    colours = {Image.open(table_files[p]).convert("RGB").getpixel((0, 0)) for p in pngs}
    assert colours == {(255, 0, 0), (0, 128, 0), (0, 0, 255)}
    assert log["exit"][0].exit.exit_code == 0


def test_wandb_logger_marks_a_failed_run(tmp_path, wandb_offline_env):
    logger = WandbLogger(project="visa-test", mode="offline")
    logger.start({"a": 1}, tmp_path)
    offline_dir = logger.offline_dir()
    logger.finish()  # the pipeline raised before log()
    (wandb_file,) = offline_dir.glob("*.wandb")
    assert records(wandb_file)["exit"][0].exit.exit_code == 1


def test_transaction_log_spanning_blocks(tmp_path, wandb_offline_env):
    big = "x" * 100_000  # a record longer than three 32 KiB blocks
    logger = WandbLogger(project="visa-test", mode="offline")
    logger.start({"notes": big}, tmp_path)
    offline_dir = logger.offline_dir()
    logger.finish()
    (wandb_file,) = offline_dir.glob("*.wandb")
    run = records(wandb_file)["run"][0].run
    assert json.loads({u.key: u.value_json for u in run.config.update}["notes"]) == big


def test_bad_mode_is_an_error():
    from visa.core.errors import VisaError

    with pytest.raises(VisaError, match="logger.mode"):
        WandbLogger(mode="sometimes")


def test_user_text_reaches_the_wandb_table_as_plain_strings(tmp_path, wandb_offline_env):
    """Captions, answers and questions are the user's (or a model's) text: the sample table gets them as
    string cells and image captions exactly as written, never as W&B HTML objects (which W&B renders)."""
    markup = "<img src=x onerror=alert(1)> **bold** $x$"
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    dataset = tiny_dataset(tmp_path)
    sample = record(0, markup, "img0", ["img1", "img0"], ["img0", "img1"])
    sample["candidates"][0]["answers"] = [markup]
    logger = WandbLogger(project="visa-test", top_items=2, thumb_size=32, log_artifact=False)
    logger.start({}, run_dir)
    logger.log({"rerank/R@1": 100.0}, iter([sample]), dataset)  # records come as a stream
    offline_dir = logger.offline_dir()
    logger.finish()
    log = records(next(offline_dir.glob("*.wandb")))
    artifacts = {a.artifact.type: a.artifact for a in log["artifact"]}
    table_files = {e.path: e.local_path for e in artifacts["run_table"].manifest.contents}
    table = json.loads(Path(table_files["samples.table.json"]).read_text())
    row = dict(zip(table["columns"], table["data"][0], strict=True))
    assert row["query"] == markup  # a plain string cell
    captions = [cell.get("caption", "") for cell in row.values() if isinstance(cell, dict)]
    assert any(markup in c for c in captions)  # the answer, as written, in a thumbnail's caption
    assert all(cell.get("_type") != "html-file" for cell in row.values() if isinstance(cell, dict))
    assert not list(Path(offline_dir).rglob("*.html"))


def logged_table(log: dict[str, list], key: str = "samples") -> dict:
    """A logged wandb.Table as W&B stores it ({"columns": [...], "data": [[...], ...]})."""
    artifacts = {a.artifact.type: a.artifact for a in log["artifact"]}
    files = {e.path: e.local_path for e in artifacts["run_table"].manifest.contents}
    return json.loads(Path(files[f"{key}.table.json"]).read_text())


def test_sample_table_shows_both_rankings_and_what_reranking_did(tmp_path, wandb_offline_env):
    helped = record(0, "red", "img0", ["img1", "img0", "img2"], ["img0", "img1", "img2"])
    hurt = record(1, "green", "img1", ["img1", "img2", "img0"], ["img2", "img1", "img0"])
    unchanged = record(2, "blue", "gone", ["img0", "img1", "img2"], ["img1", "img0", "img2"])
    unchanged["visa_top"] = unchanged.pop("rerank_top")  # a record written before the `reranker` group
    metrics = {"base/R@1": 33.3, "rerank/R@1": 33.3, "rerank/R@5": 66.7, "cost/per_query/seconds": 0.25}
    logger = WandbLogger(project="visa-test", top_items=3, thumb_size=16, log_artifact=False)
    logger.start({}, tmp_path)
    logger.log(metrics, iter([helped, hurt, unchanged]), tiny_dataset(tmp_path))
    offline_dir = logger.offline_dir()
    logger.finish()
    log = records(next(offline_dir.glob("*.wandb")))

    table = logged_table(log)
    rows = [dict(zip(table["columns"], row, strict=True)) for row in table["data"]]
    assert [(r["index"], r["status"], r["gt_rank_before"], r["gt_rank_after"]) for r in rows] == [
        (0, "helped", 2, 1),
        (1, "hurt", 1, 2),
        (2, "unchanged", None, None),  # the ground truth in neither top-K
    ]

    def ids(row: dict, prefix: str) -> list[str]:  # a thumbnail's caption starts with the item's id
        return [row[f"{prefix}_{i}"]["caption"].split()[0] for i in (1, 2, 3)]

    assert [ids(r, "base") for r in rows] == [
        ["img1", "img0", "img2"],
        ["img1", "img2", "img0"],
        ["img0", "img1", "img2"],
    ]
    assert [ids(r, "rerank") for r in rows] == [
        ["img0", "img1", "img2"],
        ["img2", "img1", "img0"],
        ["img1", "img0", "img2"],
    ]
    assert all(r["rerank_1"]["_type"] == "image-file" for r in rows)  # thumbnails, not just ids
    assert "fused" in rows[0]["rerank_1"]["caption"] and "A1: It is img0." in rows[0]["rerank_1"]["caption"]

    summary = {}
    for s in log.get("summary", []):
        summary.update({"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in s.summary.update})
    assert summary["quality/primary"] == 33.3 and summary["quality/primary_name"] == "rerank/R@1"
    assert summary["cost/per_query/seconds"] == 0.25


def test_quality_summary_uses_the_primary_metric_of_the_pareto_plot():
    assert quality_summary({"rerank/R@10": 80.0, "rerank/R@5": 70.0, "base/R@1": 9.0}) == {
        "quality/primary": 70.0,
        "quality/primary_name": "rerank/R@5",
    }
    inquire = {"rerank/R@1": 50.0, "rerank/mAP@50": 41.2, "base/mAP@50": 30.0}
    assert quality_summary(inquire) == {"quality/primary": 41.2, "quality/primary_name": "rerank/mAP@50"}
    assert quality_summary({"base/R@1": 9.0, "time/total": 3.0}) == {}
