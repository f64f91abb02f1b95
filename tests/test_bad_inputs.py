"""Bad input and faults, as a user meets them: `python -m visa.run ...` in a fresh process stops with exit
status 1 and one line `error: ...` that names the file, key or value, and never a Python traceback.

docs/bad_inputs.md lists these cases as a table (input -> what the user sees); keep the two in step.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO
from PIL import Image

from visa.data.folder import FolderDataset


def jpeg_bytes(seed: int = 0, size: int = 64) -> bytes:
    pixels = (np.random.default_rng(seed).random((size, size, 3)) * 255).astype("uint8")
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def folder(root: Path, captions: str | bytes, name: str = "captions.jsonl", **images: bytes) -> list[str]:
    """A folder collection: two good photos (plus `images`) and a captions file; the run's overrides."""
    root.mkdir(parents=True, exist_ok=True)
    for i, data in enumerate([jpeg_bytes(1), jpeg_bytes(2)]):
        (root / f"photo{i}.jpg").write_bytes(data)
    for filename, data in images.items():
        (root / filename.replace("_", ".")).write_bytes(data)
    path = root / name
    path.write_bytes(captions if isinstance(captions, bytes) else captions.encode("utf-8"))
    return ["dataset=folder", f"dataset.root={root}", f"dataset.annotation={name}"]


GOOD_JSONL = '{"path": "photo0.jpg", "caption": "a photo"}\n{"path": "photo1.jpg", "caption": "another"}\n'


def release(root: Path, base: str | None = None, text: str | None = None) -> list[str]:
    """Reference-release files for 2 photos x 1 caption each; `base`/`text` replace a matrix file's text."""
    root.mkdir(parents=True, exist_ok=True)
    recap = [{"image_id": f"img{i}.jpg", "captions": [f"description {i}"]} for i in range(2)]
    queries = [{"image_id": f"img{i}.jpg", "captions": [f"caption {i}"]} for i in range(2)]
    (root / "x_recap.json").write_text(json.dumps(recap))
    (root / "x_query.json").write_text(json.dumps(queries))
    (root / "sim_x.txt").write_text(base or "0.9 0.1\n0.2 0.8\n")
    (root / "sim_text.txt").write_text(text or "1.0 0.0\n0.0 1.0\n")
    return ["dataset=visa_release", f"dataset.root={root}", "dataset.name=x"]


def release_without_captions(root: Path) -> list[str]:
    overrides = release(root)
    (root / "x_query.json").write_text('[{"image_id": "img0.jpg"}]')
    return overrides


