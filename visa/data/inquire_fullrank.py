"""INQUIRE-Fullrank (Vendrow et al., NeurIPS 2024 Datasets and Benchmarks): 250 expert queries searched over
all of iNat24 (5 million photos), 1-1.5k relevant images per query. The benchmark scores one-stage retrieval
(a CLIP-style model's ranking of the whole gallery) and two-stage retrieval (the first stage's top 100
re-ranked by a multimodal model) by INQUIRE's AP@50.

Read from a local copy in the benchmark repository's layout (its `data/README.md`), under `dataset.root`
(INQUIRE's `data/` folder):

    inquire/inquire_queries_{val,test}.csv   the split's queries: columns query_id, query_text, ...
    inquire/inquire_annotations.csv          every (query_id, image_path) relevant pair; a `relevant`
                                             column, when present, keeps the rows with 1
    inat24/train.json                        iNat24's image list (COCO style: images[].file_name,
                                             "train/<category folder>/<uuid>.jpg")
    inat24/train/<category folder>/<uuid>.jpg
    inat24/embs/<model>/img_emb/img_emb_*.npy   pre-computed image embeddings (clip-retrieval's layout),
    inat24/embs/<model>/metadata/*.parquet      row by row the images they embed (column image_path,
                                                without ".jpg"); both file lists in sorted order

The gallery (`dataset.gallery`): `train_json`, every image of train.json (a backbone encodes them, into
the gallery store), or `embeddings`, the images of the published embeddings in `dataset.embeddings`
(`backbone=inquire_published` then reads those embeddings and encodes only the queries). An image is
matched to the annotations by its last two path components (`<category folder>/<uuid>.jpg`), so a
`train/` prefix on either side does not matter.

Metrics: INQUIRE's AP@50 (`mAP@50`: precision summed at the relevant ranks of the first 50, divided by
min(relevant images, 50)), nDCG@50, MRR, computed as its `metrics.py` does, and `Recall@100`, the share of
each query's relevant images among the first stage's first 100 (what a re-ranker of the top 100 can find
at most). The relevant count is the query's annotated images found in the gallery; annotations that name
an image the gallery lacks are counted and reported in the log (INQUIRE counts them too: on the full
iNat24 gallery there are none).
"""

from __future__ import annotations

import csv
import io
import json
import logging
from pathlib import Path

import numpy as np

from visa.core.errors import VisaError
from visa.data import Dataset, Item, Query, check_count, check_metrics
from visa.data.files import read_text

log = logging.getLogger("visa.data.inquire_fullrank")

SPLITS = {"val": "val", "validation": "val", "test": "test"}
GALLERIES = ("train_json", "embeddings")
DEFAULT_METRICS = ("mAP@50", "nDCG@50", "MRR", "Recall@100")
PUBLISHED = "https://github.com/inquire-benchmark/INQUIRE (data/README.md)"


def image_key(path: str) -> str:
    """What matches an image across INQUIRE's files: `<category folder>/<uuid>.jpg`."""
    parts = path.replace("\\", "/").strip().split("/")
    name = parts[-1] if parts[-1].endswith(".jpg") else parts[-1] + ".jpg"
    return "/".join([*parts[-2:-1], name])


def _csv(path: Path, columns: set[str], what: str) -> list[dict[str, str]]:
    if not path.is_file():
        raise VisaError(f"{path} not found; {what}. The benchmark is published at {PUBLISHED}")
    reader = csv.DictReader(io.StringIO(read_text(path)))
    missing = columns - set(reader.fieldnames or [])
    if missing:
        raise VisaError(f"{path}: no column(s) {', '.join(sorted(missing))}; {what}")
    return list(reader)


def published_files(folder: Path) -> tuple[list[Path], list[Path]]:
    """The embedding files and metadata files of a published embeddings folder, each list sorted."""
    embs = sorted((folder / "img_emb").glob("*.npy"))
    meta = sorted((folder / "metadata").glob("*.parquet"))
    if not embs or not meta:
        raise VisaError(
            f"{folder}: no img_emb/*.npy and metadata/*.parquet; INQUIRE's pre-computed embeddings "
            f"(inat24/embs/<model>/, from {PUBLISHED}) belong there, or set dataset.embeddings"
        )
    return embs, meta


def published_image_paths(folder: Path) -> list[str]:
    """The image_path column of the metadata files, in order: row i of the embeddings is image i."""
    try:
        import pyarrow.parquet as pq
    except ImportError as e:
        raise VisaError(
            "INQUIRE's published embeddings need pyarrow: pip install 'visa-retrieval[parquet]'"
        ) from e
    paths: list[str] = []
    for path in published_files(folder)[1]:
        table = pq.read_table(path)
        if "image_path" not in table.column_names:
            raise VisaError(f"{path}: no column image_path; expected clip-retrieval's metadata parquet files")
        paths.extend(str(p) for p in table.column("image_path").to_pylist())
    return paths


