"""Every paper cell composes without its data or weights, and every part's keys match its class."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from visa.assembly import Assembly
from visa.config import check_part, register

REPO = Path(__file__).resolve().parents[1]
CELLS = sorted(p.stem for p in (REPO / "conf" / "experiment").glob("*_*.yaml"))
PAPER = {
    "coco_siglip",
    "coco_evaclip",
    "flickr30k_siglip",
    "flickr30k_evaclip",
    "msrvtt_internvideo2",
    "lsmdc_internvideo2",
    "didemo_internvideo2",
    "msvd_internvideo2",
    "dci_lotlip",
    "iiw_lotlip",
    "urban1k_lotlip",
    "sharegpt4v_lotlip",
}


def test_every_paper_cell_has_a_file():
    assert PAPER <= set(CELLS)


@pytest.mark.parametrize("name", sorted(PAPER))
def test_cell_composes_with_the_methods_settings(name):
    register()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"experiment={name}"])
    Assembly(cfg)  # the run's own checks of every part it uses: unknown keys or wrong types raise VisaError
    assert cfg.retrieval.top_k == 20 and cfg.questions.num == 3 and cfg.fusion.alpha == 0.5
    assert cfg.answers.mode == "per_question"
    assert cfg.questions.constrained is False  # the reference's free sampling with re-asks
    assert cfg.question_llm.model == "Qwen/Qwen2.5-32B-Instruct" and cfg.question_llm.temperature == 0.2
    assert cfg.answer_mllm.model == "Qwen/Qwen2-VL-7B-Instruct" and cfg.answer_mllm.temperature == 0.0
    assert cfg.scorer.cutoff_layers == [28] and list(cfg.scorer.compress_layers) == [24, 40]
    assert cfg.scorer.compress_ratio == 2 and cfg.scorer.attention_softcapping is False  # as the paper ran
    dataset, backbone = name.rsplit("_", 1)
    assert cfg.dataset.name == dataset
    expected = {
        "siglip": "hf-hub:timm/ViT-SO400M-14-SigLIP-384",
        "evaclip": "BAAI/EVA-CLIP-18B",
        "lotlip": "local-dir:",
    }
    if backbone in expected:
        assert cfg.backbone.model.startswith(expected[backbone])
    else:
        assert "InternVideo2" in cfg.backbone.model and cfg.answer_mllm.video_fps == 3.0
        assert cfg.backbone.clean_text is True  # InternVideo2's own caption cleaning (its pre_text)


def test_cfg_job_prints_a_cell_from_the_command_line():
    out = subprocess.run(
        [sys.executable, "-m", "visa.run", "experiment=dci_lotlip", "--cfg", "job"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert "context_length: 128" in out.stdout and "bge-reranker-v2.5-gemma2-lightweight" in out.stdout


@pytest.mark.parametrize(
    "group,name",
    [("backbone", n) for n in ("siglip_so400m", "eva_clip", "clip_vit_b32", "siglip2", "lotlip", "hf_clip")]
    + [("question_llm", "qwen2_5_7b"), ("describer", "qwen2_vl_7b"), ("describer", "llava_1_6_34b")]
    + [("scorer", "bge_reranker_v2_m3"), ("scorer", "cross_encoder")],
)
def test_model_configs_match_their_classes(group, name):
    register()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"{group}={name}"])
    check_part(cfg[group], group)
