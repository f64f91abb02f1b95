"""Bad input and faults, as a user meets them: `python -m visa.run ...` in a fresh process stops with exit
status 1 and one line `error: ...` that names the file, key or value, and never a Python traceback.

docs/bad_inputs.md lists these cases as a table (input -> what the user sees); keep the two in step.
"""

from __future__ import annotations

import io
import json
import os
import re
import struct
import subprocess
import sys
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, requires
from helpers.runs import run_in_one_process
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


def png_of_zeros(width: int, height: int) -> bytes:
    """A complete, valid 1-bit PNG of `width` x `height` black pixels: a few kB on disk whatever its size
    (the shape of a decompression bomb), written by hand so that no test holds its pixels in memory."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\0" * (1 + (width + 7) // 8)  # filter byte, then the row's bits
    deflate = zlib.compressobj(9)
    data = b"".join(deflate.compress(row) for _ in range(height)) + deflate.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1 bit, grayscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


def png_bytes(seed: int = 0, size: int = 64) -> bytes:
    pixels = (np.random.default_rng(seed).random((size, size, 3)) * 255).astype("uint8")
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()


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


def damaged_cache(root: Path) -> list[str]:
    """A cache with results, then garbage written over its middle pages (a disk or copy fault)."""
    from visa.cache import SQLiteStore

    cache = SQLiteStore(root)
    rng = np.random.default_rng(0)
    for i in range(200):
        cache.put_many("encode_text", {f"{i:064x}": rng.random(256, dtype=np.float32)})
    cache.close()
    path = root / "visa-cache.sqlite"
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.seek(2 * 4096)  # past the header and schema pages
        f.write(rng.bytes(size // 2))
    return ["dataset.limit=1", f"cache_dir={root}"]


def garbage_cache(root: Path) -> list[str]:
    root.mkdir(parents=True)
    (root / "visa-cache.sqlite").write_bytes(np.random.default_rng(1).bytes(10000))
    return ["dataset.limit=1", f"cache_dir={root}"]


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
    "wrong type of a top-level setting": (
        lambda d: ["retrieval.top_k=ten"],
        r"^error: config: retrieval\.top_k=ten: Value 'ten' of type 'str' could not be converted to Integer$",
    ),
    "wrong type in a sweep": (
        lambda d: ["-m", "retrieval.top_k=1,ten"],
        r"^error: config: retrieval\.top_k=ten: Value 'ten' of type 'str' could not be converted to Integer$",
    ),
    "unknown config option": (
        lambda d: ["backbone=nonexistent"],
        r"^error: config: In 'config': Could not find 'backbone/nonexistent'; Available options in "
        r"'backbone': clip_vit_b32, .*demo, ",
    ),
    "an override Hydra cannot parse": (
        lambda d: ["retrieval.top_k=[1"],
        r"^error: config: retrieval\.top_k=\[1; no viable alternative at input '\[1'$",
    ),
    "unknown key": (
        lambda d: ["+dataset.limits=3"],
        r"dataset\.limits is not a setting of visa\.data\.demo\.DemoDataset; "
        r"valid keys: kind, annotation, limit",
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
    "decompression bomb": (
        lambda d: folder(d, GOOD_JSONL, bomb_png=png_of_zeros(20000, 20000)),
        r"bomb\.png \(too large to decode safely: 400,000,000 pixels, above Pillow's limit of 89,478,485 "
        r"\(a decompression bomb, or a huge scan: scale it down\)\): fix or remove it, or set dataset\.",
    ),
    "huge dimensions": (  # above Pillow's limit, below twice it (where Pillow itself only warns)
        lambda d: folder(d, GOOD_JSONL, wide_png=png_of_zeros(100000, 1000)),
        r"wide\.png \(too large to decode safely: 100,000,000 pixels, above Pillow's limit",
    ),
    "truncated PNG": (
        lambda d: folder(d, GOOD_JSONL, cut_png=png_bytes(4)[:5000]),
        r"cut\.png \(not a readable image \(.*\)\): fix or remove it, or set dataset\.on_bad_item=skip",
    ),
    "on_bad_item=maybe": (
        lambda d: [*folder(d, GOOD_JSONL), "dataset.on_bad_item=maybe"],
        r"dataset\.on_bad_item='maybe' must be one of fail, skip",
    ),
    # -- secrets and nested parts --------------------------------------------------------------------------
    "api_key in the config": (
        lambda d: ["question_llm=qwen2_5_32b_sglang", "+question_llm.server.api_key=sk-never-seen-1"],
        r"question_llm\.server\.api_key: secrets are not taken from the command line \(Hydra would save it "
        r"in the run folder's \.hydra/overrides\.yaml\); .*api_key_env=OPENAI_API_KEY$",
    ),
    "token in a part": (
        lambda d: ["+scorer.hf_token=hf_never_seen_2"],
        r"scorer\.hf_token: secrets are not taken from the command line",
    ),
    "a secret inside a mapping": (
        lambda d: [
            "question_llm=server",
            "question_llm.model=m",
            "+question_llm.server={api_key: sk-never-seen-4}",
        ],
        r"question_llm\.server\.api_key: secrets are not taken from the command line",
    ),
    "a secret in Hydra's env_set": (
        lambda d: ["+hydra.job.env_set.OPENAI_API_KEY=sk-never-seen-5"],
        r"hydra\.job\.env_set\.OPENAI_API_KEY: secrets are not taken from the command line",
    ),
    "the key itself in api_key_env": (
        lambda d: [
            "question_llm=server",
            "question_llm.model=m",
            "+question_llm.api_key_env=sk-never-seen-3",
        ],
        r"question_llm\.api_key_env must be the name of an environment variable \(letters, digits, _\)",
    ),
    "unknown key in a server": (
        lambda d: ["question_llm=qwen2_5_32b_sglang", "+question_llm.server.tp_size=2"],
        r"question_llm\.server\.tp_size is not a setting of visa\.generation\.sglang\.SGLangServer; valid",
    ),
    "server as a plain mapping": (
        lambda d: ["question_llm=server", "question_llm.model=m", "+question_llm.server={tp: 2}"],
        r"question_llm\.server is a mapping without _target_",
    ),
    # -- the cache -----------------------------------------------------------------------------------------
    "damaged cache": (
        damaged_cache,
        r"the cache file .*/visa-cache\.sqlite is damaged \(database disk image is malformed\); nothing was "
        r"deleted\. Move it aside with `python -m visa\.cache move-aside .*`",
    ),
    "garbage cache file": (
        garbage_cache,
        r"the cache file .*/visa-cache\.sqlite is damaged \(file is not a database\); nothing was deleted",
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
        r"x_query\.json: entry 0 is not \{\"image_id\" or \"video_id\": file, \"captions\"",
    ),
}


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory) -> dict[str, dict]:
    root = tmp_path_factory.mktemp("bad-inputs")
    argvs = []
    for n, (make, _) in enumerate(CASES.values()):
        overrides = make(root / f"case{n}")
        run_dirs = [f"hydra.run.dir={root / f'run{n}'}", f"hydra.sweep.dir={root / f'sweep{n}'}"]
        argvs.append([*overrides, "progress=false", *run_dirs])
    # and one good run, whose outputs test_release_results_are_strict_json reads
    argvs.append([*release(root / "good"), "progress=false", f"hydra.run.dir={root / 'good-run'}"])
    env = {**os.environ, "VISA_CACHE": str(root / "cache"), "HF_HUB_OFFLINE": "1"}
    results, _ = run_in_one_process(argvs, REPO, env, timeout=600)
    cases = {name: {**r, "run_dir": root / f"run{n}"} for n, (name, r) in enumerate(zip(CASES, results))}
    return {**cases, "good release": {**results[-1], "run_dir": root / "good-run"}}


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
    assert "never_seen" not in got["stderr"] and "never-seen" not in got["stderr"]  # a secret is not echoed


def test_a_secret_on_the_command_line_is_written_nowhere(outcomes):
    """Refused before Hydra starts: no run folder is made, so no .hydra/overrides.yaml holds the secret."""
    secret_cases = [
        "api_key in the config",
        "token in a part",
        "the key itself in api_key_env",
        "a secret inside a mapping",
        "a secret in Hydra's env_set",
    ]
    for name in secret_cases:
        assert not outcomes[name]["run_dir"].exists(), name


def test_a_secret_in_a_config_file_is_refused_and_scrubbed_from_the_run_folder(tmp_path):
    """A key in a yaml file of the user's config folder: Hydra copies the config into .hydra/config.yaml
    before the run can look at it; the run refuses it with one line and rewrites that copy without it."""
    conf = tmp_path / "conf" / "question_llm"
    conf.mkdir(parents=True)
    (conf / "leaky.yaml").write_text(
        "_target_: visa.generation.openai_api.OpenAIChatGenerator\nmodel: m\nurl: http://127.0.0.1:1/v1\n"
        "api_key: sk-never-seen-6\n"
    )
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "visa.run", "--config-dir", str(tmp_path / "conf"), "question_llm=leaky"]
    proc = subprocess.run(
        [*cmd, "progress=false", f"hydra.run.dir={run_dir}"],
        cwd=REPO,
        env={**os.environ, "VISA_CACHE": str(tmp_path / "cache")},
        capture_output=True,
        text=True,
    )
    assert_one_error_line(
        proc.returncode,
        proc.stdout,
        proc.stderr,
        r"question_llm\.api_key: secrets are not taken from the config",
    )
    assert (run_dir / ".hydra" / "config.yaml").is_file()
    assert [f for f in run_dir.rglob("*") if f.is_file() and b"never-seen" in f.read_bytes()] == []


def test_a_path_written_with_a_tilde_is_the_home_folder(tmp_path):
    """`dataset.root=~/photos`, as docs/datasets.md writes it (Hydra's grammar has no `~`): the home folder,
    as a shell would expand it. Here the folder's captions file has an empty caption: the one-line error
    names the expanded path."""
    folder(tmp_path / "home" / "photos", '{"path": "photo0.jpg", "caption": ""}\n')
    env = {**os.environ, "HOME": str(tmp_path / "home"), "VISA_CACHE": str(tmp_path / "cache")}
    cmd = [sys.executable, "-m", "visa.run", "dataset=folder", "dataset.root=~/photos", "progress=false"]
    proc = subprocess.run(
        [*cmd, f"hydra.run.dir={tmp_path / 'run'}"], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert_one_error_line(
        proc.returncode,
        proc.stdout,
        proc.stderr,
        rf"^error: {re.escape(str(tmp_path / 'home' / 'photos' / 'captions.jsonl'))}:1: empty caption",
    )


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
    from helpers import tiny_models
    from transformers import XLMRobertaForSequenceClassification

    from visa.cache import SQLiteStore
    from visa.core.errors import VisaError
    from visa.data import Dataset, Item, Query
    from visa.method.settings import RetrievalSettings, Settings
    from visa.method.stages import Run
    from visa.scorers.hf_cross_encoder import HFCrossEncoder

    folder = tiny_models.cross_encoder_dir(tmp_path / "ce")
    model = XLMRobertaForSequenceClassification.from_pretrained(folder)
    with torch.no_grad():
        model.classifier.out_proj.bias.fill_(float("inf"))
    model.save_pretrained(folder)
    dataset = Dataset("tiny", [Item("a", "a.jpg")], [Query("a dog on the grass", (0,))])
    run = Run(
        dataset,
        Settings(retrieval=RetrievalSettings(top_k=1), progress=False),
        SQLiteStore(tmp_path / "cache"),
    )
    with pytest.raises(
        VisaError, match=r"the scorer's score is not a finite number for 'a dog on the grass'"
    ):
        run.score(HFCrossEncoder(model=str(folder), device="cpu"), [("a dog on the grass", "a dog")])


def test_a_key_from_the_environment_never_reaches_wandb_files_or_names(tmp_path):
    """The server key lives in the environment (api_key_env); a W&B offline run of a job with overrides
    writes it nowhere in the run folder, and the run's name, built from the overrides, keeps only the
    harmless ones."""
    requires("wandb", "tracking")
    secret = "sk-visa-test-4f1c9e"
    env = {
        **os.environ,
        "VISA_TEST_KEY": secret,
        "OPENAI_API_KEY": secret,
        "HOME": str(tmp_path / "home"),
        "VISA_CACHE": str(tmp_path / "cache"),
        "WANDB_MODE": "offline",
        "WANDB_CONFIG_DIR": str(tmp_path / "wandb-home/config"),
        "WANDB_CACHE_DIR": str(tmp_path / "wandb-home/cache"),
        "WANDB_DATA_DIR": str(tmp_path / "wandb-home/data"),
    }
    env.pop("WANDB_API_KEY", None)
    run_dir = tmp_path / "run"
    overrides = [
        *release(tmp_path / "data"),
        "logger=wandb",
        "logger.log_artifact=false",
        "question_llm=server",
        "question_llm.model=m",
        "+question_llm.api_key_env=VISA_TEST_KEY",
        "fusion.alpha=0.3",
    ]
    cmd = [sys.executable, "-m", "visa.run", *overrides, "progress=false", f"hydra.run.dir={run_dir}"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert secret not in proc.stdout + proc.stderr
    files = [f for f in (tmp_path).rglob("*") if f.is_file()]
    assert any(f.suffix == ".wandb" for f in files)
    leaked = [str(f) for f in files if secret.encode() in f.read_bytes()]
    assert leaked == []


def test_run_names_from_overrides_drop_secret_looking_keys():
    from visa.tracking import safe_override_dirname, scrub

    task = ["fusion.alpha=0.3", "+question_llm.server.api_key=sk-1", "scorer.hf_token=t", "questions.num=2"]
    assert safe_override_dirname(task, "unused") == "fusion.alpha=0.3,questions.num=2"
    assert safe_override_dirname(task[:1], "fusion.alpha=0.3") == "fusion.alpha=0.3"
    assert (
        scrub("multirun/x/fusion.alpha=0.3,question_llm.server.api_key=sk-1")
        == "multirun/x/fusion.alpha=0.3,"
    )


def test_move_aside_renames_a_damaged_cache_and_the_next_run_starts_anew(tmp_path):
    damaged_cache(tmp_path / "cache")
    cmd = [sys.executable, "-m", "visa.cache", "move-aside", str(tmp_path / "cache")]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert proc.stdout.startswith("moved aside: ") and len(proc.stdout.splitlines()) == 1
    names = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert len(names) == 1 and re.fullmatch(r"visa-cache\.damaged-\d{8}-\d{6}\.sqlite", names[0])

    from visa.cache import SQLiteStore

    cache = SQLiteStore(tmp_path / "cache")  # a new, empty cache beside the damaged one, which is kept
    assert cache.get_many(["0" * 64]) == {}
    cache.close()


def _ignore_sigint() -> None:
    """What a shell does to a script's background command (`cmd &` without job control, as CI runners and
    batch scripts start them): SIGINT ignored from the start."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


