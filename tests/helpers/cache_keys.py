"""The cache keys that every part config gives today, so a refactor can prove it changed none of them.

`python -m tests.helpers.cache_keys` rewrites tests/fixtures/cache_keys.json (only when a key is meant to
change); tests/test_cache_keys.py compares the current keys with that file."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir

REPO = Path(__file__).resolve().parents[2]
FIXTURE = REPO / "tests" / "fixtures" / "cache_keys.json"
PART_GROUPS = {
    "backbone": "encode_text",
    "question_llm": "ask",
    "answer_mllm": "answer",
    "describer": "describe",
    "scorer": "score",
}
# Options that cannot be built without a user's file or server: their keys are covered by the experiments.
NEEDS_USER_INPUT = {"describer/release", "question_llm/server", "answer_mllm/server"}


def _compose(overrides: list[str]):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose("config", overrides=overrides)


def current_keys() -> dict[str, str]:
    """{"<group>/<option>" or "experiment/<name>/<group>": the key of a fixed input under that part}."""
    from visa.config import register

    register()
    # the demo describer's key records whether Tesseract ran ("ocr": auto); keys here must not depend on
    # what this machine has installed
    from visa.generation import pixel_signals

    available = pixel_signals.tesseract_available
    pixel_signals.tesseract_available = lambda: False
    try:
        return _keys()
    finally:
        pixel_signals.tesseract_available = available


def _keys() -> dict[str, str]:
    from hydra.utils import instantiate

    from visa.cache import make_key
    from visa.method import prompts

    question = "Two dogs run across a snowy field."
    fixed = {
        "encode_text": question,
        "ask": None,  # filled per generator: the question prompt of the run's own template
        "answer": prompts.answer_prompt("Are the dogs running?", ["two dogs"], ("/x.jpg",), "image").as_key(),
        "describe": prompts.Prompt(prompts.describe_prompt("image"), ("/x.jpg",), "image").as_key(),
        "score": [question, "Two dogs run in the snow."],
    }
    keys: dict[str, str] = {}

    def add(name: str, cfg, group: str) -> None:
        part = instantiate(cfg[group], _convert_="all")
        stage = PART_GROUPS[group]
        inputs = fixed[stage]
        if stage == "ask":
            settings = cfg.questions
            inputs = prompts.question_prompt(
                question, settings.max, "image", settings.prompt, settings.constrained
            ).as_key()
        keys[name] = make_key(stage, part.identity(), inputs)

    for group in PART_GROUPS:
        for path in sorted((REPO / "conf" / group).glob("*.yaml")):
            name = f"{group}/{path.stem}"
            if name in NEEDS_USER_INPUT:
                continue
            try:
                add(name, _compose([f"{group}={path.stem}"]), group)
            except Exception as e:  # needs a dataset's settings (region matchers): see the experiments
                keys[name] = f"not built: {type(e).__name__}"
    for path in sorted((REPO / "conf" / "experiment").glob("*.yaml")):
        cfg = _compose([f"experiment={path.stem}"])
        for group in PART_GROUPS:
            if f"{group}/{cfg[group].get('_target_', '')}" in NEEDS_USER_INPUT:
                continue
            try:
                add(f"experiment/{path.stem}/{group}", cfg, group)
            except Exception as e:  # a part that needs a user's file (the release describer)
                keys[f"experiment/{path.stem}/{group}"] = f"not built: {type(e).__name__}"
    return keys


if __name__ == "__main__":
    FIXTURE.write_text(json.dumps(current_keys(), indent=1, sort_keys=True) + "\n")
    print(f"wrote {FIXTURE}", file=sys.stderr)