# name -> (make the input under a folder: the overrides to run with, the error line expected)
CASES: dict[str, tuple[Callable[[Path], list[str]], str]] = {
    # -- configuration -------------------------------------------------------------------------------------
    "limit=0": (lambda d: ["dataset.limit=0"], r"dataset\.limit=0 must be at least 1, or null"),
    "limit<0": (lambda d: ["dataset.limit=-3"], r"dataset\.limit=-3 must be at least 1"),
    "chunk_size=0": (lambda d: ["retrieval.chunk_size=0"], r"retrieval\.chunk_size=0 must be at least 1"),
    "recall_at=[]": (lambda d: ["recall_at=[]"], r"recall_at=\[\] must list cut-offs of 1 or more"),
    "recall_at=[0]": (lambda d: ["recall_at=[0,5]"], r"recall_at=\[0, 5\] must list cut-offs"),
    "top_k=0": (lambda d: ["retrieval.top_k=0"], r"retrieval\.top_k=0 must be at least 1"),
    "unknown key": (
        lambda d: ["+dataset.limits=3"],
        r"dataset\.limits is not a setting of visa\.data\.demo\.DemoDataset; valid keys: annotation, limit",
    ),
    # -- a folder collection -------------------------------------------------------------------------------
    "empty caption": (
        lambda d: folder(
            d, '{"path": "photo0.jpg", "caption": "a photo"}\n{"path": "photo1.jpg", "caption": ""}'
        ),
        r"captions\.jsonl:2: empty caption; write one or remove it",
    ),
    "whitespace caption (jsonl list)": (
        lambda d: folder(d, '{"path": "photo0.jpg", "captions": ["a photo", "   "]}\n'),
        r"captions\.jsonl:1: empty caption",
    ),
    "whitespace caption (csv)": (
        lambda d: folder(d, "path,caption\nphoto0.jpg,a photo\nphoto1.jpg,   \n", name="c.csv"),
        r"c\.csv:3 column 'caption': empty caption",
    ),
    "integer caption": (
        lambda d: folder(d, '{"path": "photo0.jpg", "caption": 5}\n'),
        r"captions\.jsonl:1: a caption must be a string or a list of strings, got 5",
    ),
    "integer path": (
        lambda d: folder(d, '{"path": 7, "caption": "a photo"}\n'),
        r'captions\.jsonl:1: expected \{"path": "\.\.\.", "caption"',
    ),
    "bad json line": (
        lambda d: folder(d, GOOD_JSONL + "{'path': 'photo0.jpg'}\n"),
        r"captions\.jsonl:3 is not valid json",
    ),
    "non-UTF-8 jsonl": (
        lambda d: folder(d, '{"path": "photo0.jpg", "caption": "caf\xe9"}\n'.encode("latin-1")),
        r"captions\.jsonl is not UTF-8 text .*; save it as UTF-8",
    ),
    "non-UTF-8 csv": (
        lambda d: folder(d, "path,caption\nphoto0.jpg,caf\xe9 au lait\n".encode("cp1252"), name="c.csv"),
        r"c\.csv is not UTF-8 text .*; save it as UTF-8",
    ),
    "captioned photo missing": (
        lambda d: folder(d, GOOD_JSONL + '{"path": "gone.jpg", "caption": "x"}\n'),
        r"gone\.jpg \(not found, or not an image/video file\): fix or remove it, or set dataset\.on_bad_item",
    ),
    "zero-byte image": (
        lambda d: folder(d, GOOD_JSONL, empty_jpg=b""),
        r"empty\.jpg \(not a readable image .*\): fix or remove it, or set dataset\.on_bad_item=skip",
    ),
    "noise image": (
        lambda d: folder(d, GOOD_JSONL, noise_png=np.random.default_rng(0).bytes(3000)),
        r"noise\.png \(not a readable image .*\): fix or remove it",
    ),
    "truncated JPEG": (
        lambda d: folder(d, GOOD_JSONL, cut_jpg=jpeg_bytes(3)[:1500]),
        r"cut\.jpg \(not a readable image \(image file is truncated.*on_bad_item=skip",
    ),
    "on_bad_item=maybe": (
        lambda d: [*folder(d, GOOD_JSONL), "dataset.on_bad_item=maybe"],
        r"dataset\.on_bad_item='maybe' must be fail or skip",
    ),
    # -- the reference release's files ---------------------------------------------------------------------
    "NaN in a release matrix": (
        lambda d: release(d, base="0.9 0.1\n0.2 nan\n"),
        r"sim_x\.txt: row 2, column 2 is nan \(1 non-finite value\(s\)\); every score must be a finite",
    ),
    "Inf in a release matrix": (
        lambda d: release(d, text="1.0 -inf\n0.0 1.0\n"),
        r"sim_text\.txt: row 1, column 2 is -inf",
    ),
    "ragged release matrix": (
        lambda d: release(d, base="0.9 0.1\n0.2\n"),
        r"sim_x\.txt: row 2 has 1 values where the first row has 2 \(ragged rows\)",
    ),
    "non-numeric token": (
        lambda d: release(d, base="0.9 0.1\n0.2 O.8\n"),
        r"sim_x\.txt: row 2, column 2: 'O\.8' is not a number",
    ),
    "wrong matrix shape": (
        lambda d: release(d, text="1 0 0\n0 1 0\n"),
        r"sim_text\.txt has shape \[2 x 3\], expected \[2 x 2\]",
    ),
    "release query without captions": (
        lambda d: release_without_captions(d),
        r"x_query\.json: entry without a `captions` list",
    ),
}