@pytest.mark.slow
@pytest.mark.parametrize(
    "state, started_ignoring",
    [("converting", False), ("converting", True), ("converted", False)],
    ids=["during-gguf-conversion", "during-conversion-started-with-sigint-ignored", "model-converted"],
)
def test_ctrl_c_prints_what_was_saved_and_exits_130(tmp_path, request, state, started_ignoring):
    """SIGINT once the describe stage has saved its results, while the question LLM loads and writes (the
    slow part of the demo): one line naming what was saved and how to resume, status 130. The first run
    after install on a new machine converts the LLM's GGUF file at that moment (an empty model cache): the
    signal stops the conversion too and leaves no half-written model folder; with the model converted it
    stops the question stage. A run started with SIGINT ignored (a script's background command) stops too."""
    import signal
    import sqlite3
    import time

    if state == "converted":
        models = request.getfixturevalue("converted_models")
    else:
        models = tmp_path / "models"  # a newcomer's machine: nothing converted yet
    cache = tmp_path / "cache"
    env = {
        **os.environ,
        "VISA_CACHE": str(cache),
        "VISA_MODEL_CACHE": str(models),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }
    cmd = [
        sys.executable,
        "-m",
        "visa.run",
        "dataset.limit=1",
        "progress=false",
        f"hydra.run.dir={tmp_path}/r",
    ]
    proc = subprocess.Popen(
        cmd,
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_ignore_sigint if started_ignoring else None,
    )
    try:
        described = 0
        deadline = time.monotonic() + 400
        while not described and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
            if not (cache / "visa-cache.sqlite").exists():
                continue
            with sqlite3.connect(f"file:{cache / 'visa-cache.sqlite'}?mode=ro", uri=True, timeout=30) as db:
                try:
                    described = db.execute("SELECT COUNT(*) FROM results WHERE stage='describe'").fetchone()[
                        0
                    ]
                except sqlite3.OperationalError:  # the table is not created yet
                    continue
        assert described and proc.poll() is None, "the run did not reach the ask stage, or ended first"
        proc.send_signal(signal.SIGINT)
        stopped = time.monotonic()
        stdout, stderr = proc.communicate(timeout=300)
        waited = time.monotonic() - stopped
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "Traceback" not in stdout + stderr and "KeyboardInterrupt" not in stderr, stderr[-3000:]
    assert proc.returncode == 130, f"status {proc.returncode} {waited:.0f} s after SIGINT: {stderr[-3000:]}"
    # stderr also holds the model loaders' own progress bars; the run's message is its one last line
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert [line for line in lines if line.startswith(("interrupted", "error"))] == lines[-1:], stderr
    assert re.fullmatch(
        r"interrupted: \d+ new result\(s\) \(encode_text \d+, encode_visual 1, describe 1.*\) saved in the "
        r"cache .*visa-cache\.sqlite, with every earlier one; run the same command again to resume \(nothing "
        r"saved is computed again\)",
        lines[-1],
    ), lines[-1]
    kept = sorted(p.name for p in models.iterdir()) if models.exists() else []
    assert not [name for name in kept if ".partial-" in name], kept  # no half-written model folder left
    if state == "converting":  # stopped before the conversion was kept: the next run converts again
        assert kept == [], kept
