"""A user's own collection: every image and video under a folder (recursively) plus a captions file.

The captions file (`annotation`, relative to root) is either
- jsonl: one object a line, `{"path": "trips/beach.jpg", "caption": "..."}` or `"captions": ["...", ...]`;
- csv: a header with a `path` column and one or more caption columns (any column whose name starts with
  `caption`); an empty cell is no caption, and a path may appear on several rows.
A caption that is empty or only whitespace, or not a string, stops the run naming its line.
Paths are relative to `root / media_dir`. Items without a caption stay in the gallery as distractors.
The same caption text given for several items is one query with all of them relevant.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

from visa.core.errors import VisaError
from visa.data import Dataset, Item, Query
from visa.data.files import BadItems, read_jsonl
from visa.data.media import IMAGE_EXTS, VIDEO_EXTS, media_kind


def _caption_texts(value: object, where: str) -> list[str]:
    """The captions of one line: a string or a list of strings, none of them empty."""
    texts = [value] if isinstance(value, str) else value
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        raise VisaError(f"{where}: a caption must be a string or a list of strings, got {str(value)[:80]}")
    for text in texts:
        if not text.strip():
            raise VisaError(f"{where}: empty caption; write one or remove it")
    return texts


def read_captions(path: Path, fmt: str = "jsonl") -> list[tuple[str, str]]:
    """(relative path, caption) pairs from a captions file in `fmt` (jsonl | csv).

    An empty or whitespace-only caption is an error naming its line, as in every other dataset; in a csv, an
    empty cell is no caption (rows may fill different numbers of caption columns)."""
    if not path.is_file():
        raise VisaError(
            f"captions file not found: {path}; write one (jsonl or csv) or set dataset.annotation"
        )
    pairs: list[tuple[str, str]] = []
    if fmt == "csv":
        try:
            with open(path, newline="", encoding="utf-8-sig") as f:
                reader = csv.DictReader(f)
                columns = reader.fieldnames or []
                text_columns = [c for c in columns if c.strip().lower().startswith("caption")]
                if "path" not in columns or not text_columns:
                    raise VisaError(
                        f"{path}: the header needs a `path` column and a `caption` column; it has {columns}"
                    )
                for row in reader:
                    for column in text_columns:
                        text = row[column]
                        if text:  # an empty cell (or a short row) is no caption in this column
                            where = f"{path}:{reader.line_num} column {column!r}"
                            pairs.append((row["path"] or "", _caption_texts(text, where)[0]))
        except UnicodeDecodeError as e:
            raise VisaError(f"{path} is not UTF-8 text ({e}); save it as UTF-8 (CSV UTF-8)") from None
        except csv.Error as e:
            raise VisaError(f"{path}: not a readable csv file ({e})") from None
        return pairs
    for n, row in read_jsonl(path):
        texts = row.get("captions", row.get("caption")) if isinstance(row, dict) else None
        if not isinstance(row, dict) or not isinstance(row.get("path"), str) or texts is None:
            raise VisaError(f'{path}:{n}: expected {{"path": "...", "caption": "..." or "captions": [...]}}')
        pairs += [(row["path"], t) for t in _caption_texts(texts, f"{path}:{n}")]
    return pairs


class FolderDataset:
    def __init__(
        self,
        root: str,
        annotation: str = "captions.jsonl",
        media_dir: str = ".",
        format: str = "auto",
        on_bad_item: str = "fail",
        name: str = "folder",
    ):
        self.root = Path(root).expanduser()
        self.annotation = annotation
        self.media_dir = media_dir
        self.format = format  # auto (from the file extension) | jsonl | csv
        self.on_bad_item = on_bad_item
        self.name = name

    def _scan(self, media_root: Path) -> list[str]:
        found = []
        for dirpath, dirnames, filenames in os.walk(media_root):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))  # skip .git, .cache, ...
            for f in sorted(filenames):
                if Path(f).suffix.lower() in IMAGE_EXTS | VIDEO_EXTS:
                    found.append(os.path.relpath(os.path.join(dirpath, f), media_root).replace(os.sep, "/"))
        return sorted(found)  # gallery order = path order, whatever the file system's listing order

    def load(self) -> Dataset:
        bad_items = BadItems(self.on_bad_item, self.name)
        media_root = self.root / self.media_dir
        if not media_root.is_dir():
            raise VisaError(f"folder not found: {media_root}; set dataset.root to your collection's folder")
        annotation = self.root / self.annotation
        fmt = self.format if self.format != "auto" else annotation.suffix.lower().lstrip(".")
        if fmt not in ("jsonl", "csv"):
            raise VisaError(
                f"{annotation}: dataset.format={self.format!r}; the captions file must be jsonl or csv"
            )
        pairs = read_captions(annotation, fmt)
        files = self._scan(media_root)
        captioned = {os.path.normpath(p).replace(os.sep, "/") for p, _ in pairs}
        unknown = sorted(captioned - set(files))
        for rel in unknown:  # a captioned path that the scan did not find (missing, or not an image/video)
            bad_items.bad(media_root / rel, "not found, or not an image/video file")
        gallery: list[Item] = []
        index: dict[str, int] = {}
        usable = bad_items.usable([str(media_root / rel) for rel in files])
        for rel in files:
            path = str(media_root / rel)
            if path in usable:
                index[rel] = len(gallery)
                gallery.append(Item(id=rel, path=path, kind=media_kind(path)))
        bad_items.warn()
        relevant: dict[str, list[int]] = {}  # caption text -> items, in first-appearance order
        for rel, text in pairs:
            rel = os.path.normpath(rel).replace(os.sep, "/")
            text = " ".join(text.split())
            if rel in index and text:
                items = relevant.setdefault(text, [])
                if index[rel] not in items:
                    items.append(index[rel])
        if not gallery:
            raise VisaError(f"no readable images or videos under {media_root}")
        if not relevant:
            raise VisaError(f"{annotation}: no caption matches an item under {media_root}; check the paths")
        queries = [Query(text=t, relevant=tuple(sorted(items))) for t, items in relevant.items()]
        return Dataset(name=self.name, gallery=gallery, queries=queries, skipped=bad_items.skipped)
