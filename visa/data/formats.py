"""Loaders for the paper's benchmarks, in the formats they are distributed in.

One class, `AnnotatedDataset`, reads every benchmark: `format` picks the reader of the annotation file, which
yields (media path relative to `media_dir`, captions) entries; the class then resolves paths, checks the
items, and builds the gallery and the queries (each caption is one query; its relevant item is the entry's
image or video).

Formats (`dataset.format`):
- karpathy: Karpathy's split json (`images[]` with `filepath`, `filename`, `split`, `sentences[].raw`);
- lavis: BLIP/LAVIS-style test json, a list of `{"image": relpath, "caption": [texts]}`;
- msrvtt_csv: `MSRVTT_JSFUSION_test.csv` (`key, vid_key, video_id, sentence`);
- internvideo: InternVideo2-style json, a list of `{"video": file, "caption": text or [texts]}`;
- lotlip: long-caption json/jsonl: `{"image": file, "caption": text}`; also ShareGPT4V's
  `{"image", "conversations": [..., {"from": "gpt", "value": text}]}` and IIW's `{"image/key", "IIW"}`;
- dci: DCI's `splits.json` (`{split: [annotation files]}`), each file in `annotations/` beside it with
  `image`, `short_caption`, `extra_caption`;
- iiw: the ImageInWords evaluation as LoTLIP runs it: `annotation` is a folder holding `DOCCI_Test/`,
  `IIW-400/` and `DCI_Test/` (each a `data.jsonl` with the `IIW` description), their images in the folders
  `docci/`, `docci_aar/` and `dci/` under `media_dir` (the layout LoTLIP's data_preprocess.py writes);
- paired_folders: `annotation` is a folder of `<name>.txt` captions, `media_dir` holds `<name>.<ext>`
  (Urban1k's `caption/` and `image/`).
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from visa.core.errors import VisaError
from visa.data import Dataset, Item, build_dataset, check_count
from visa.data.files import BadItems, read_json, read_jsonl, read_text
from visa.data.media import IMAGE_EXTS, VIDEO_EXTS, media_kind

Entry = tuple[str, list[str]]  # (media path relative to media_dir, captions)


def _read_json_or_jsonl(path: Path) -> list:
    if path.suffix.lower() == ".jsonl":
        return [row for _, row in read_jsonl(path)]
    data = read_json(path)
    if not isinstance(data, list):
        raise VisaError(
            f"{path}: expected a json list of entries, got {type(data).__name__}; check dataset.format"
        )
    return data


def _field(entry: Any, keys: tuple[str, ...], path: Path) -> Any:
    if isinstance(entry, dict):
        for key in keys:
            if key in entry:
                return entry[key]
    raise VisaError(
        f"{path}: entry without any of the keys {', '.join(keys)}: {str(entry)[:100]}; check dataset.format"
    )


def _texts(value: Any, path: Path) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    raise VisaError(f"{path}: a caption must be a string or a list of strings, got {str(value)[:80]}")


# -- readers: (annotation path, split) -> entries ------------------------------------------------------------
def read_karpathy(path: Path, split: str) -> Iterator[Entry]:
    data = read_json(path)
    images = data.get("images") if isinstance(data, dict) else None
    if not isinstance(images, list):
        raise VisaError(
            f"{path}: no `images` list; is it Karpathy's dataset_<name>.json? check dataset.format"
        )
    for image in images:
        if image.get("split") != split:
            continue
        rel = os.path.join(image.get("filepath", ""), _field(image, ("filename",), path))
        yield rel, [_field(s, ("raw",), path) for s in _field(image, ("sentences",), path)]


def read_lavis(path: Path, split: str) -> Iterator[Entry]:
    for entry in _read_json_or_jsonl(path):
        yield _field(entry, ("image",), path), _texts(_field(entry, ("caption",), path), path)


def read_internvideo(path: Path, split: str) -> Iterator[Entry]:
    for entry in _read_json_or_jsonl(path):
        yield _field(entry, ("video",), path), _texts(_field(entry, ("caption",), path), path)


def read_msrvtt_csv(path: Path, split: str) -> Iterator[Entry]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            rows, columns = list(reader), set(reader.fieldnames or [])
    except UnicodeDecodeError as e:
        raise VisaError(f"{path} is not UTF-8 text ({e}); save it as UTF-8") from None
    missing = {"video_id", "sentence"} - columns
    if missing:
        raise VisaError(
            f"{path}: no column(s) {', '.join(sorted(missing))}; expected key,vid_key,video_id,sentence"
        )
    for row in rows:
        yield row["video_id"], [row["sentence"]]


def _lotlip_caption(entry: Any, path: Path) -> str:
    if isinstance(entry, dict) and isinstance(entry.get("conversations"), list):  # ShareGPT4V
        replies = [
            t.get("value") for t in entry["conversations"] if isinstance(t, dict) and t.get("from") == "gpt"
        ]
        if replies and isinstance(replies[0], str):
            return replies[0]
    value = _field(entry, ("caption", "IIW", "text"), path)
    return value if isinstance(value, str) else " ".join(_texts(value, path))


def read_lotlip(path: Path, split: str) -> Iterator[Entry]:
    for entry in _read_json_or_jsonl(path):
        yield str(_field(entry, ("image", "image/key"), path)), [_lotlip_caption(entry, path)]


def read_dci(path: Path, split: str) -> Iterator[Entry]:
    splits = read_json(path)
    if not isinstance(splits, dict):
        raise VisaError(f"{path}: expected DCI's splits.json, an object of split name -> annotation files")
    names = [n for files in splits.values() for n in files] if split == "all" else splits.get(split)
    if names is None:
        raise VisaError(f"{path}: no split {split!r}; choose dataset.split from {', '.join(splits)} or all")
    for name in names:
        anno = read_json(path.parent / "annotations" / name)
        text = f"{_field(anno, ('short_caption',), path)}\n{anno.get('extra_caption', '')}".strip()
        yield _field(anno, ("image",), path), [text]


def _read_pairs(caption_dir: Path, media_dir: Path) -> Iterator[Entry]:
    if not caption_dir.is_dir():
        raise VisaError(f"caption folder not found: {caption_dir}; check dataset.annotation")
    media = {}
    if media_dir.is_dir():
        media = {p.stem: p.name for p in media_dir.iterdir() if p.suffix.lower() in IMAGE_EXTS | VIDEO_EXTS}
    for txt in sorted(caption_dir.glob("*.txt")):
        yield media.get(txt.stem, txt.stem + ".jpg"), [read_text(txt).strip()]


# LoTLIP's IIW retrieval set: the three human-annotated subsets, in this order, each with its image folder.
IIW_SUBSETS = {"DOCCI_Test": "docci", "IIW-400": "docci_aar", "DCI_Test": "dci"}


def read_iiw(path: Path, split: str) -> Iterator[Entry]:
    """LoTLIP's IIW protocol: the `IIW` description of every image of DOCCI_Test, IIW-400 and DCI_Test
    (`split` "all" or "test": the three are IIW's test sets), or of the comma-separated subsets in `split`."""
    names = (
        list(IIW_SUBSETS) if split in ("all", "test") else [s.strip() for s in split.split(",") if s.strip()]
    )
    unknown = [n for n in names if n not in IIW_SUBSETS]
    if unknown:
        raise VisaError(
            f"dataset.split={split!r}: {', '.join(unknown)} is not an IIW subset; choose all or a "
            f"comma-separated list of {', '.join(IIW_SUBSETS)}"
        )
    for name in names:
        anno = path / name / "data.jsonl"
        if not anno.is_file():
            raise VisaError(
                f"IIW subset file not found: {anno}; check dataset.annotation (the folder of subsets)"
            )
        for entry in _read_json_or_jsonl(anno):
            image = str(_field(entry, ("image", "image/key"), anno))
            if ".jpg" not in image:  # IIW-400 and DOCCI name images by key
                image += ".jpg"
            yield f"{IIW_SUBSETS[name]}/{image}", [_field(entry, ("IIW",), anno)]


def rewrite_lotlip(text: str) -> str:
    """A long caption as LoTLIP's evaluation feeds it to the text encoder: cut at line breaks, "." and
    "</s>", the pieces stripped, empty ones dropped, joined with ". "."""
    return ". ".join(p.strip() for p in re.split(r"\n|</s>|\.", text) if p.strip())


CAPTION_REWRITES: dict[str, Callable[[str], str]] = {"none": lambda text: text, "lotlip": rewrite_lotlip}

READERS: dict[str, Callable[[Path, str], Iterator[Entry]]] = {
    "karpathy": read_karpathy,
    "lavis": read_lavis,
    "msrvtt_csv": read_msrvtt_csv,
    "internvideo": read_internvideo,
    "lotlip": read_lotlip,
    "dci": read_dci,
    "iiw": read_iiw,
    "paired_folders": lambda path, split: iter(()),  # handled in load(): it needs media_dir
}


def detect_format(path: Path) -> str:
    """The reader of an annotation file, told from its content (dataset.format=auto): Karpathy's
    `{"images": [...]}`, DCI's splits object, MSRVTT's csv, or a list (json or jsonl) of BLIP/LAVIS
    `{image, caption}`, InternVideo `{video, caption}` or LoTLIP/ShareGPT4V entries."""
    if path.suffix.lower() == ".csv":
        return "msrvtt_csv"
    data = _read_json_or_jsonl(path) if path.suffix.lower() == ".jsonl" else read_json(path)
    if isinstance(data, dict):
        if isinstance(data.get("images"), list):
            return "karpathy"
        if data and all(isinstance(v, list) for v in data.values()):
            return "dci"
    elif isinstance(data, list) and data and isinstance(data[0], dict):
        first = data[0]
        if "conversations" in first or "IIW" in first or "image/key" in first:
            return "lotlip"
        if "caption" in first and "image" in first:
            return "lavis"
        if "caption" in first and "video" in first:
            return "internvideo"
    raise VisaError(
        f"{path}: cannot tell the annotation format from the file; set dataset.format to one of "
        f"{', '.join(f for f in READERS if f not in ('iiw', 'paired_folders'))}"
    )


def _join_paragraph(texts: list[str]) -> str:
    """The sentences of a paragraph query joined with one space, as they are (InternVideo2's and VINDLU's
    paragraph retrieval joins DiDeMo's sentences with " ")."""
    return " ".join(texts)


class AnnotatedDataset:
    """A benchmark under `root`: `annotation` (relative to root) in `format`, media in `media_dir`."""

    def __init__(
        self,
        name: str,
        root: str,
        annotation: str,
        media_dir: str,
        format: str,
        on_bad_item: str = "fail",
        split: str = "test",
        max_captions: int | None = None,
        max_items: int | None = None,
        paragraph: bool = False,
        default_ext: str = ".mp4",
        check_items: bool = True,
        published: str = "",
        caption_rewrite: str = "none",
    ):
        self.name = name
        self.root = Path(root).expanduser()
        self.annotation = annotation
        self.media_dir = media_dir
        self.format = format
        self.on_bad_item = on_bad_item
        self.split = split
        self.max_captions = (
            max_captions  # first N captions per item (COCO: 5, as in the 25,000-query protocol)
        )
        self.max_items = max_items  # first N items (ShareGPT4V: 1k)
        self.paragraph = paragraph  # join an item's captions into one query (DiDeMo paragraph retrieval)
        self.default_ext = default_ext  # appended to media names without an extension (MSRVTT video ids)
        self.check_items = check_items  # decode every image, probe every video at load time
        self.published = published  # where to get the data, for the missing-data message
        # how each caption is rewritten before it becomes a query: none | lotlip (LoTLIP's long-text protocol)
        self.caption_rewrite = caption_rewrite
        self.skipped: list[str] = []
        self.reader = format  # the annotation's reader, once entries() has told it from the file

    def _missing(self, what: str, path: Path, key: str) -> VisaError:
        root_note = "" if self.root.is_dir() else ", a folder that does not exist"
        where = f" The dataset is published at {self.published}." if self.published else ""
        return VisaError(
            f"dataset {self.name}: {what} not found: expected {path} (dataset.{key}={getattr(self, key)} "
            f"under dataset.root={self.root}{root_note}).{where} Put it there, or point data_dir (env "
            "VISA_DATA) or dataset.root at the folder that holds it."
        )

    def _resolve(self, rel: str, media_root: Path) -> str:
        rel = rel.replace("\\", "/")
        # LAVIS' flickr30k_test.json writes "flickr30k-images/x.jpg" while Karpathy's json writes "x.jpg":
        # a leading folder named like media_dir itself is dropped, so both work with one media_dir.
        head, _, tail = rel.partition("/")
        if tail and head == media_root.name:
            rel = tail
        if not Path(rel).suffix:
            rel += self.default_ext
        return str(media_root / rel)

    def entries(self) -> list[Entry]:
        """The annotation's (relative media path, captions) entries, in file order."""
        if self.format not in READERS and self.format != "auto":
            raise VisaError(f"dataset.format={self.format!r} is not one of auto, {', '.join(READERS)}")
        annotation = self.root / self.annotation
        if self.format == "iiw":
            if not annotation.is_dir():
                raise self._missing("IIW annotation folder", annotation, "annotation")
            return list(read_iiw(annotation, self.split))
        if self.format == "paired_folders":
            if not annotation.is_dir():
                raise self._missing("caption folder", annotation, "annotation")
            return list(_read_pairs(annotation, self.root / self.media_dir))
        if not annotation.is_file():
            raise self._missing("annotation file", annotation, "annotation")
        reader = detect_format(annotation) if self.format == "auto" else self.format
        self.reader = reader
        return list(READERS[reader](annotation, self.split))

    def texts(self) -> list[str]:
        """The queries of this split as `load` makes them, without looking at any media (a normaliser's
        reference bank: normalizer.bank=split:train)."""
        rewrite = CAPTION_REWRITES.get(self.caption_rewrite, CAPTION_REWRITES["none"])
        out: list[str] = []
        for _, texts in self.entries():
            texts = [rewrite(t) for t in texts][: self.max_captions or None]
            out.extend([_join_paragraph(texts)] if self.paragraph else texts)
        return out

    def load(self) -> Dataset:
        bad_items = BadItems(self.on_bad_item, self.name)
        check_count(self.max_items, "dataset.max_items")
        check_count(self.max_captions, "dataset.max_captions")
        if self.caption_rewrite not in CAPTION_REWRITES:
            raise VisaError(
                f"dataset.caption_rewrite={self.caption_rewrite!r} must be one of "
                f"{', '.join(CAPTION_REWRITES)}"
            )
        rewrite = CAPTION_REWRITES[self.caption_rewrite]
        entries = [(rel, [rewrite(t) for t in texts]) for rel, texts in self.entries()]
        media_root = self.root / self.media_dir
        if not media_root.is_dir():
            raise self._missing("media folder", media_root, "media_dir")
        # Merge entries that name the same file (some json files list one caption per row).
        merged: dict[str, list[str]] = {}
        for rel, texts in entries:
            merged.setdefault(self._resolve(rel, media_root), []).extend(texts)
        if self.max_items:
            merged = dict(list(merged.items())[: self.max_items])
        gallery: list[Item] = []
        captions: list[tuple[str, list[str]]] = []
        usable = bad_items.usable(list(merged)) if self.check_items else set(merged)
        for path, texts in merged.items():
            kind = media_kind(path)
            if path not in usable:
                continue
            item_id = os.path.relpath(path, media_root)
            gallery.append(Item(id=item_id, path=path, kind=kind))
            if self.max_captions:
                texts = texts[: self.max_captions]
            captions.append((item_id, [_join_paragraph(texts)] if self.paragraph else texts))
        bad_items.warn()
        self.skipped = bad_items.skipped
        source = str(self.root / self.annotation)
        dataset = build_dataset(self.name, gallery, captions, source)
        dataset.skipped = list(self.skipped)
        if self.reader == "karpathy" and self.split != "train":  # the train captions: NNN's bank for COCO
            dataset.bank = "split:train"
        return dataset
