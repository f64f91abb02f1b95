"""Reference banks: queries that are not the test queries, whose embeddings a normaliser of the base
similarity (NNN, QB-Norm, DN; `visa.method.normalizers`) reads.

`normalizer.bank` names where a bank comes from:

- `auto`: the one the dataset names (`Dataset.bank`): the demo's shipped bank, `split:train` for Karpathy
  splits; a dataset that names none stops the run with one line asking for one;
- `split:NAME`: the captions of another split of the run's dataset (the dataset config with
  `split=NAME`; for datasets with a `split` setting: coco, flickr30k, ...);
- `demo` (or another name of a file in `visa/data/banks/`): a bank shipped with the project;
- a path: a captions file, one caption per line (`.txt`), a json list of captions or of objects with one
  of the keys caption, captions, text, query, query_text, sentence (`.json`, `.jsonl`), or a csv with one
  of those columns.

A bank that holds any of the test queries (same text, whitespace and case aside, and same reference item
for composed queries) is refused with one line: a normaliser fitted on the queries it is tested on would
report a gain it cannot have on unseen queries.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from visa.core.errors import VisaError
from visa.data import Dataset, Query
from visa.data.files import read_json, read_jsonl, read_text

SHIPPED = Path(__file__).with_name("banks")
TEXT_KEYS = ("caption", "captions", "text", "query", "query_text", "sentence")
HELP = (
    "split:NAME (another split of the dataset, e.g. split:train), a captions file (.txt one per line, "
    ".json, .jsonl, .csv), or a shipped bank ("
    + ", ".join(sorted(p.stem for p in SHIPPED.glob("*.txt")))
    + ")"
)


@dataclass
class Bank:
    """The reference queries of a normaliser: `spec` as resolved (what metrics.json records)."""

    spec: str
    queries: list[Query]


def _texts_of(value: Any, where: str) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    if isinstance(value, dict):
        for key in TEXT_KEYS:
            if key in value:
                return _texts_of(value[key], where)
    raise VisaError(
        f"{where}: a bank entry must be a caption or an object with one of {', '.join(TEXT_KEYS)}"
    )


def read_captions(path: Path) -> list[str]:
    """The captions of a bank file, in file order."""
    if not path.is_file():
        raise VisaError(f"normalizer.bank={path}: no such file; give {HELP}")
    suffix = path.suffix.lower()
    if suffix == ".json":
        data = read_json(path)
        entries = data if isinstance(data, list) else [data]
        return [t for e in entries for t in _texts_of(e, str(path))]
    if suffix == ".jsonl":
        return [t for _, e in read_jsonl(path) for t in _texts_of(e, str(path))]
    if suffix == ".csv":
        rows = list(csv.DictReader(read_text(path).splitlines()))
        columns = [c for c in TEXT_KEYS if rows and c in rows[0]]
        if not columns:
            raise VisaError(f"{path}: no column named {', '.join(TEXT_KEYS)}; name the captions' column so")
        return [row[columns[0]] for row in rows if row[columns[0]]]
    lines = read_text(path).splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def read_bank(
    spec: str, dataset: Dataset, load_split: Callable[[str], list[Query]], limit: int | None
) -> Bank:
    """The bank `spec` names (see the module's doc), its first `limit` entries (None: all), checked against
    the test queries of `dataset`. `load_split(name)`: the queries of the run's dataset in split `name`."""
    resolved = spec
    if spec == "auto":
        if dataset.bank is None:
            raise VisaError(
                f"normalizer.bank=auto: dataset {dataset.name} names no reference bank; set "
                f"normalizer.bank to {HELP}"
            )
        resolved = dataset.bank
    if resolved.startswith("split:"):
        split = resolved.split(":", 1)[1]
        try:
            split_queries = load_split(split)
        except VisaError as e:
            if str(e).startswith("normalizer.bank"):  # already says what the bank is
                raise
            # the split's own error would suggest fixes for a run on that split; say it is the bank
            which = f"normalizer.bank={resolved}"
            if spec == "auto":
                which = f"normalizer.bank=auto: the normaliser's default bank for dataset {dataset.name}"
                which += f" is {resolved}"
            raise VisaError(
                f"{which}, which cannot be read: {e}; provide it, or give another bank with "
                f"normalizer.bank=...: {HELP}"
            ) from None
        queries = [Query(" ".join(q.text.split()), (), reference=q.reference) for q in split_queries]
    else:
        shipped = SHIPPED / f"{resolved}.txt"
        path = shipped if "/" not in resolved and shipped.is_file() else Path(resolved).expanduser()
        queries = [Query(" ".join(t.split()), ()) for t in read_captions(path)]
    queries = [q for q in queries if q.text]
    if limit is not None:
        if limit < 1:
            raise VisaError(f"normalizer.bank_limit={limit} must be at least 1, or null for the whole bank")
        queries = queries[:limit]
    if not queries:
        raise VisaError(f"normalizer.bank={resolved}: the bank is empty; give {HELP}")
    bank = Bank(resolved, queries)
    check_bank(bank, dataset)
    return bank


def _query_key(query: Query) -> tuple[str, str | None]:
    return " ".join(
        query.text.split()
    ).casefold(), query.reference.id if query.reference is not None else None


def check_bank(bank: Bank, dataset: Dataset) -> None:
    """Refuse a bank that holds a test query (a normaliser must not see the queries it is tested on)."""
    test = {_query_key(q) for q in dataset.queries}
    shared = [q.text for q in bank.queries if _query_key(q) in test]
    if shared:
        raise VisaError(
            f"normalizer.bank={bank.spec} contains {len(shared)} of the test queries of dataset "
            f"{dataset.name} (e.g. {shared[0][:60]!r}); a reference bank must not hold the queries it is "
            f"tested on: give {HELP}"
        )
