"""Hybrid-modal benchmarks in their published formats, and the offline composed demo.

- CIRR (Liu et al., ICCV 2021; github.com/Cuberick-Orion/CIRR): `captions/cap.rc2.<split>.json`, a list of
  `{pairid, reference, target_hard, target_soft, caption, img_set: {id, members, ...}}`, and
  `image_splits/split.rc2.<split>.json`, image name -> path relative to the image folder ("./dev/x.png").
  A query is the reference image + the caption; its target is `target_hard`; the gallery is the split's
  images; the reference is left out of its own ranking (as every CIRR evaluation does); Recall_subset ranks
  the target among the query's `img_set` members other than the reference. test1 publishes no targets.
- FashionIQ (Wu et al., CVPR 2021; github.com/XiaoxiaoGuo/fashion-iq): per category (dress, shirt,
  toptee) `captions/cap.<category>.<split>.json`, a list of `{candidate, target, captions: [two texts]}`,
  and `image_splits/split.<category>.<split>.json`, the list of the split's image names; images in
  `images/<name>.<ext>`. A query is the candidate image + its two texts joined as the community does
  (first one stripped of ".?, " and capitalised, " and ", the second stripped); each category ranks its
  own split gallery; the reported figure is each category's and their average.
- WebQA (Chang et al., CVPR 2022; webqna.github.io): `WebQA_train_val.json`, an object of guid ->
  `{Q, A, split, Qcate, img_posFacts: [{image_id, title, caption, ...}], img_negFacts, txt_posFacts, ...}`;
  images in a folder as `<image_id>.<ext>`, or the published `imgs.tsv` (image_id TAB base64), from
  which the images needed are written to the folder once. A query is a question with
  image facts; the gallery is the split's image facts (positive and negative), each image + its caption;
  the relevant items are the question's positive facts.
- demo_composed: composed queries over the demo photos with modification texts written for this project.
"""

from __future__ import annotations

import base64
import json
import logging
from pathlib import Path
from typing import Any

from visa.core.errors import VisaError
from visa.data import Dataset, Item, Query
from visa.data.media import IMAGE_EXTS

log = logging.getLogger("visa")

FASHIONIQ_CATEGORIES = ("dress", "shirt", "toptee")
COMPOSED_DEMO = Path(__file__).with_name("composed_demo.json")


def _missing(name: str, what: str, path: Path, key: str, value: str, root: Path, published: str) -> VisaError:
    root_note = "" if root.is_dir() else ", a folder that does not exist"
    return VisaError(
        f"dataset {name}: {what} not found: expected {path} (dataset.{key}={value} under dataset.root={root}"
        f"{root_note}). The dataset is published at {published}. Put it there, or point data_dir (env "
        "VISA_DATA) or dataset.root at the folder that holds it."
    )


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError) as e:
        raise VisaError(f"cannot read {path}: {e}") from e
    except json.JSONDecodeError as e:
        raise VisaError(f"{path} is not valid json ({e}); check dataset.root and dataset.split") from e


def _get(entry: Any, key: str, path: Path) -> Any:
    if not isinstance(entry, dict) or key not in entry:
        raise VisaError(f"{path}: entry without the key {key!r}: {str(entry)[:100]}")
    return entry[key]


def _index(gallery: list[Item]) -> dict[str, int]:
    return {item.id: i for i, item in enumerate(gallery)}


def _lookup(index: dict[str, int], name: str, path: Path, role: str) -> int:
    if name not in index:
        raise VisaError(
            f"{path}: {role} image {name!r} is not in the split's image list; check the files match"
        )
    return index[name]


def _check_files(name: str, gallery: list[Item]) -> None:
    missing = [item.path for item in gallery if item.path and not Path(item.path).is_file()]
    if missing:
        raise VisaError(
            f"dataset {name}: {len(missing)} image(s) of the split not found, e.g. {missing[0]}; "
            "check dataset.media_dir"
        )


