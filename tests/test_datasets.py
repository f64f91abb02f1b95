"""Dataset loaders on small files written in each benchmark's published format, and the folder dataset."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers.videos import make_video
from hydra import compose, initialize_config_dir
from PIL import Image

from visa.config import check_part, register
from visa.core.errors import VisaError
from visa.data.folder import FolderDataset
from visa.data.formats import AnnotatedDataset

CONF = str(Path(__file__).resolve().parents[1] / "conf")
BENCHMARKS = ("coco", "flickr30k", "msrvtt", "lsmdc", "didemo", "msvd", "dci", "iiw", "urban1k", "sharegpt4v")


def image(path: Path, colour=(0, 128, 255)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (16, 12), colour).save(path)
    return path


def dataset(root: Path, **kw) -> AnnotatedDataset:
    return AnnotatedDataset(name=kw.pop("name", "t"), root=str(root), **kw)


def test_karpathy_split_keeps_test_images_and_five_captions(tmp_path):
    rows = [
        {
            "filepath": "val2014",
            "filename": "COCO_val2014_000000000001.jpg",
            "split": "test",
            "imgid": 0,
            "sentences": [{"raw": f"A cat number {i}.", "tokens": ["a"]} for i in range(6)],
        },
        {
            "filepath": "train2014",
            "filename": "COCO_train2014_000000000002.jpg",
            "split": "train",
            "sentences": [{"raw": "Not in the test split."}],
        },
        {
            "filepath": "val2014",
            "filename": "COCO_val2014_000000000003.jpg",
            "split": "test",
            "sentences": [{"raw": "Two  dogs\non a  sofa. "}, {"raw": 'Dogs résting, "happily".'}],
        },
    ]
    (tmp_path / "dataset_coco.json").write_text(
        json.dumps({"images": rows, "dataset": "coco"}), encoding="utf-8"
    )
    image(tmp_path / "images/val2014/COCO_val2014_000000000001.jpg")
    image(tmp_path / "images/val2014/COCO_val2014_000000000003.jpg")
    ds = dataset(
        tmp_path, annotation="dataset_coco.json", media_dir="images", format="karpathy", max_captions=5
    ).load()
    assert [i.id for i in ds.gallery] == [
        "val2014/COCO_val2014_000000000001.jpg",
        "val2014/COCO_val2014_000000000003.jpg",
    ]
    assert ds.gallery[1].path == str(tmp_path / "images/val2014/COCO_val2014_000000000003.jpg")
    assert all(i.kind == "image" for i in ds.gallery)
    assert len(ds.queries) == 5 + 2
    assert [q.relevant for q in ds.queries] == [(0,)] * 5 + [(1,)] * 2
    assert ds.queries[5].text == "Two dogs on a sofa."
    assert ds.queries[6].text == 'Dogs résting, "happily".'


def test_lavis_json_with_the_media_folder_in_its_paths(tmp_path):
    entries = [
        {"image": "flickr30k-images/100.jpg", "caption": ["A man.", "A person."]},
        {"image": "flickr30k-images/200.jpg", "caption": ["A bike."]},
    ]
    (tmp_path / "flickr30k_test.json").write_text(json.dumps(entries))
    image(tmp_path / "flickr30k-images/100.jpg")
    image(tmp_path / "flickr30k-images/200.jpg")
    ds = dataset(
        tmp_path, annotation="flickr30k_test.json", media_dir="flickr30k-images", format="lavis"
    ).load()
    assert [i.path for i in ds.gallery] == [
        str(tmp_path / "flickr30k-images/100.jpg"),
        str(tmp_path / "flickr30k-images/200.jpg"),
    ]
    assert [(q.text, q.relevant) for q in ds.queries] == [
        ("A man.", (0,)),
        ("A person.", (0,)),
        ("A bike.", (1,)),
    ]


def test_msrvtt_jsfusion_csv(tmp_path):
    # the real file has pandas' unnamed index column first; sentences with commas are quoted
    (tmp_path / "MSRVTT_JSFUSION_test.csv").write_text(
        ",key,vid_key,video_id,sentence\n"
        "0,ret0,msr9770,video9770,a person is connecting something to system\n"
        '1,ret1,msr7606,video7606,"a little girl, in pink, does gymnastics"\n',
        encoding="utf-8-sig",
    )
    videos = tmp_path / "videos/all"
    videos.mkdir(parents=True)
    make_video(videos / "video9770.mp4")
    make_video(videos / "video7606.mp4")
    ds = dataset(
        tmp_path, annotation="MSRVTT_JSFUSION_test.csv", media_dir="videos/all", format="msrvtt_csv"
    ).load()
    assert [(i.id, i.kind) for i in ds.gallery] == [("video9770.mp4", "video"), ("video7606.mp4", "video")]
    assert [(q.text, q.relevant) for q in ds.queries] == [
        ("a person is connecting something to system", (0,)),
        ("a little girl, in pink, does gymnastics", (1,)),
    ]


def test_internvideo_json_lists_strings_and_paragraphs(tmp_path):
    entries = [
        {"video": "a.avi", "caption": ["a dog runs", "a dog is running"]},
        {"video": "b.avi", "caption": "a cat sleeps"},
        {"video": "a.avi", "caption": "a brown dog"},
    ]  # the same clip again: merged into one item
    (tmp_path / "msvd_ret_test.json").write_text(json.dumps(entries))
    (tmp_path / "videos").mkdir()
    make_video(tmp_path / "videos/a.avi")
    make_video(tmp_path / "videos/b.avi")
    kw = dict(annotation="msvd_ret_test.json", media_dir="videos", format="internvideo")
    ds = dataset(tmp_path, **kw).load()
    assert [i.id for i in ds.gallery] == ["a.avi", "b.avi"]
    assert [(q.text, q.relevant) for q in ds.queries] == [
        ("a dog runs", (0,)),
        ("a dog is running", (0,)),
        ("a brown dog", (0,)),
        ("a cat sleeps", (1,)),
    ]
    paragraphs = dataset(tmp_path, paragraph=True, **kw).load()
    assert [(q.text, q.relevant) for q in paragraphs.queries] == [
        ("a dog runs a dog is running a brown dog", (0,)),  # joined with " " as InternVideo2 does
        ("a cat sleeps", (1,)),
    ]


def test_lotlip_sharegpt4v_and_iiw_fields(tmp_path):
    share = [
        {
            "id": str(i),
            "image": f"sa_000000/images/sa_{i}.jpg",
            "conversations": [
                {"from": "human", "value": "<image>\nDescribe."},
                {"from": "gpt", "value": f"Long caption {i}."},
            ],
        }
        for i in range(3)
    ]
    (tmp_path / "share4v.json").write_text(json.dumps(share))
    for i in range(3):
        image(tmp_path / f"sa_000000/images/sa_{i}.jpg")
    ds = dataset(tmp_path, annotation="share4v.json", media_dir=".", format="lotlip", max_items=2).load()
    assert [i.id for i in ds.gallery] == ["sa_000000/images/sa_0.jpg", "sa_000000/images/sa_1.jpg"]
    assert [q.text for q in ds.queries] == ["Long caption 0.", "Long caption 1."]
    (tmp_path / "IIW-400").mkdir()
    (tmp_path / "IIW-400/data.jsonl").write_text(
        json.dumps({"image/key": "aar_test_001", "IIW": "A red barn\nunder snow."})
        + "\n\n"
        + json.dumps({"image": "aar_test_002.jpg", "IIW": "A blue boat."})
        + "\n"
    )
    image(tmp_path / "docci_aar/aar_test_001.jpg")
    image(tmp_path / "docci_aar/aar_test_002.jpg")
    iiw = dataset(
        tmp_path, annotation="IIW-400/data.jsonl", media_dir="docci_aar", format="lotlip", default_ext=".jpg"
    ).load()
    assert [i.id for i in iiw.gallery] == ["aar_test_001.jpg", "aar_test_002.jpg"]
    assert iiw.queries[0].text == "A red barn under snow."


def test_dci_splits_and_urban1k_folders(tmp_path):
    dci = tmp_path / "densely_captioned_images"
    (dci / "annotations").mkdir(parents=True)
    (dci / "splits.json").write_text(json.dumps({"train": ["a.json"], "test": ["b.json"]}))
    for name, img in (("a.json", "sa_1.jpg"), ("b.json", "sa_2.jpg")):
        (dci / "annotations" / name).write_text(
            json.dumps(
                {
                    "image": img,
                    "short_caption": f"Short {img}.",
                    "extra_caption": "More detail.",
                    "mask_data": {},
                }
            )
        )
        image(dci / "photos" / img)
    kw = dict(
        annotation="densely_captioned_images/splits.json",
        media_dir="densely_captioned_images/photos",
        format="dci",
    )
    assert len(dataset(tmp_path, split="all", **kw).load().gallery) == 2
    test = dataset(tmp_path, split="test", **kw).load()
    assert [i.id for i in test.gallery] == ["sa_2.jpg"] and test.queries[
        0
    ].text == "Short sa_2.jpg. More detail."
    with pytest.raises(VisaError, match="no split 'val'"):
        dataset(tmp_path, split="val", **kw).load()

    urban = tmp_path / "urban1k"
    for n in (1, 2):
        image(urban / f"image/{n}.jpg")
        (urban / "caption").mkdir(exist_ok=True)
        (urban / f"caption/{n}.txt").write_text(f"A long caption of street {n}.\n")
    ds = dataset(urban, annotation="caption", media_dir="image", format="paired_folders").load()
    assert [(q.text, ds.gallery[q.relevant[0]].id) for q in ds.queries] == [
        ("A long caption of street 1.", "1.jpg"),
        ("A long caption of street 2.", "2.jpg"),
    ]


def test_missing_data_names_the_expected_file_and_where_it_is_published(tmp_path):
    ds = dataset(
        tmp_path / "msrvtt",
        name="msrvtt",
        annotation="MSRVTT_JSFUSION_test.csv",
        media_dir="videos",
        format="msrvtt_csv",
        published="https://example.org/msrvtt",
    )
    with pytest.raises(VisaError) as e:
        ds.load()
    assert str(tmp_path / "msrvtt" / "MSRVTT_JSFUSION_test.csv") in str(e.value)
    assert "https://example.org/msrvtt" in str(e.value) and "\n" not in str(e.value)
    (tmp_path / "msrvtt").mkdir()
    (tmp_path / "msrvtt/MSRVTT_JSFUSION_test.csv").write_text(
        "key,vid_key,video_id,sentence\n0,r,m,video1,x\n"
    )
    with pytest.raises(VisaError, match="media folder not found: expected .*videos"):
        ds.load()
    with pytest.raises(VisaError, match="dataset.format='nope'"):
        dataset(tmp_path, annotation="x", media_dir=".", format="nope").load()


def test_bad_items_fail_with_their_path_or_are_skipped_and_counted(tmp_path):
    (tmp_path / "test.json").write_text(
        json.dumps(
            [
                {"image": "ok.jpg", "caption": "fine"},
                {"image": "broken.jpg", "caption": "broken"},
                {"image": "gone.jpg", "caption": "missing"},
            ]
        )
    )
    image(tmp_path / "ok.jpg")
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg at all")
    kw = dict(annotation="test.json", media_dir=".", format="lavis")
    with pytest.raises(VisaError, match=r"broken\.jpg.*on_bad_item=skip"):
        dataset(tmp_path, **kw).load()
    ds = dataset(tmp_path, on_bad_item="skip", **kw).load()
    assert [i.id for i in ds.gallery] == ["ok.jpg"] and [q.text for q in ds.queries] == ["fine"]
    assert sorted(Path(p.split(" (")[0]).name for p in ds.skipped) == ["broken.jpg", "gone.jpg"]


def test_folder_dataset_jsonl_csv_recursive_and_shared_captions(tmp_path):
    image(tmp_path / "trips/beach.jpg")
    image(tmp_path / "trips/2024/dunes.png", (200, 180, 20))
    image(tmp_path / "pets/dog.jpg")
    (tmp_path / "clips").mkdir()
    make_video(tmp_path / "clips/waves.mp4")
    image(tmp_path / ".cache/hidden.jpg")  # hidden folders are not part of the collection
    (tmp_path / "notes.txt").write_text("not media")
    lines = [
        {"path": "trips/beach.jpg", "captions": ["sand and sea", "a sunny beach"]},
        {"path": "trips/2024/dunes.png", "caption": "sand and sea"},
        {"path": "clips/waves.mp4", "caption": "waves breaking"},
    ]
    (tmp_path / "captions.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    ds = FolderDataset(root=str(tmp_path)).load()
    ids = [i.id for i in ds.gallery]
    assert ids == ["clips/waves.mp4", "pets/dog.jpg", "trips/2024/dunes.png", "trips/beach.jpg"]
    assert [i.kind for i in ds.gallery] == ["video", "image", "image", "image"]
    by_text = {q.text: sorted(ids[i] for i in q.relevant) for q in ds.queries}
    assert by_text == {
        "sand and sea": ["trips/2024/dunes.png", "trips/beach.jpg"],
        "a sunny beach": ["trips/beach.jpg"],
        "waves breaking": ["clips/waves.mp4"],
    }
    (tmp_path / "captions.csv").write_text(
        'path,caption,caption_2\ntrips/beach.jpg,"sand, sea and sun",\npets/dog.jpg,a dog,a pet\n',
        encoding="utf-8",
    )
    csv_ds = FolderDataset(root=str(tmp_path), annotation="captions.csv").load()
    assert {q.text: [csv_ds.gallery[i].id for i in q.relevant] for q in csv_ds.queries} == {
        "sand, sea and sun": ["trips/beach.jpg"],
        "a dog": ["pets/dog.jpg"],
        "a pet": ["pets/dog.jpg"],
    }
    (tmp_path / "bad.jsonl").write_text(json.dumps({"path": "trips/nothere.jpg", "caption": "x"}) + "\n")
    with pytest.raises(VisaError, match="nothere.jpg"):
        FolderDataset(root=str(tmp_path), annotation="bad.jsonl").load()


@pytest.mark.parametrize("name", BENCHMARKS)
def test_benchmark_configs_compose_and_match_their_loader(name, tmp_path):
    register()
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("config", overrides=[f"dataset={name}", f"data_dir={tmp_path}"])
    node = cfg.dataset
    assert node.root == f"{tmp_path}/{name}"
    assert {"_target_", "annotation", "media_dir", "format", "on_bad_item"} <= set(node)
    check_part(node, "dataset")
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        over = compose(
            "config",
            overrides=[
                f"dataset={name}",
                "dataset.format=lotlip",
                "dataset.annotation=x.json",
                "dataset.media_dir=imgs",
                "dataset.on_bad_item=skip",
            ],
        )
    assert (over.dataset.format, over.dataset.annotation, over.dataset.media_dir) == (
        "lotlip",
        "x.json",
        "imgs",
    )


def test_msrvtt_with_internvideo2_stops_at_the_missing_data_before_loading_a_model(tmp_path, monkeypatch):
    import visa.backbones.internvideo2 as iv2
    from visa.run import run

    monkeypatch.setattr(iv2.InternVideo2Backbone, "_net", property(lambda self: pytest.fail("model loaded")))
    register()
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose(
            "config",
            overrides=[
                "dataset=msrvtt",
                "backbone=internvideo2",
                f"data_dir={tmp_path}",
                f"cache_dir={tmp_path / 'cache'}",
            ],
        )
    with pytest.raises(VisaError, match=r"MSRVTT_JSFUSION_test\.csv.*published"):
        run(cfg, tmp_path)
