"""Evaluation protocols of the paper's cells: LoTLIP's IIW set and caption rewriting, DiDeMo paragraphs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from PIL import Image

from visa.config import register
from visa.core.errors import VisaError
from visa.data.formats import AnnotatedDataset, rewrite_lotlip

CONF = str(Path(__file__).resolve().parents[1] / "conf")


def _jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _image(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (10, 20, 30)).save(path)


def _iiw_tree(root: Path) -> None:
    """LoTLIP's layout: annotations per subset (fields as published), images per subset folder."""
    anno = root / "imageinwords"
    _jsonl(
        anno / "DOCCI_Test/data.jsonl",
        [{"image": "test_00731", "DOCCI": "short", "IIW": "A toilet.\nTowels"}],
    )
    _jsonl(anno / "IIW-400/data.jsonl", [{"image/key": "aar_test_04600", "IIW": "A flower</s>Blue sky."}])
    _jsonl(
        anno / "DCI_Test/data.jsonl", [{"image": "sa_1545038.jpg", "ex_id": "1", "IIW": "A balcony. . Boxes"}]
    )
    for rel in ("docci/test_00731.jpg", "docci_aar/aar_test_04600.jpg", "dci/sa_1545038.jpg"):
        _image(root / rel)


def _iiw(root: Path, **kw) -> AnnotatedDataset:
    return AnnotatedDataset(
        name="iiw", root=str(root), annotation="imageinwords", media_dir=".", format="iiw", **kw
    )


def test_lotlip_caption_rewriting():
    assert rewrite_lotlip("A dog.\nIt runs</s>on grass. ") == "A dog. It runs. on grass"
    assert rewrite_lotlip("Mr. Smith . . waves\n\n") == "Mr. Smith. waves"


def test_iiw_is_docci_test_iiw_400_and_dci_test_in_lotlips_order(tmp_path):
    _iiw_tree(tmp_path)
    ds = _iiw(tmp_path, caption_rewrite="lotlip").load()
    assert [i.id for i in ds.gallery] == [
        "docci/test_00731.jpg",
        "docci_aar/aar_test_04600.jpg",
        "dci/sa_1545038.jpg",
    ]
    assert [q.text for q in ds.queries] == ["A toilet. Towels", "A flower. Blue sky", "A balcony. Boxes"]
    only = _iiw(tmp_path, split="IIW-400").load()
    assert [i.id for i in only.gallery] == ["docci_aar/aar_test_04600.jpg"]
    assert only.queries[0].text == "A flower</s>Blue sky."  # no rewriting unless asked
    with pytest.raises(VisaError, match="IIW-401 is not an IIW subset"):
        _iiw(tmp_path, split="IIW-401").load()


def test_iiw_missing_subset_file_is_named(tmp_path):
    _iiw_tree(tmp_path)
    (tmp_path / "imageinwords/DCI_Test/data.jsonl").unlink()
    with pytest.raises(VisaError, match="DCI_Test/data.jsonl"):
        _iiw(tmp_path).load()


@pytest.mark.parametrize("name", ["iiw", "dci", "urban1k", "sharegpt4v"])
def test_long_text_cells_use_lotlips_protocol(name, tmp_path):
    register()
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("config", overrides=[f"experiment={name}_lotlip", f"data_dir={tmp_path}"])
    assert cfg.dataset.caption_rewrite == "lotlip"
    if name == "iiw":
        assert (cfg.dataset.format, cfg.dataset.split) == ("iiw", "all")


def test_didemo_paragraph_joins_sentences_with_one_space(tmp_path):
    register()
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("config", overrides=["dataset=didemo", f"data_dir={tmp_path}"])
    assert cfg.dataset.paragraph is True
    from helpers.videos import make_video

    root = tmp_path / "didemo"
    (root / "videos").mkdir(parents=True)
    make_video(root / "videos/v1.mp4")
    (root / "didemo_ret_test.json").write_text(
        json.dumps([{"video": "v1.mp4", "caption": ["the man talks", "A dog barks.", "camera pans"]}])
    )
    ds = AnnotatedDataset(
        name="didemo",
        root=str(root),
        annotation="didemo_ret_test.json",
        media_dir="videos",
        format="internvideo",
        paragraph=True,
    ).load()
    assert ds.queries[0].text == "the man talks A dog barks. camera pans"  # no full stop added
