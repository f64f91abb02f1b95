"""Bad configuration and bad input stop the run at start-up with one clear line, not a stack trace."""

import json

import pytest
from conftest import REPO, run_cli
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from visa.assembly import Assembly
from visa.config import GROUPS, LOGGER, PART_GROUPS, build, check_part, register
from visa.core.errors import VisaError
from visa.data import Item, build_dataset
from visa.tracking import Logger

register()


def compose_cfg(*overrides):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose("config", overrides=list(overrides))


def test_default_config_composes_with_every_part_checked():
    cfg = compose_cfg()
    uses = Assembly(cfg).uses  # the run's own checks: the groups its re-ranker uses
    for group in PART_GROUPS:  # conf/config.yaml's defaults list chooses an option of every group
        check_part(cfg[group.name], group.name, uses if group.name == "reranker" else ())
    assert cfg.retrieval.top_k == 5  # the demo profile's K; the schema default is the paper's 20
    assert compose_cfg("dataset=visa_release").retrieval.top_k == 20


def test_the_groups_are_those_of_the_schema_and_the_defaults_list():
    import yaml

    defaults = yaml.safe_load((REPO / "conf" / "config.yaml").read_text())["defaults"]
    chosen = [next(iter(d)).removeprefix("optional ") for d in defaults if isinstance(d, dict)]
    assert [g for g in chosen if g not in ("experiment", "sweep")] == list(GROUPS)
    assert GROUPS == tuple(g.name for g in PART_GROUPS) and "dataset" in GROUPS and "logger" in GROUPS


def test_a_part_that_lacks_its_groups_protocol_is_one_line():
    cfg = compose_cfg()
    built = build(cfg, LOGGER)
    assert isinstance(built, Logger)
    cfg.logger = OmegaConf.create({"_target_": "visa.method.fusion.MinMaxFusion"})
    with pytest.raises(
        VisaError,
        match=r"^logger._target_=visa.method.fusion.MinMaxFusion lacks finish, log, start; a logger class "
        r"must have what visa.tracking.Logger declares$",
    ):
        build(cfg, LOGGER)


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
        "valid keys: model_dir, max_length, query_max_length, batch_size; did you mean scorer.max_length?"
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


GENERATOR_OPTIONS = {
    "question_llm": ("demo", "qwen2_5_7b", "qwen2_5_32b", "qwen2_5_32b_sglang"),
    "answer_mllm": ("demo", "qwen2_vl_7b", "qwen2_vl_7b_sglang"),
    "describer": ("demo", "qwen2_vl_7b", "llava_1_6_34b", "qwen2_vl_7b_sglang"),
}


@pytest.mark.parametrize(
    "group, option", [(g, o) for g, options in GENERATOR_OPTIONS.items() for o in options]
)
def test_every_generator_yaml_is_checked_and_builds_without_loading(group, option):
    from visa.config import instantiate_part

    cfg = compose_cfg(f"{group}={option}")
    part = instantiate_part(cfg, group)  # builds; loads no weights and starts no server
    assert part.identity()["model" if option != "demo" or group != "describer" else "generator"]
    if option.endswith("_sglang"):
        assert part.server.model_path == cfg[group].model and part.server.process is None


def test_a_key_the_chosen_backend_does_not_take_is_an_error_not_dropped():
    cfg = compose_cfg("answer_mllm=qwen2_vl_7b", "+answer_mllm.gguf_file=x.gguf")
    with pytest.raises(VisaError, match=r"answer_mllm.gguf_file is not a setting of .*HFVisionGenerator"):
        check_part(cfg.answer_mllm, "answer_mllm")
    cfg = compose_cfg("question_llm=qwen2_5_7b", "+question_llm.url=http://x/v1")
    with pytest.raises(VisaError, match=r"question_llm.url is not a setting of .*HFTextGenerator"):
        check_part(cfg.question_llm, "question_llm")
    cfg = compose_cfg("question_llm=qwen2_5_32b_sglang", "+question_llm.server.gpus=2")
    with pytest.raises(VisaError, match=r"question_llm.server.gpus is not a setting of .*SGLangServer"):
        check_part(cfg.question_llm, "question_llm")


def test_generator_identities_are_those_of_the_former_single_class():
    """The identities keep the keys `make_generator` built before the split (caches of unchanged settings
    stay valid); the paper configs now carry the reference's lengths, repetition penalty and frame rule."""
    from visa.config import instantiate_part

    vision = instantiate_part(compose_cfg("answer_mllm=qwen2_vl_7b"), "answer_mllm").identity()
    assert vision == {
        "generator": "hf-vision",
        "model": "Qwen/Qwen2-VL-7B-Instruct",
        "gguf_file": None,
        "dtype": "bfloat16",
        "max_new_tokens": 1024,
        "temperature": 0.0,
        "top_p": 1.0,
        "system_prompt": None,
        "uses_context": False,
        "seed": None,
        "repetition_penalty": 1.05,
        "video": {"fps": 3.0, "max_frames": None, "frames": "qwen_vl_utils", "min_pixels": 128 * 28 * 28},
        "max_pixels": None,
    }
    text = instantiate_part(compose_cfg("question_llm=qwen2_5_7b"), "question_llm").identity()
    assert text == {
        "generator": "hf-text",
        "model": "Qwen/Qwen2.5-7B-Instruct",
        "gguf_file": None,
        "dtype": "bfloat16",
        "max_new_tokens": 1024,
        "temperature": 0.2,
        "top_p": 1.0,
        "system_prompt": None,
        "uses_context": False,
        "seed": 0,
        "repetition_penalty": 1.0,
        "noise": "per_prompt",  # it samples: noise of its own per prompt (visa.generation.sampling)
    }
    served = instantiate_part(compose_cfg("answer_mllm=qwen2_vl_7b_sglang"), "answer_mllm").identity()
    assert served == {
        **{k: v for k, v in vision.items() if k not in ("gguf_file", "dtype")},
        "generator": "sglang-chat",
    }