class CIRRDataset:
    """CIRR validation (or train) split; test1 has no public targets."""

    def __init__(
        self,
        root: str,
        split: str = "val",
        version: str = "rc2",
        media_dir: str = "img_raw",
        limit: int | None = None,
        published: str = "https://github.com/Cuberick-Orion/CIRR (annotations; images from NLVR2)",
    ):
        self.root = Path(root).expanduser()
        self.split, self.version, self.media_dir = split, version, media_dir
        self.limit = limit  # first N queries (quick tries); the gallery stays the whole split
        self.published = published

    def load(self) -> Dataset:
        captions = self.root / "captions" / f"cap.{self.version}.{self.split}.json"
        splits = self.root / "image_splits" / f"split.{self.version}.{self.split}.json"
        media = self.root / self.media_dir
        for what, path, key, value in (
            ("caption file", captions, "split", self.split),
            ("image split file", splits, "split", self.split),
            ("image folder", media, "media_dir", self.media_dir),
        ):
            if not path.exists():
                raise _missing("cirr", what, path, key, value, self.root, self.published)
        names = _read_json(splits)
        if not isinstance(names, dict):
            raise VisaError(f"{splits}: expected an object of image name -> relative path")
        gallery = [Item(name, str(media / rel.removeprefix("./")), "image") for name, rel in names.items()]
        index = _index(gallery)
        pairs = _read_json(captions)
        if not isinstance(pairs, list):
            raise VisaError(f"{captions}: expected a list of query entries")
        queries = []
        for pair in pairs[: self.limit] if self.limit else pairs:
            if "target_hard" not in pair:
                raise VisaError(
                    f"{captions}: entries have no target_hard (CIRR's test1 targets are not public); "
                    "evaluate dataset.split=val here, or submit test1 rankings to https://cirr.cecs.anu.edu.au"
                )
            reference = _lookup(index, _get(pair, "reference", captions), captions, "reference")
            target = _lookup(index, pair["target_hard"], captions, "target")
            members = _get(_get(pair, "img_set", captions), "members", captions)
            subset = tuple(
                _lookup(index, m, captions, "img_set") for m in members if m != gallery[reference].id
            )
            text = " ".join(str(_get(pair, "caption", captions)).split())
            queries.append(
                Query(text, (target,), reference=gallery[reference], exclude=(reference,), subset=subset)
            )
        if not queries:
            raise VisaError(f"{captions}: no queries")
        _check_files("cirr", gallery)
        return Dataset("cirr", gallery, queries)


def join_fashioniq_captions(captions: list[str]) -> str:
    """The two relative captions as one text, as the community joins them (CLIP4Cir and its followers)."""
    first, second = (c.strip(".?, ") for c in captions[:2])
    return f"{first.capitalize()} and {second}"


class FashionIQDataset:
    """FashionIQ validation: one category, or `all` (each category ranks its own gallery; the run reports
    each category and the average)."""

    def __init__(
        self,
        root: str,
        category: str = "all",
        split: str = "val",
        media_dir: str = "images",
        image_ext: str = ".png",
        limit: int | None = None,
        published: str = "https://github.com/XiaoxiaoGuo/fashion-iq (annotations and image lists)",
    ):
        self.root = Path(root).expanduser()
        self.category, self.split, self.media_dir, self.image_ext = category, split, media_dir, image_ext
        self.limit = limit  # first N queries per category
        self.published = published

    def _image_path(self, media: Path, name: str) -> str:
        path = media / (name if Path(name).suffix.lower() in IMAGE_EXTS else name + self.image_ext)
        return str(path)

    def load(self) -> Dataset:
        categories: tuple[str, ...]
        if self.category == "all":
            categories = FASHIONIQ_CATEGORIES
        elif self.category in FASHIONIQ_CATEGORIES:
            categories = (self.category,)
        else:
            raise VisaError(
                f"dataset.category={self.category!r} is not one of {', '.join(FASHIONIQ_CATEGORIES)}, all"
            )
        media = self.root / self.media_dir
        if not media.is_dir():
            raise _missing(
                "fashioniq", "image folder", media, "media_dir", self.media_dir, self.root, self.published
            )
        gallery: list[Item] = []
        queries: list[Query] = []
        groups: dict[str, list[int]] = {}
        for category in categories:
            captions = self.root / "captions" / f"cap.{category}.{self.split}.json"
            split = self.root / "image_splits" / f"split.{category}.{self.split}.json"
            for what, path in (("caption file", captions), ("image split file", split)):
                if not path.is_file():
                    raise _missing("fashioniq", what, path, "split", self.split, self.root, self.published)
            names = _read_json(split)
            if not isinstance(names, list):
                raise VisaError(f"{split}: expected a list of image names")
            start = len(gallery)
            # the same image name may appear in two categories: ids are category-qualified
            gallery += [Item(f"{category}/{n}", self._image_path(media, n), "image") for n in names]
            groups[category] = list(range(start, len(gallery)))
            index = {item.id.split("/", 1)[1]: i for i, item in enumerate(gallery) if i >= start}
            entries = _read_json(captions)
            if not isinstance(entries, list):
                raise VisaError(f"{captions}: expected a list of query entries")
            for entry in entries[: self.limit] if self.limit else entries:
                texts = _get(entry, "captions", captions)
                if (
                    not isinstance(texts, list)
                    or len(texts) < 2
                    or not all(isinstance(t, str) for t in texts)
                ):
                    raise VisaError(f"{captions}: `captions` must hold two texts: {str(entry)[:100]}")
                reference = _lookup(index, _get(entry, "candidate", captions), captions, "candidate")
                target = _lookup(index, _get(entry, "target", captions), captions, "target")
                queries.append(
                    Query(
                        join_fashioniq_captions(texts),
                        (target,),
                        reference=gallery[reference],
                        group=category,
                    )
                )
        _check_files("fashioniq", gallery)
        return Dataset("fashioniq", gallery, queries, groups=groups)


