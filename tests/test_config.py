"""Bad configuration and bad input stop the run at start-up with one clear line, not a stack trace."""

import json

import pytest
from conftest import REPO, run_cli
from hydra import compose, initialize_config_dir

from visa.config import check_part, register
from visa.data import Item, build_dataset
from visa.errors import VisaError

register()


def compose_cfg(*overrides):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose("config", overrides=list(overrides))


def test_default_config_composes_with_every_part_checked():
    cfg = compose_cfg()
    for group in (
        "dataset",
        "backbone",
        "question_llm",
        "answer_mllm",
        "describer",
        "scorer",
        "fusion",
        "logger",
    ):
        check_part(cfg[group], group)
    assert cfg.retrieval.top_k == 5  # the demo profile's K; the schema default is the paper's 20
    assert compose_cfg("dataset=visa_release").retrieval.top_k == 20


def test_unknown_key_in_a_part_names_the_key_and_the_valid_ones():
    cfg = compose_cfg("+backbone.batchsize=4")
    with pytest.raises(
        VisaError, match=r"backbone.batchsize is not a setting of .*ConSEBackbone; valid keys: "
    ):
        check_part(cfg.backbone, "backbone")


def test_wrong_type_in_a_part_is_rejected():
    cfg = compose_cfg("backbone.top_classes=many")
    with pytest.raises(VisaError, match=r"backbone.top_classes='many' has the wrong type; expected int"):
        check_part(cfg.backbone, "backbone")


def test_structured_schema_rejects_wrong_top_level_types():
    with pytest.raises(Exception, match="top_k"):
        compose_cfg("retrieval.top_k=twenty")
    with pytest.raises(Exception, match="topk"):
        compose_cfg("retrieval.topk=3")


def test_cli_prints_one_line_for_a_bad_part_key(tmp_path):
    proc = run_cli("+scorer.max_len=3", cache=tmp_path / "c", run_dir=tmp_path / "run")
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        "error: scorer.max_len is not a setting of visa.scorers.onnx_cross_encoder.OnnxCrossEncoder; "
        "valid keys: model_dir, max_length, batch_size"
    ]


def test_cli_reports_a_missing_image_before_loading_models(tmp_path):
    annotation = tmp_path / "demo.json"
    entries = json.loads((REPO / "visa/data/demo_images.json").read_text())[:2]
    entries[1]["path"] = "data/no-such-photo.png"
    annotation.write_text(json.dumps(entries))
    proc = run_cli(f"dataset.annotation={annotation}", cache=tmp_path / "c", run_dir=tmp_path / "run")
    assert proc.returncode == 1
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("error: image not found or unreadable: ") and "no-such-photo.png" in line
    assert "Traceback" not in proc.stderr + proc.stdout


def test_empty_caption_and_unknown_ground_truth_name_the_file():
    gallery = [Item("a", "/a.jpg"), Item("b", "/b.jpg")]
    with pytest.raises(VisaError, match=r"ann.json: empty caption for item 'b'"):
        build_dataset("x", gallery, [("a", "a dog"), ("b", ["  "])], "ann.json")
    with pytest.raises(VisaError, match=r"ann.json: caption refers to item 'c', which is not in the gallery"):
        build_dataset("x", gallery, [("c", "a cat")], "ann.json")
    data = build_dataset("x", gallery, [("a", ["one", "two"]), ("b", "three")], "ann.json")
    assert [q.relevant for q in data.queries] == [(0,), (0,), (1,)]


def test_fusion_alpha_outside_range_is_one_line(tmp_path):
    proc = run_cli("fusion.alpha=2", cache=tmp_path / "c", run_dir=tmp_path / "run")
    assert proc.returncode == 1 and proc.stderr.strip() == "error: fusion.alpha=2 is outside [0, 1]"
