"""describer=release: the paper's descriptions read from a released <name>_recap.json, matched by item."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from helpers import tiny_models
from hydra import compose, initialize_config_dir

from visa.cache import SQLiteStore  # noqa: E402
from visa.config import check_part, instantiate_part, register  # noqa: E402
from visa.core.errors import VisaError  # noqa: E402
from visa.data import Dataset, Item, Query  # noqa: E402
from visa.generation.release_describer import ReleaseDescriber  # noqa: E402
from visa.method.prompts import Prompt  # noqa: E402
from visa.method.settings import Settings
from visa.method.stages import Run  # noqa: E402

CONF = str(Path(__file__).resolve().parents[1] / "conf")


def _recap(path: Path, entries: list[dict]) -> Path:
    path.write_text(json.dumps(entries))
    return path


def test_descriptions_by_item_path_first_caption(tmp_path):
    recap = _recap(
        tmp_path / "Flickr30K_recap.json",
        [
            {"image_id": "1000092795.jpg", "captions": ["Two men in a garden.", "ignored"]},
            {"image_id": "val2014/COCO_val2014_000000000042.jpg", "captions": ["A dog."]},
            {"video_id": "video7020", "captions": ["A man cooks."]},
        ],
    )
    describer = ReleaseDescriber(path=str(recap))
    prompts = [
        Prompt("describe", ("/data/flickr30k/flickr30k-images/1000092795.jpg",), "image"),
        Prompt("describe", ("/data/coco/images/val2014/COCO_val2014_000000000042.jpg",), "image"),
        Prompt("describe", ("/data/msrvtt/videos/all/video7020.mp4",), "video"),
    ]
    assert describer.generate(prompts) == ["Two men in a garden.", "A dog.", "A man cooks."]


def test_a_missing_item_is_one_line_naming_it(tmp_path):
    recap = _recap(tmp_path / "r.json", [{"image_id": "a.jpg", "captions": ["A."]}])
    with pytest.raises(VisaError) as e:
        ReleaseDescriber(path=str(recap)).generate([Prompt("d", ("/x/imgs/b.jpg",), "image")])
    assert "\n" not in str(e.value) and "/x/imgs/b.jpg" in str(e.value) and "'b.jpg'" in str(e.value)
    with pytest.raises(VisaError, match="cannot read"):
        ReleaseDescriber(path=str(tmp_path / "nope.json")).identity()
    bad = _recap(tmp_path / "bad.json", [{"image_id": "a.jpg"}])
    with pytest.raises(VisaError, match="entry 0"):
        ReleaseDescriber(path=str(bad)).generate([Prompt("d", ("a.jpg",), "image")])


def test_cache_key_follows_the_files_content_not_its_place(tmp_path):
    recap = _recap(tmp_path / "r.json", [{"image_id": "img0.png", "captions": ["First."]}])
    moved = tmp_path / "elsewhere.json"
    shutil.copy(recap, moved)
    assert ReleaseDescriber(path=str(recap)).identity() == ReleaseDescriber(path=str(moved)).identity()
    edited = _recap(tmp_path / "e.json", [{"image_id": "img0.png", "captions": ["Second."]}])
    assert ReleaseDescriber(path=str(edited)).identity() != ReleaseDescriber(path=str(recap)).identity()

    paths = tiny_models.write_images(tmp_path / "imgs", 1)
    dataset = Dataset("t", [Item("img0.png", str(paths[0]))], [Query("a", (0,))])
    cache = SQLiteStore(tmp_path / "cache")
    run = Run(dataset, Settings(progress=False), cache)
    assert run.describe(ReleaseDescriber(path=str(recap)), dataset.gallery) == {"img0.png": "First."}
    again = Run(dataset, Settings(progress=False), cache)
    assert again.describe(ReleaseDescriber(path=str(moved)), dataset.gallery) == {"img0.png": "First."}
    assert again.runner.stats["describe"].cached == 1
    third = Run(dataset, Settings(progress=False), cache)
    assert third.describe(ReleaseDescriber(path=str(edited)), dataset.gallery) == {"img0.png": "Second."}
    assert third.runner.stats["describe"].computed == 1


def test_config_selects_it(tmp_path):
    recap = _recap(tmp_path / "r.json", [{"image_id": "a.jpg", "captions": ["A."]}])
    register()
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose(
            "config",
            overrides=["experiment=flickr30k_siglip", "describer=release", f"describer.path={recap}"],
        )
    check_part(cfg.describer, "describer")
    describer = instantiate_part(cfg, "describer")
    assert isinstance(describer, ReleaseDescriber) and describer.path == str(recap)
