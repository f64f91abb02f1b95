"""python -m visa.cache: per stage and model for the SQLite file and the per-writer logs; merge; prune."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from visa.cache import SQLiteStore, model_label, open_cache
from visa.cache.shared import FOLDER, SharedFolderStore

REPO = Path(__file__).resolve().parents[1]


def cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "visa.cache", *args], capture_output=True, text=True, env=env, timeout=120
    )


def _fill(folder: Path) -> None:
    cache = SQLiteStore(folder)
    cache.put_many("answer", {"a1": "yes", "a2": "no"}, model="Qwen2-VL-7B-Instruct")
    cache.put_many("encode_visual", {"v1": np.zeros(4, np.float32)}, model="siglip")
    cache.close()
    for n in range(2):
        store = SharedFolderStore(folder)
        store.put_many("score", {f"s{n}": 0.5}, model="bge-reranker")
        store.close()


def test_show_lists_stages_and_models_of_both_layouts(tmp_path):
    _fill(tmp_path)
    out = cli("show", str(tmp_path))
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert any(line.split()[:3] == ["answer", "Qwen2-VL-7B-Instruct", "2"] for line in lines)
    assert any(line.split()[:3] == ["encode_visual", "siglip", "1"] for line in lines)
    assert any(line.split()[:3] == ["score", "bge-reranker", "2"] for line in lines)
    assert "2 files (0 not closed)" in out.stdout


def test_prune_and_merge(tmp_path):
    _fill(tmp_path)
    out = cli("prune", str(tmp_path), "--stage", "answer")
    assert out.returncode == 0 and "2 entries removed" in out.stdout
    cache = SQLiteStore(tmp_path)
    assert cache.get_many(["a1", "v1"]).keys() == {"v1"}
    cache.close()
    out = cli("merge", str(tmp_path))  # prune rewrote the two logs into one already
    assert out.returncode == 0 and "1 finished logs packed into one (2 entries)" in out.stdout
    assert len(list((tmp_path / FOLDER).iterdir())) == 1
    assert SharedFolderStore(tmp_path).get_many(["s0", "s1"]) == {"s0": 0.5, "s1": 0.5}


def test_bad_folder_and_missing_prune_target_are_one_line(tmp_path):
    out = cli("show", str(tmp_path / "nowhere"))
    assert out.returncode == 1 and out.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'nowhere'} is not a folder; give the cache folder (cache_dir)"
    ]
    out = cli("prune", str(tmp_path))
    assert out.returncode == 1 and "prune needs --stage, --model and/or --store" in out.stderr


def test_layouts_and_model_labels(tmp_path):
    assert isinstance(open_cache(tmp_path / "a", "shared"), SharedFolderStore)
    local = open_cache(tmp_path / "b", "auto")  # tmp is a local disk: the single SQLite file
    assert isinstance(local, SQLiteStore)
    local.close()
    assert model_label({"backbone": "open_clip", "model": "ViT-B-32"}) == "ViT-B-32"
    assert model_label({"scorer": "onnx"}) == "onnx"