def published_arrays(folder: Path) -> list[np.ndarray]:
    """The embedding files, memory-mapped, in order."""
    arrays = []
    for path in published_files(folder)[0]:
        try:
            array = np.load(path, mmap_mode="r")
        except ValueError as e:  # an object array (allow_pickle) cannot be memory-mapped
            raise VisaError(f"{path}: not a plain numeric .npy array ({e})") from e
        if array.ndim != 2:
            raise VisaError(f"{path}: shape {array.shape}; expected [images, dimension]")
        arrays.append(array)
    return arrays


class InquireFullrankDataset:
    """dataset=inquire_fullrank: the repository's layout (see the module docstring)."""

    def __init__(
        self,
        root: str,
        split: str = "test",
        queries_file: str = "inquire/inquire_queries_{split}.csv",
        annotations: str = "inquire/inquire_annotations.csv",
        images: str = "inat24",
        train_json: str = "inat24/train.json",
        gallery: str = "train_json",
        embeddings: str | None = None,
        limit: int | None = None,
        metrics: list[str] | None = None,
        name: str = "inquire_fullrank",
    ):
        if split not in SPLITS:
            raise VisaError(f"dataset.split={split!r} is not one of val, validation, test")
        if gallery not in GALLERIES:
            raise VisaError(f"dataset.gallery={gallery!r} is not one of {', '.join(GALLERIES)}")
        if gallery == "embeddings" and not embeddings:
            raise VisaError(
                "dataset.gallery=embeddings needs dataset.embeddings, the published embeddings' folder under "
                "root, e.g. inat24/embs/vit-h-14-378"
            )
        self.root = Path(root).expanduser()
        self.split, self.queries_file, self.annotations = SPLITS[split], queries_file, annotations
        self.images, self.train_json, self.gallery = images, train_json, gallery
        self.embeddings, self.limit, self.name = embeddings, limit, name
        self.metrics = check_metrics(DEFAULT_METRICS if metrics is None else metrics, "dataset.metrics")

    def _queries(self) -> list[dict[str, str]]:
        path = self.root / self.queries_file.format(split=self.split)
        return _csv(
            path, {"query_id", "query_text"}, "INQUIRE's inquire_queries_<split>.csv has query_id, query_text"
        )

    def texts(self) -> list[str]:
        """The split's query texts (a normaliser's reference bank: split:val)."""
        return [" ".join(r["query_text"].split()) for r in self._queries()]

    def _gallery_paths(self) -> list[str]:
        """Each gallery image's path relative to the images folder, in gallery order."""
        if self.gallery == "embeddings":
            assert self.embeddings is not None
            return [
                p if p.endswith(".jpg") else p + ".jpg"
                for p in published_image_paths(self.root / self.embeddings)
            ]
        path = self.root / self.train_json
        if not path.is_file():
            raise VisaError(
                f"{path} not found; dataset.gallery=train_json reads iNat24's image list (train.json, from "
                f"{PUBLISHED}), or use dataset.gallery=embeddings with INQUIRE's published embeddings"
            )
        try:
            images = json.loads(read_text(path))["images"]
            return [str(image["file_name"]) for image in images]
        except (ValueError, KeyError, TypeError) as e:
            raise VisaError(f"{path}: not iNat24's train.json (images[].file_name): {e}") from e

    def load(self) -> Dataset:
        check_count(self.limit, "dataset.limit")
        query_rows = self._queries()
        if self.limit:
            query_rows = query_rows[: self.limit]
        annotation_path = self.root / self.annotations
        pairs = _csv(
            annotation_path,
            {"query_id", "image_path"},
            "INQUIRE's inquire_annotations.csv has query_id, image_path",
        )
        positives: dict[str, list[str]] = {}
        for n, row in enumerate(pairs, 2):
            if "relevant" in row and str(row["relevant"]).strip() not in ("1", "1.0", "True", "true"):
                if str(row["relevant"]).strip() not in ("0", "0.0", "False", "false"):
                    raise VisaError(f"{annotation_path}:{n}: relevant={row['relevant']!r} must be 0 or 1")
                continue
            positives.setdefault(str(row["query_id"]).strip(), []).append(image_key(row["image_path"]))
        paths = self._gallery_paths()
        if not paths:
            raise VisaError(f"dataset {self.name}: the gallery is empty ({self.gallery})")
        media = self.root / self.images
        gallery = [Item(id=p, path=str(media / p)) for p in paths]
        index: dict[str, int] = {}
        for i, p in enumerate(paths):
            index.setdefault(image_key(p), i)
        queries: list[Query] = []
        absent = 0
        for row in query_rows:
            wanted = list(dict.fromkeys(positives.get(str(row["query_id"]).strip(), [])))
            found = tuple(index[k] for k in wanted if k in index)
            absent += len(wanted) - len(found)
            queries.append(Query(text=" ".join(row["query_text"].split()), relevant=found))
        if not queries:
            raise VisaError(
                f"dataset {self.name}: no queries in {self.queries_file.format(split=self.split)}"
            )
        if absent:
            log.warning(
                "dataset %s: %d annotated relevant images are not in the gallery (%d images); AP@k counts "
                "only those in the gallery",
                self.name,
                absent,
                len(gallery),
            )
        return Dataset(
            name=self.name,
            gallery=gallery,
            queries=queries,
            metrics=self.metrics,
            bank="split:val" if self.split == "test" else None,
        )
