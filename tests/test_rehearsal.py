"""A rehearsal of every paper cell before anyone spends a GPU-hour (`pytest -m rehearsal`).

Each of the 12 experiment cells runs as a user would start it, `python -m visa.run experiment=<cell>`, with
only the data location overridden (`data_dir=`; LoTLIP's checkpoint folder through its LOTLIP_DIR variable, as
its config reads it). Every model id the cell names resolves, offline, to a tiny random-weight checkpoint in
that model's published layout inside a temporary `HF_HOME` (tests/helpers/rehearsal_hub.py), and every dataset
is a tiny copy in its published format. So a wrong hub id, loader path, processor call or chat template fails
here, not on a GPU node. Stand-ins (same files, code that runs on CPU): InternVideo2's and EVA-CLIP-18B's hub
code, LoTLIP's open_clip fork (stock open_clip reads its open_clip_config.json). The tiny question LLM's
generation_config spells a reply in the reference's layout, so that questions parse and the answer stage runs
too."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import rehearsal_hub as hub
from helpers import tiny_models

REPO = Path(__file__).resolve().parents[1]
# The paper's table cells (shared METHOD.md): text-to-image, text-to-video and long-text retrieval
PAPER_CELLS = [
    "coco_siglip", "coco_evaclip", "flickr30k_siglip", "flickr30k_evaclip",
    "msrvtt_internvideo2", "didemo_internvideo2", "lsmdc_internvideo2", "msvd_internvideo2",
    "dci_lotlip", "iiw_lotlip", "urban1k_lotlip", "sharegpt4v_lotlip",
]  # fmt: skip

pytestmark = pytest.mark.rehearsal


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    """HF_HOME with every paper model under its real id, the LoTLIP folder, and the datasets."""
    root = tmp_path_factory.mktemp("rehearsal")
    hf_home = root / "hf"
    hub.siglip_open_clip(
        hub.hub_repo(hf_home, "timm/ViT-SO400M-14-SigLIP-384"), "timm/ViT-SO400M-14-SigLIP-384"
    )
    hub.eva_clip_remote_code(hub.hub_repo(hf_home, "BAAI/EVA-CLIP-18B"))
    hub.internvideo2_remote_code(hub.hub_repo(hf_home, "OpenGVLab/InternVideo2-Stage2_6B"))
    hub.qwen_question_llm(hub.hub_repo(hf_home, "Qwen/Qwen2.5-32B-Instruct"))
    hub.qwen2_vl(hub.hub_repo(hf_home, "Qwen/Qwen2-VL-7B-Instruct"))
    hub.llava_next(hub.hub_repo(hf_home, "llava-hf/llava-v1.6-34b-hf"))
    hub.bge_lightweight(hub.hub_repo(hf_home, "BAAI/bge-reranker-v2.5-gemma2-lightweight"))
    lotlip = tiny_models.open_clip_dir(root / "lotlip_bert-ViT-B-16", context_length=128)
    data = root / "data"
    hub.write_datasets(data)
    return {"root": root, "hf_home": hf_home, "lotlip": lotlip, "data": data}


def test_every_paper_cell_has_an_experiment_file():
    for cell in PAPER_CELLS:
        assert (REPO / "conf" / "experiment" / f"{cell}.yaml").is_file(), cell


@pytest.mark.parametrize("cell", PAPER_CELLS)
def test_cell_runs_end_to_end_on_tiny_models(cell, world, tmp_path):
    env = {
        **os.environ,
        "HF_HOME": str(world["hf_home"]),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "LOTLIP_DIR": str(world["lotlip"]),
        "VISA_CACHE": str(tmp_path / "cache"),
    }
    run_dir = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "visa.run",
        f"experiment={cell}",
        f"data_dir={world['data']}",
        "progress=false",
        f"hydra.run.dir={run_dir}",
    ]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["data/gallery"] == 3 and metrics["data/queries"] >= 3
    for stage in ("encode_text", "encode_visual", "describe", "ask", "answer", "score"):
        assert metrics[f"calls/{stage}/computed"] > 0, (stage, metrics)
    assert metrics["questions/fallback"] == 0  # the taught reply parses: every query's answers were asked
    results = [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]
    assert all(len(r["rerank_top"]) == 3 for r in results)


# The re-rankers' experiment files (conf/experiment/rerankers_*.yaml): each new model id resolves to a tiny
# checkpoint in its published layout, and the option runs end to end as a user would start it.
RERANKER_CELLS = [
    ("rerankers_flickr30k_siglip", "pointwise", "judge", ()),
    ("rerankers_flickr30k_siglip", "cross_encoder", "cross_score", ()),
    ("rerankers_coco_siglip", "cross_encoder", "cross_score", ("cross_encoder=blip2_itm",)),
    ("rerankers_msrvtt_internvideo2", "pointwise", "judge", ()),
]


@pytest.fixture(scope="module")
def reranker_world(world) -> dict:
    hf_home = world["hf_home"]
    tiny_models.qwen3_vl_dir(hub.hub_repo(hf_home, "Qwen/Qwen3-VL-Reranker-8B"))
    tiny_models.blip2_itm_dir(hub.hub_repo(hf_home, "Salesforce/blip2-itm-vit-g"))
    return world


def test_every_reranker_experiment_is_rehearsed():
    files = sorted(p.stem for p in (REPO / "conf" / "experiment").glob("rerankers_*.yaml"))
    # INQUIRE-Rerank's cell uses the same model ids as these (LLaVA-v1.6-34B is a paper cell's describer)
    assert files == sorted({cell for cell, *_ in RERANKER_CELLS} | {"rerankers_inquire_rerank"})


@pytest.mark.parametrize("cell, reranker, stage, extra", RERANKER_CELLS)
def test_reranker_cell_runs_on_tiny_models(cell, reranker, stage, extra, reranker_world, tmp_path):
    world = reranker_world
    env = {
        **os.environ,
        "HF_HOME": str(world["hf_home"]),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "VISA_CACHE": str(tmp_path / "cache"),
    }
    run_dir = tmp_path / "run"
    cmd = [
        sys.executable, "-m", "visa.run", f"experiment={cell}", f"reranker={reranker}", *extra,
        f"data_dir={world['data']}", "progress=false", f"hydra.run.dir={run_dir}",
    ]  # fmt: skip
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["reranker"] == reranker and metrics[f"calls/{stage}/computed"] > 0, metrics
    assert "rerank/R@1" in metrics or "rerank/mAP@50" in metrics
