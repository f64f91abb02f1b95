"""INQUIRE-Rerank (Vendrow et al., NeurIPS 2024 Datasets and Benchmarks): 200 expert queries about iNat24
photos, each with 100 candidate images (the top 100 of CLIP ViT-H/14-378 over iNat24) labelled relevant or
not. The task re-orders each query's 100 candidates; the candidates come from the data, not from a
backbone (`Dataset.candidates`).

Two published layouts, read from a local copy (`dataset.layout`, `auto` tells them apart):

- `csv`: the benchmark repository's layout under `dataset.root` (INQUIRE's `data/` folder):
  `inquire/inquire_rerank.csv`, one row per (query, candidate) with the columns `query`, `file_name` (the
  iNat24 path, `train/<category folder>/<uuid>.jpg`) and `relevant` (0/1), the images in
  `inat24/train_rerank/<category folder>/<uuid>.jpg`. The csv does not say which split a query belongs to:
  `dataset.split=val|test` keeps the queries listed in `inquire/inquire_queries_<split>.csv` (column
  `query_text`), `all` keeps every row.
- `parquet`: the Hugging Face copy (evendrow/INQUIRE-Rerank) as the hub stores it: `data/validation-*.parquet`
  and `data/test-*.parquet` under `dataset.root`, one row per (query, candidate) with `image` (the hub's
  image struct: `bytes`, `path`), `query`, `relevant` (0/1), `clip_score`, `inat24_image_id`,
  `inat24_file_name` and the query's metadata. The images are written once to `dataset.media_dir` (default
  `images/` under root) as `<inat24_file_name without its train/ folder>`, since every stage reads media
  from files; later loads find them there.

Each distinct `query` is one query (in order of first appearance); its candidates are its rows in file
order, its relevant items those with `relevant` = 1. The gallery is every distinct image. Metrics
(`dataset.metrics`): INQUIRE's AP@k averaged over queries (`mAP@50`, its primary; `mAP@100` over all 100
candidates is what its `eval_rerank_*` scripts print as AP), nDCG@k and MRR, computed as its `metrics.py`
does, with the relevant candidates as the query's positives.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from visa.core.errors import VisaError
from visa.data import Dataset, Item, Query, check_count, check_metrics
from visa.data.files import BadItems, read_text

LAYOUTS = ("auto", "csv", "parquet")
SPLITS = {"val": "validation", "validation": "validation", "test": "test", "all": "all"}
DEFAULT_METRICS = ("mAP@50", "nDCG@50", "MRR", "mAP@100", "nDCG@100")
PUBLISHED = (
    "https://github.com/inquire-benchmark/INQUIRE (data/README.md: inquire_rerank.csv and train_rerank/) and "
    "https://huggingface.co/datasets/evendrow/INQUIRE-Rerank (parquet)"
)

Row = tuple[str, str, int]  # (query, image path relative to the media folder, relevant 0/1)


def _relevant(value: Any, where: str) -> int:
    text = str(value).strip()
    if text in ("0", "1", "0.0", "1.0", "True", "False", "true", "false"):
        return 1 if text in ("1", "1.0", "True", "true") else 0
    raise VisaError(f"{where}: relevant={value!r} must be 0 or 1")


def _image_path(file_name: str) -> str:
    """The iNat24 path (`train/<category>/<uuid>.jpg`) relative to the rerank image folder, which holds the
    category folders themselves (`train_rerank/<category>/<uuid>.jpg`)."""
    rel = file_name.replace("\\", "/").lstrip("/")
    head, _, tail = rel.partition("/")
    return tail if tail and head in ("train", "train_rerank") else rel


class InquireRerankDataset:
    """dataset=inquire_rerank: the CSV layout of the INQUIRE repository or the Hugging Face parquet files."""

    def __init__(
        self,
        root: str,
        layout: str = "auto",
        split: str = "test",
        annotation: str = "inquire/inquire_rerank.csv",
        queries_file: str = "inquire/inquire_queries_{split}.csv",
        media_dir: str | None = None,
        parquet_dir: str = "data",
        limit: int | None = None,
        metrics: list[str] | None = None,
        on_bad_item: str = "fail",
        check_items: bool = False,
        name: str = "inquire_rerank",
    ):
        if layout not in LAYOUTS:
            raise VisaError(f"dataset.layout={layout!r} is not one of {', '.join(LAYOUTS)}")
        if split not in SPLITS:
            raise VisaError(f"dataset.split={split!r} is not one of val, validation, test, all")
        self.root = Path(root).expanduser()
        self.layout, self.split, self.annotation = layout, split, annotation
        self.queries_file, self.media_dir, self.parquet_dir = queries_file, media_dir, parquet_dir
        self.limit = limit  # the first N queries (quick tries)
        self.metrics = check_metrics(DEFAULT_METRICS if metrics is None else metrics, "dataset.metrics")
        self.on_bad_item, self.check_items, self.name = on_bad_item, check_items, name

    # -- layouts --------------------------------------------------------------------------------------------
    def _parquet_files(self) -> list[Path]:
        folder = self.root / self.parquet_dir
        splits = ["validation", "test"] if SPLITS[self.split] == "all" else [SPLITS[self.split]]
        return sorted(p for s in splits for p in folder.glob(f"{s}-*.parquet"))

    def _resolved_layout(self) -> str:
        if self.layout != "auto":
            return self.layout
        if self._parquet_files():
            return "parquet"
        if (self.root / self.annotation).is_file():
            return "csv"
        raise VisaError(
            f"dataset {self.name}: neither {self.root / self.parquet_dir}/{SPLITS[self.split]}-*.parquet "
            f"(the Hugging Face copy) nor {self.root / self.annotation} (the repository's csv) found under "
            f"dataset.root={self.root}. The dataset is published at {PUBLISHED}; put it there, or point "
            "data_dir (env VISA_DATA) or dataset.root at the folder that holds it."
        )

    def _csv_rows(self) -> tuple[list[Row], Path]:
        path = self.root / self.annotation
        reader = csv.DictReader(io.StringIO(read_text(path)))
        columns = set(reader.fieldnames or [])
        missing = {"query", "file_name", "relevant"} - columns
        if missing:
            raise VisaError(
                f"{path}: no column(s) {', '.join(sorted(missing))}; INQUIRE's inquire_rerank.csv has "
                "query, file_name and relevant"
            )
        rows = [
            (row["query"], _image_path(row["file_name"]), _relevant(row["relevant"], f"{path}:{n}"))
            for n, row in enumerate(reader, 2)
        ]
        if SPLITS[self.split] != "all":
            keep = self._split_queries()
            rows = [r for r in rows if r[0] in keep]
        media = self.root / (self.media_dir or "inat24/train_rerank")
        return rows, media

    def _split_queries(self) -> set[str]:
        short = "val" if SPLITS[self.split] == "validation" else "test"
        path = self.root / self.queries_file.format(split=short)
        if not path.is_file():
            raise VisaError(
                f"dataset {self.name}: {path} not found; the csv layout tells a query's split from INQUIRE's "
                "inquire_queries_<split>.csv (in its repository's data/inquire/), or use dataset.split=all"
            )
        reader = csv.DictReader(io.StringIO(read_text(path)))
        if "query_text" not in (reader.fieldnames or []):
            raise VisaError(f"{path}: no column query_text; expected INQUIRE's inquire_queries_<split>.csv")
        return {row["query_text"] for row in reader}

    def _parquet_rows(self) -> tuple[list[Row], Path]:
        try:
            import pyarrow.parquet as pq
        except ImportError as e:
            raise VisaError(
                "dataset=inquire_rerank with the Hugging Face parquet files needs pyarrow: "
                "pip install 'visa-retrieval[parquet]' (or pip install pyarrow)"
            ) from e
        files = self._parquet_files()
        if not files:
            raise VisaError(
                f"dataset {self.name}: no {SPLITS[self.split]}-*.parquet in {self.root / self.parquet_dir}; "
                f"the Hugging Face copy keeps them in data/. Published at {PUBLISHED}"
            )
        media = self.root / (self.media_dir or "images")
        rows: list[Row] = []
        for path in files:
            parquet = pq.ParquetFile(path)
            columns = set(parquet.schema_arrow.names)
            missing = {"query", "relevant", "image"} - columns
            if missing:
                raise VisaError(
                    f"{path}: no column(s) {', '.join(sorted(missing))}; INQUIRE-Rerank's parquet files have "
                    "image, query, relevant, inat24_image_id, inat24_file_name, ..."
                )
            names = [c for c in ("query", "relevant", "inat24_file_name", "inat24_image_id") if c in columns]
            table = parquet.read(columns=names).to_pylist()
            start = len(rows)
            for n, row in enumerate(table):
                where = f"{path} row {n}"
                if row.get("inat24_file_name"):
                    rel = _image_path(row["inat24_file_name"])
                elif row.get("inat24_image_id") is not None:
                    rel = f"{row['inat24_image_id']}.jpg"
                else:
                    raise VisaError(f"{where}: neither inat24_file_name nor inat24_image_id names the image")
                rows.append((row["query"], rel, _relevant(row["relevant"], where)))
            self._extract(path, parquet, [r[1] for r in rows[start:]], media)
        return rows, media

    @staticmethod
    def _extract(path: Path, parquet: Any, rels: list[str], media: Path) -> None:
        """Write the images that the media folder lacks, from the parquet file's `image` column."""
        if all((media / rel).is_file() for rel in rels):
            return
        n = 0
        for batch in parquet.iter_batches(batch_size=64, columns=["image"]):
            for image in batch.column(0).to_pylist():
                target = media / rels[n]
                n += 1
                data = (image or {}).get("bytes")
                if data is None:
                    raise VisaError(f"{path} row {n - 1}: the image column holds no bytes")
                if target.is_file() and target.stat().st_size == len(data):
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                partial = target.with_name(target.name + ".part")
                partial.write_bytes(data)
                partial.replace(target)

    # -- the dataset ----------------------------------------------------------------------------------------
    def rows(self) -> tuple[list[Row], Path]:
        """(query, image path relative to the media folder, relevant) rows, and the media folder."""
        layout = self._resolved_layout()
        rows, media = self._csv_rows() if layout == "csv" else self._parquet_rows()
        if not rows:
            raise VisaError(f"dataset {self.name}: no rows in split {self.split} ({layout} layout)")
        return rows, media

    def texts(self) -> list[str]:
        """The split's queries, without its images (a normaliser's reference bank: split:validation). A
        missing file is named with what it holds, without the fixes of a run on this split (the bank's
        reader says how to give another bank)."""
        parquet = self.layout == "parquet" or (self.layout == "auto" and bool(self._parquet_files()))
        if not parquet:
            short = "val" if SPLITS[self.split] == "validation" else "test"
            path = self.root / self.queries_file.format(split=short)
            if not path.is_file():
                split, folder = SPLITS[self.split], self.root / self.parquet_dir
                raise VisaError(
                    f"{path} not found (INQUIRE's inquire_queries_{short}.csv, which lists the {split} "
                    f"queries; or the Hugging Face copy's {split}-*.parquet in {folder})"
                )
            return list(dict.fromkeys(r[0] for r in self._csv_rows()[0]))
        if not self._parquet_files():
            raise VisaError(
                f"no {SPLITS[self.split]}-*.parquet in {self.root / self.parquet_dir} (the Hugging Face "
                f"copy's {SPLITS[self.split]} queries)"
            )
        import pyarrow.parquet as pq

        texts = [pq.read_table(p, columns=["query"])["query"].to_pylist() for p in self._parquet_files()]
        return list(dict.fromkeys(q for part in texts for q in part))

    def load(self) -> Dataset:
        check_count(self.limit, "dataset.limit")
        rows, media = self.rows()
        by_query: dict[str, list[tuple[str, int]]] = {}
        for query, rel, relevant in rows:
            by_query.setdefault(query, []).append((rel, relevant))
        if self.limit:
            by_query = dict(list(by_query.items())[: self.limit])
        paths = list(dict.fromkeys(str(media / rel) for pairs in by_query.values() for rel, _ in pairs))
        bad = BadItems(self.on_bad_item, self.name)
        missing = [p for p in paths if not Path(p).is_file()]
        for p in missing:
            bad.bad(p, f"missing; the images of INQUIRE-Rerank belong in {media}")
        present = [p for p in paths if p not in set(missing)]
        usable = bad.usable(present) if self.check_items else set(present)
        bad.warn()
        index: dict[str, int] = {}
        gallery: list[Item] = []
        for p in paths:
            if p in usable:
                index[p] = len(gallery)
                gallery.append(Item(id=str(Path(p).relative_to(media)), path=p, kind="image"))
        queries: list[Query] = []
        candidates: list[tuple[int, ...]] = []
        for text, pairs in by_query.items():
            kept = [
                (index[str(media / rel)], relevant) for rel, relevant in pairs if str(media / rel) in index
            ]
            if not kept:
                continue
            cands = tuple(dict.fromkeys(g for g, _ in kept))
            relevant_items = tuple(dict.fromkeys(g for g, r in kept if r))
            queries.append(Query(text=" ".join(text.split()), relevant=relevant_items))
            candidates.append(cands)
        if not queries:
            raise VisaError(f"dataset {self.name}: no query has a usable candidate image in {media}")
        bank = "split:validation" if SPLITS[self.split] == "test" else None  # normalizer.bank=auto
        return Dataset(
            name=self.name,
            gallery=gallery,
            queries=queries,
            skipped=list(bad.skipped),
            candidates=candidates,
            metrics=self.metrics,
            bank=bank,
        )