def _extract_tsv_images(tsv: Path, wanted: set[str], media: Path) -> None:
    """Write the `wanted` images of WebQA's imgs.tsv (image_id TAB base64) into `media` as <id>.jpg, in one
    pass over the file (its imgs.lineidx only serves random access)."""
    media.mkdir(parents=True, exist_ok=True)
    log.info("webqa: writing %d image(s) from %s to %s (once)", len(wanted), tsv, media)
    with open(tsv, "rb") as f:
        for line in f:
            image_id, _, data = line.partition(b"\t")
            name = image_id.decode().strip()
            if name in wanted:
                (media / f"{name}.jpg").write_bytes(base64.b64decode(data.strip()))


class WebQADataset:
    """WebQA image queries: a question -> image + caption items (the split's image facts)."""

    def __init__(
        self,
        root: str,
        split: str = "val",
        annotation: str = "WebQA_train_val.json",
        media_dir: str = "images",
        images_tsv: str = "imgs.tsv",
        limit: int | None = None,
        published: str = "https://webqna.github.io (WebQA_train_val.json and imgs.tsv)",
    ):
        self.root = Path(root).expanduser()
        self.split, self.annotation, self.media_dir, self.images_tsv = (
            split,
            annotation,
            media_dir,
            images_tsv,
        )
        self.limit = limit  # first N questions
        self.published = published

    def load(self) -> Dataset:
        path = self.root / self.annotation
        if not path.is_file():
            raise _missing(
                "webqa", "annotation file", path, "annotation", self.annotation, self.root, self.published
            )
        data = _read_json(path)
        if not isinstance(data, dict):
            raise VisaError(f"{path}: expected an object of question id -> entry (WebQA_train_val.json)")
        facts: dict[str, str] = {}  # image id -> caption, in file order
        asked: list[tuple[str, list[str]]] = []
        for entry in data.values():
            if _get(entry, "split", path) != self.split or not entry.get("img_posFacts"):
                continue
            positives = []
            for key in ("img_posFacts", "img_negFacts"):
                for fact in entry.get(key) or []:
                    image_id = str(_get(fact, "image_id", path))
                    facts.setdefault(image_id, " ".join(str(fact.get("caption", "")).split()))
                    if key == "img_posFacts":
                        positives.append(image_id)
            asked.append((" ".join(str(_get(entry, "Q", path)).strip('"').split()), positives))
        if self.limit:
            asked = asked[: self.limit]
        if not asked:
            raise VisaError(f"{path}: no {self.split} question with image facts; check dataset.split")
        media = self.root / self.media_dir
        existing = (
            {p.stem: p for p in media.iterdir() if p.suffix.lower() in IMAGE_EXTS} if media.is_dir() else {}
        )
        wanted = set(facts) - set(existing)
        if wanted:
            tsv = self.root / self.images_tsv
            if not tsv.is_file():
                raise _missing(
                    "webqa", "images", media, "media_dir", self.media_dir, self.root, self.published
                )
            _extract_tsv_images(tsv, wanted, media)
            existing.update({i: media / f"{i}.jpg" for i in wanted if (media / f"{i}.jpg").is_file()})
        gallery = [
            Item(i, str(existing.get(i, media / f"{i}.jpg")), "image", text=c) for i, c in facts.items()
        ]
        index = _index(gallery)
        queries = [Query(q, tuple(index[p] for p in pos)) for q, pos in asked]
        _check_files("webqa", gallery)
        return Dataset("webqa", gallery, queries)


class DemoComposedDataset:
    """Composed queries over the demo photos: a reference photo + a modification text -> the target photo.
    The texts (`composed_demo.json`) were written for this project; the gallery is the whole demo."""

    def __init__(self, annotation: str | None = None, limit: int | None = None):
        self.annotation = annotation or str(COMPOSED_DEMO)
        self.limit = limit  # first N queries

    def load(self) -> Dataset:
        from visa.data.demo import DemoDataset

        gallery = DemoDataset().load().gallery
        index = _index(gallery)
        path = Path(self.annotation)
        entries = _read_json(path)
        queries = []
        for entry in entries[: self.limit] if self.limit else entries:
            reference = _lookup(index, _get(entry, "reference", path), path, "reference")
            target = _lookup(index, _get(entry, "target", path), path, "target")
            queries.append(
                Query(
                    _get(entry, "text", path), (target,), reference=gallery[reference], exclude=(reference,)
                )
            )
        return Dataset("demo_composed", gallery, queries)