# Runs `python -m visa.run ARGS` once per argument list inside one fresh Python process (the imports, most of
# a start-up on a busy machine, are paid once), capturing each run's exit status and output apart.
DRIVER = """
import contextlib, io, json, runpy, sys
out = []
for argv in json.loads(sys.argv[1]):
    sys.argv = ["visa.run", *argv]
    stdout, stderr, code = io.StringIO(), io.StringIO(), 0
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            runpy.run_module("visa.run", run_name="__main__")
        except SystemExit as e:
            code = e.code
    out.append({"code": code, "stdout": stdout.getvalue(), "stderr": stderr.getvalue()})
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory) -> dict[str, dict]:
    root = tmp_path_factory.mktemp("bad-inputs")
    argvs = []
    for n, (make, _) in enumerate(CASES.values()):
        overrides = make(root / f"case{n}")
        argvs.append([*overrides, "progress=false", f"hydra.run.dir={root / f'run{n}'}"])
    # and one good run, whose outputs test_release_results_are_strict_json reads
    argvs.append([*release(root / "good"), "progress=false", f"hydra.run.dir={root / 'good-run'}"])
    env = {**os.environ, "VISA_CACHE": str(root / "cache"), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", DRIVER, json.dumps(argvs)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.splitlines()[-1])
    return {**dict(zip(CASES, results)), "good release": {**results[-1], "run_dir": root / "good-run"}}


def assert_one_error_line(code: int, stdout: str, stderr: str, expected: str) -> str:
    assert "Traceback" not in stdout + stderr, (stdout + stderr)[-3000:]
    assert code == 1, (stdout + stderr)[-3000:]
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: ") and re.search(expected, lines[0]), lines[0]
    return lines[0]


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line(case, outcomes):
    got = outcomes[case]
    assert_one_error_line(got["code"], got["stdout"], got["stderr"], CASES[case][1])


def test_release_results_are_strict_json(outcomes):
    """results.jsonl and metrics.json hold no NaN/Infinity: a strict parser reads every line."""
    good = outcomes["good release"]
    assert good["code"] == 0, good["stderr"][-2000:]

    def refuse(constant: str):
        raise AssertionError(f"{constant} is not JSON")

    json.loads((good["run_dir"] / "metrics.json").read_text(), parse_constant=refuse)
    lines = (good["run_dir"] / "results.jsonl").read_text().splitlines()
    assert len(lines) == 2 and all(json.loads(line, parse_constant=refuse) for line in lines)


def test_skip_leaves_out_a_truncated_jpeg_and_counts_it(tmp_path):
    folder(tmp_path, GOOD_JSONL + '{"path": "cut.jpg", "caption": "cut off"}\n', cut_jpg=jpeg_bytes(3)[:1500])
    data = FolderDataset(str(tmp_path), on_bad_item="skip").load()
    assert [i.id for i in data.gallery] == ["photo0.jpg", "photo1.jpg"]
    assert [q.text for q in data.queries] == ["a photo", "another"]
    assert len(data.skipped) == 1 and "cut.jpg" in data.skipped[0] and "truncated" in data.skipped[0]


def test_csv_empty_cells_are_no_caption(tmp_path):
    """In a csv an empty cell means "no caption in this column": rows fill different numbers of columns."""
    folder(
        tmp_path, "path,caption,caption_2\nphoto0.jpg,a photo,a picture\nphoto1.jpg,another,\n", name="c.csv"
    )
    data = FolderDataset(str(tmp_path), annotation="c.csv").load()
    assert [q.text for q in data.queries] == ["a photo", "a picture", "another"]


def test_a_scorer_that_gives_infinity_stops_the_run_naming_the_query(tmp_path):
    """A real (tiny) cross-encoder whose output overflows, as float16 can: the score stage stops."""
    import torch
    from transformers import XLMRobertaForSequenceClassification

    sys.path.insert(0, str(Path(__file__).parent))
    import tiny_models

    from visa.cache import Cache
    from visa.data import Dataset, Item, Query
    from visa.errors import VisaError
    from visa.pipeline import Run, Settings
    from visa.scorers.hf_cross_encoder import HFCrossEncoder

    folder = tiny_models.cross_encoder_dir(tmp_path / "ce")
    model = XLMRobertaForSequenceClassification.from_pretrained(folder)
    with torch.no_grad():
        model.classifier.out_proj.bias.fill_(float("inf"))
    model.save_pretrained(folder)
    dataset = Dataset("tiny", [Item("a", "a.jpg")], [Query("a dog on the grass", (0,))])
    run = Run(dataset, Settings(top_k=1, progress=False), Cache(tmp_path / "cache"))
    with pytest.raises(
        VisaError, match=r"the scorer's score is not a finite number for 'a dog on the grass'"
    ):
        run.score(HFCrossEncoder(model=str(folder), device="cpu"), [("a dog on the grass", "a dog")])
