"""Reads the intermediate files of the VISA reference release and evaluates them without loading a model.

Files in `root` (see METHOD.md): `<name>_query.json`, `<name>_recap.json`, `sim_<name>.txt`, `sim_text.txt`,
and optionally `<name>_question.json`. Rows of the matrices are queries in query-file order, columns are
gallery items in recap-file order.

Both json files hold entries `{"image_id" | "video_id": file, "captions": [text, ...]}`, and the reference
reads `captions[0]` of each: the query of a query entry and the general description of a recap entry
(`first_caption`, also used by `describer=release`). A query entry with more captions is still one query
(one matrix row), read the same way; the log says how many such entries there were.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from visa.core.errors import VisaError
from visa.data import Dataset, Item, Precomputed, build_dataset
from visa.data.files import read_json

ID_KEYS = ("image_id", "video_id", "image", "video")
log = logging.getLogger("visa.release")


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise VisaError(f"missing release file {path}; check dataset.root and dataset.name")
    return read_json(path, "check the release file")


def _entry_id(entry: dict, path: Path) -> str:
    for key in ID_KEYS:
        if isinstance(entry, dict) and key in entry:
            return str(entry[key])
    raise VisaError(f"{path}: entry without any of the keys {', '.join(ID_KEYS)}: {str(entry)[:80]}")


def first_caption(entry: object, where: str) -> str:
    """The text the reference reads from a release entry: `captions[0]` (a query, or an item's general
    description). `where` names the file and entry in the one-line error for an entry without it."""
    texts = entry.get("captions") if isinstance(entry, dict) else None
    if not isinstance(texts, list) or not texts or not isinstance(texts[0], str):
        layout = '{"image_id" or "video_id": file, "captions": [text, ...]}'
        raise VisaError(f"{where} is not {layout}: {str(entry)[:80]}")
    return texts[0]


def _locate_bad_value(path: Path) -> str:
    """Where the first unreadable token or ragged row of a matrix file is, as 'row R, column C: ...'.

    Rows and columns count from 1; rows are the file's lines."""
    columns = None
    with open(path, encoding="utf-8", errors="replace") as f:
        for row, line in enumerate(f, 1):
            tokens = line.split()
            if not tokens:
                continue
            for column, token in enumerate(tokens, 1):
                try:
                    float(token)
                except ValueError:
                    return f"row {row}, column {column}: {token[:20]!r} is not a number"
            columns = columns or len(tokens)
            if len(tokens) != columns:
                return f"row {row} has {len(tokens)} values where the first row has {columns} (ragged rows)"
    return "cannot parse it as numbers"


def read_matrix(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """A whitespace-separated text matrix of the given [rows x columns] shape, every value finite.

    A ragged row, a token that is not a number, NaN or infinity stops with the file, row and column: such a
    matrix would otherwise be scored (NaN sorts first) and give wrong recall without a word."""
    if not path.is_file():
        raise VisaError(f"missing release file {path}; check dataset.root and dataset.name")
    try:
        values = np.loadtxt(path, dtype=np.float32, ndmin=2, encoding="utf-8")
    except (ValueError, UnicodeDecodeError):
        where = _locate_bad_value(path)
        raise VisaError(f"{path}: {where}; each line holds one query's scores, separated by spaces") from None
    if values.shape != shape:
        raise VisaError(
            f"{path} has shape [{values.shape[0]} x {values.shape[1]}], expected [{shape[0]} x {shape[1]}] "
            "(queries x gallery items); check that it belongs to this dataset's query and recap files"
        )
    bad = np.argwhere(~np.isfinite(values))
    if bad.size:
        row, column = (int(i) for i in bad[0])
        raise VisaError(
            f"{path}: row {row + 1}, column {column + 1} is {values[row, column]} ({len(bad)} non-finite "
            "value(s)); every score must be a finite number"
        )
    return values


class VisaRelease:
    def __init__(self, root: str, name: str):
        self.root = Path(root).expanduser()
        self.name = name

    def load(self) -> Dataset:
        if not self.root.is_dir():
            raise VisaError(f"dataset.root {self.root} is not a folder; point it at the release files")
        query_path = self.root / f"{self.name}_query.json"
        recap_path = self.root / f"{self.name}_recap.json"
        queries, recaps = _read_json(query_path), _read_json(recap_path)
        gallery = [Item(_entry_id(e, recap_path), _entry_id(e, recap_path)) for e in recaps]
        captions = [
            (_entry_id(e, query_path), first_caption(e, f"{query_path}: entry {n}"))
            for n, e in enumerate(queries)
        ]
        several = sum(len(e["captions"]) > 1 for e in queries)
        if several:
            log.info("%s: %d entries hold several captions; each is read as its first", query_path, several)
        dataset = build_dataset(self.name, gallery, captions, str(query_path))
        shape = (len(dataset.queries), len(gallery))
        descriptions = [first_caption(e, f"{recap_path}: entry {n}") for n, e in enumerate(recaps)]
        questions = None
        question_path = self.root / f"{self.name}_question.json"
        if question_path.is_file():
            rows = _read_json(question_path)
            if len(rows) == shape[0]:
                questions = [list(r.get("questions") or []) for r in rows]
        dataset.precomputed = Precomputed(
            base_scores=read_matrix(self.root / f"sim_{self.name}.txt", shape),
            text_scores=read_matrix(self.root / "sim_text.txt", shape),
            descriptions=descriptions,
            questions=questions,
        )
        return dataset
