"""Hybrid-modal datasets on tiny files in each benchmark's published format, and the data model."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import pytest
from helpers import tiny_models

from visa.core.errors import VisaError  # noqa: E402
from visa.data import Dataset, Item, Query, check_modalities  # noqa: E402
from visa.data.composed import (  # noqa: E402
    CIRRDataset,
    DemoComposedDataset,
    FashionIQDataset,
    WebQADataset,
    join_fashioniq_captions,
)


def _png(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tiny_models.Image.new("RGB", (8, 8), (len(path.name) * 7 % 255, 0, 0)).save(path)


def write_cirr(root: Path) -> Path:
    names = [f"dev-{i}-0-img{i % 2}" for i in range(8)]
    (root / "image_splits").mkdir(parents=True)
    (root / "captions").mkdir()
    split = {n: f"./dev/{n}.png" for n in names}
    (root / "image_splits" / "split.rc2.val.json").write_text(json.dumps(split))
    for n in names:
        _png(root / "img_raw" / "dev" / f"{n}.png")
    pairs = [
        {
            "pairid": 1,
            "reference": names[0],
            "target_hard": names[3],
            "target_soft": {names[3]: 1.0},
            "caption": "make it  two dogs ",
            "img_set": {"id": 1, "members": names[:6], "reference_rank": 0, "target_rank": 3},
        },
        {
            "pairid": 2,
            "reference": names[5],
            "target_hard": names[7],
            "target_soft": {names[7]: 1.0},
            "caption": "remove the person",
            "img_set": {"id": 2, "members": names[2:8], "reference_rank": 3, "target_rank": 5},
        },
    ]
    (root / "captions" / "cap.rc2.val.json").write_text(json.dumps(pairs))
    return root


def test_cirr_val_queries_targets_exclusion_and_subsets(tmp_path):
    data = CIRRDataset(root=str(write_cirr(tmp_path / "cirr"))).load()
    assert len(data.gallery) == 8 and len(data.queries) == 2
    q = data.queries[0]
    assert q.text == "make it two dogs" and q.modality() == "image+text"
    assert q.reference == data.gallery[0] and q.exclude == (0,) and q.relevant == (3,)
    assert q.subset == (1, 2, 3, 4, 5)  # the group's members other than the reference
    assert data.gallery[0].path.endswith("img_raw/dev/dev-0-0-img0.png")


def test_cirr_test1_and_missing_files_are_one_line(tmp_path):
    root = write_cirr(tmp_path / "cirr")
    pairs = json.loads((root / "captions" / "cap.rc2.val.json").read_text())
    for p in pairs:
        del p["target_hard"], p["target_soft"]
    (root / "captions" / "cap.rc2.test1.json").write_text(json.dumps(pairs))
    (root / "image_splits" / "split.rc2.test1.json").write_text(
        (root / "image_splits" / "split.rc2.val.json").read_text()
    )
    with pytest.raises(VisaError, match="test1 targets are not public"):
        CIRRDataset(root=str(root), split="test1").load()
    with pytest.raises(VisaError) as e:
        CIRRDataset(root=str(tmp_path / "nowhere")).load()
    assert (
        "\n" not in str(e.value) and "cap.rc2.val.json" in str(e.value) and "Cuberick-Orion" in str(e.value)
    )


def write_fashioniq(root: Path) -> Path:
    (root / "captions").mkdir(parents=True)
    (root / "image_splits").mkdir()
    for c, category in enumerate(("dress", "shirt", "toptee")):
        names = [f"B00{c}{i}" for i in range(4)] + ["B0SHARED"]  # an image name in every category
        (root / "image_splits" / f"split.{category}.val.json").write_text(json.dumps(names))
        for n in names:
            _png(root / "images" / f"{n}.png")
        entries = [
            {"target": names[1], "candidate": names[0], "captions": ["is shorter.", "has a red print "]},
            {"target": "B0SHARED", "candidate": names[2], "captions": ["Is darker?", "and longer"]},
        ]
        (root / "captions" / f"cap.{category}.val.json").write_text(json.dumps(entries))
    return root


def test_fashioniq_three_categories_each_its_own_gallery(tmp_path):
    data = FashionIQDataset(root=str(write_fashioniq(tmp_path / "fiq"))).load()
    assert len(data.queries) == 6 and len(data.gallery) == 15
    assert set(data.groups) == {"dress", "shirt", "toptee"}
    shirt = [q for q in data.queries if q.group == "shirt"]
    assert all(
        set(q.relevant) | {data.gallery.index(q.reference)} <= set(data.groups["shirt"]) for q in shirt
    )
    assert shirt[0].text == "Is shorter and has a red print"
    assert data.gallery[shirt[1].relevant[0]].id == "shirt/B0SHARED"
    one = FashionIQDataset(root=str(tmp_path / "fiq"), category="dress").load()
    assert len(one.queries) == 2 and set(one.groups) == {"dress"}
    with pytest.raises(VisaError, match="dataset.category='shoes'"):
        FashionIQDataset(root=str(tmp_path / "fiq"), category="shoes").load()


def test_fashioniq_captions_joined_as_the_community_does():
    assert join_fashioniq_captions(["is more colorful.", "has short sleeves"]) == (
        "Is more colorful and has short sleeves"
    )
    assert join_fashioniq_captions([" darker, ", "Longer?"]) == "Darker and Longer"


def write_webqa(root: Path, as_tsv: bool) -> Path:
    root.mkdir(parents=True)
    data = {
        "d5bbc6d8": {
            "Q": '"What colour is the roof of the pagoda?"',
            "A": ['"Orange."'],
            "split": "val",
            "Qcate": "color",
            "img_posFacts": [{"image_id": 30001, "title": "Pagoda", "caption": "A pagoda  by a lake."}],
            "img_negFacts": [{"image_id": 30002, "title": "Temple", "caption": "A temple."}],
            "txt_posFacts": [],
            "txt_negFacts": [],
        },
        "e1": {"Q": "text only question", "A": ["x"], "split": "val", "img_posFacts": [], "txt_posFacts": []},
        "e2": {
            "Q": "Are there two towers?",
            "A": ["yes"],
            "split": "train",
            "img_posFacts": [{"image_id": 30009, "caption": "train image"}],
        },
        "e3": {
            "Q": "How many boats are on the lake?",
            "A": ["two"],
            "split": "val",
            "img_posFacts": [
                {"image_id": 30003, "caption": "Boats on a lake."},
                {"image_id": 30001, "caption": "A pagoda by a lake."},
            ],
            "img_negFacts": [],
        },
    }
    (root / "WebQA_train_val.json").write_text(json.dumps(data))
    if as_tsv:  # the published form: image_id TAB base64, and the byte offset of each line
        lines, offsets, pos = [], [], 0
        for image_id in (30001, 30002, 30003, 30009):
            buf = io.BytesIO()
            tiny_models.Image.new("RGB", (8, 8), (image_id % 255, 0, 0)).save(buf, "JPEG")
            line = f"{image_id}\t{base64.b64encode(buf.getvalue()).decode()}\n".encode()
            offsets.append(pos)
            pos += len(line)
            lines.append(line)
        (root / "imgs.tsv").write_bytes(b"".join(lines))
        (root / "imgs.lineidx").write_text("\n".join(map(str, offsets)) + "\n")
    else:
        for image_id in (30001, 30002, 30003):
            _png(root / "images" / f"{image_id}.png")
    return root


@pytest.mark.parametrize("as_tsv", [False, True])
def test_webqa_image_queries_over_image_caption_items(tmp_path, as_tsv):
    root = write_webqa(tmp_path / "webqa", as_tsv)
    data = WebQADataset(root=str(root)).load()
    assert [q.text for q in data.queries] == [
        "What colour is the roof of the pagoda?",
        "How many boats are on the lake?",
    ]
    assert [i.id for i in data.gallery] == ["30001", "30002", "30003"]  # val image facts only
    assert data.gallery[0].text == "A pagoda by a lake." and data.gallery[0].modality() == "image+text"
    assert data.queries[0].relevant == (0,) and data.queries[1].relevant == (2, 0)
    assert all(Path(i.path).is_file() for i in data.gallery)


def test_webqa_missing_images_name_where_to_get_them(tmp_path):
    root = write_webqa(tmp_path / "webqa", as_tsv=False)
    (root / "images" / "30002.png").unlink()
    with pytest.raises(VisaError) as e:
        WebQADataset(root=str(root)).load()
    assert "\n" not in str(e.value) and "webqna.github.io" in str(e.value)


def test_demo_composed_has_20_or_more_queries_each_with_its_target():
    data = DemoComposedDataset().load()
    assert len(data.queries) >= 20 and len(data.gallery) >= 40
    for q in data.queries:
        assert q.reference is not None and q.exclude == (data.gallery.index(q.reference),)
        assert len(q.relevant) == 1 and q.relevant[0] not in q.exclude and len(q.text.split()) >= 5


def test_backbone_modalities_checked_before_loading():
    class TextImageOnly:  # what a CLIP-style dual encoder declares
        modalities = frozenset({"text", "image"})

    class Composes:
        modalities = frozenset({"text", "image", "image+text"})

    item = Item("a", "/a.png")
    composed = Dataset("d", [item], [Query("red", (0,), reference=item)])
    with pytest.raises(VisaError) as e:
        check_modalities(composed, TextImageOnly, "clip")
    assert "\n" not in str(e.value) and "query modalities image+text" in str(e.value)
    check_modalities(composed, Composes, "x")
    captioned = Dataset("d", [Item("a", "/a.png", text="a cat")], [Query("cat", (0,))])
    with pytest.raises(VisaError, match="item modalities image\\+text"):
        check_modalities(captioned, TextImageOnly, "clip")
    plain = Dataset("d", [item, Item("v", "/v.mp4", "video")], [Query("cat", (0,))])
    check_modalities(plain, object, "old")  # undeclared: text queries over images and videos, as before
