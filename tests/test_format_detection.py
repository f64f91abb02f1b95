"""dataset.format=auto (COCO's and Flickr30K's default): the annotation's format is told from the file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import REPO
from omegaconf import OmegaConf
from PIL import Image

from visa.core.errors import VisaError
from visa.data.formats import AnnotatedDataset, detect_format


def image(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (200, 20, 20)).save(path)


def coco_like(root: Path, annotation: str) -> AnnotatedDataset:
    """The coco yaml's own settings, on a small folder."""
    cfg = OmegaConf.load(REPO / "conf/dataset/coco.yaml")
    assert cfg.format == "auto"
    return AnnotatedDataset(
        name="coco",
        root=str(root),
        annotation=annotation,
        media_dir="images",
        format=cfg.format,
        split="test",
    )


def test_a_lavis_coco_file_without_dataset_format_loads(tmp_path):
    entries = [
        {"image": "val2014/a.jpg", "caption": ["A red square.", "Something red."], "image_id": "a"},
        {"image": "val2014/b.jpg", "caption": ["Another red square."], "image_id": "b"},
    ]
    (tmp_path / "coco_karpathy_test.json").write_text(json.dumps(entries))
    image(tmp_path / "images/val2014/a.jpg")
    image(tmp_path / "images/val2014/b.jpg")
    ds = coco_like(tmp_path, "coco_karpathy_test.json").load()
    assert [i.id for i in ds.gallery] == ["val2014/a.jpg", "val2014/b.jpg"]
    assert [(q.text, q.relevant) for q in ds.queries] == [
        ("A red square.", (0,)),
        ("Something red.", (0,)),
        ("Another red square.", (1,)),
    ]


def test_a_karpathy_file_is_still_read_as_karpathy(tmp_path):
    karpathy = {
        "images": [
            {
                "filepath": "val2014",
                "filename": "a.jpg",
                "split": "test",
                "sentences": [{"raw": "A red one."}],
            },
            {"filepath": "val2014", "filename": "b.jpg", "split": "train", "sentences": [{"raw": "Train."}]},
        ]
    }
    (tmp_path / "dataset_coco.json").write_text(json.dumps(karpathy))
    image(tmp_path / "images/val2014/a.jpg")
    ds = coco_like(tmp_path, "dataset_coco.json").load()
    assert [q.text for q in ds.queries] == ["A red one."]


@pytest.mark.parametrize(
    "name, content, expected",
    [
        ("a.json", [{"video": "v.mp4", "caption": "c"}], "internvideo"),
        ("a.jsonl", [{"image": "x", "conversations": []}], "lotlip"),
        ("splits.json", {"test": ["x.json"]}, "dci"),
    ],
)
def test_other_formats_are_told_apart(tmp_path, name, content, expected):
    path = tmp_path / name
    rows = content if name.endswith(".json") else None
    path.write_text(json.dumps(rows) if rows is not None else "\n".join(json.dumps(r) for r in content))
    assert detect_format(path) == expected


def test_an_unknown_layout_names_the_file_and_the_key_to_set(tmp_path):
    path = tmp_path / "odd.json"
    path.write_text(json.dumps([{"picture": "x.jpg", "text": "t"}]))
    with pytest.raises(VisaError, match=r"odd.json: cannot tell the annotation format .* set dataset.format"):
        detect_format(path)
