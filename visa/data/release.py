"""Reads the intermediate files of the VISA reference release and evaluates them without loading a model.

Files in `root` (see METHOD.md): `<name>_query.json`, `<name>_recap.json`, `sim_<name>.txt`, `sim_text.txt`,
and optionally `<name>_question.json`. Rows of the matrices are queries in query-file order, columns are
gallery items in recap-file order.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from visa.data import Dataset, Item, Precomputed, build_dataset
from visa.errors import VisaError

_ID_KEYS = ("image_id", "video_id", "image", "video")


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise VisaError(f"missing release file {path}; check dataset.root and dataset.name")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise VisaError(f"cannot parse {path}: {e}") from e


def _entry_id(entry: dict, path: Path) -> str:
    for key in _ID_KEYS:
        if key in entry:
            return str(entry[key])
    raise VisaError(f"{path}: entry without any of the keys {', '.join(_ID_KEYS)}: {str(entry)[:80]}")


def read_matrix(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """A whitespace-separated text matrix of the given [rows x columns] shape."""
    if not path.is_file():
        raise VisaError(f"missing release file {path}; check dataset.root and dataset.name")
    values = np.fromfile(path, dtype=np.float32, sep=" ")
    with open(path, "rb") as f:
        rows = sum(1 for line in f if line.strip())
    cols = values.size // rows if rows else 0
    if rows * cols != values.size or (rows, cols) != shape:
        raise VisaError(
            f"{path} has shape [{rows} x {values.size / max(rows, 1):g}], expected [{shape[0]} x {shape[1]}] "
            "(queries x gallery items); check that it belongs to this dataset's query and recap files"
        )
    return values.reshape(shape)


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
        dataset = build_dataset(
            self.name, gallery, [(_entry_id(e, query_path), e["captions"]) for e in queries], str(query_path)
        )
        shape = (len(dataset.queries), len(gallery))
        descriptions = [" ".join(e.get("captions") or []) for e in recaps]
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
