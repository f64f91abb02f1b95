"""results.jsonl: one record per query with its base and re-ranked top-K and the fields its re-ranker adds
(VISA: the query's questions and, when the model stages ran, each candidate's answers and passage). Records
are written as they are made (`ResultsFile`), a block of queries at a time, so a run never holds every
query's answers at once; a name ending in `.gz` (`results_file=results.jsonl.gz`) writes it gzip-compressed.
`read_results` reads either."""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import torch

from visa.core.errors import VisaError
from visa.data import Dataset
from visa.method.metrics import RERANKED_TOP
from visa.method.rerankers import Scored


class ResultsFile:
    """Writes result records to `path` one JSON line each, as they come, in strict JSON (no NaN/Infinity);
    gzip-compressed when the name ends in `.gz`. The lines go to `<path>.part`, renamed to `path` by
    `close()`: a run that stopped part-way leaves no file that looks complete."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.partial = self.path.with_name(self.path.name + ".part")
        self.count = 0
        self._file: IO[str] | None = None

    def _open(self) -> IO[str]:
        if self.path.suffix == ".gz":  # level 6: most of level 9's ratio at several times its speed
            return gzip.open(self.partial, "wt", encoding="utf-8", compresslevel=6)
        return open(self.partial, "w", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        try:
            line = json.dumps(record, ensure_ascii=False, allow_nan=False)
        except ValueError:
            raise VisaError(
                f"{self.path.name}: query {record.get('index')} has a non-finite value (NaN or Infinity)"
            ) from None
        try:
            if self._file is None:
                self._file = self._open()
            self._file.write(line + "\n")
        except OSError as e:  # a full disk, a quota
            raise ResultsFileError(self.path, e) from None
        self.count += 1

    def close(self) -> None:
        """Finish the file (an empty one when no record came) and give it its name."""
        try:
            if self._file is None:
                self._file = self._open()
            self._file.close()
            self._file = None
            os.replace(self.partial, self.path)
        except OSError as e:
            raise ResultsFileError(self.path, e) from None

    def discard(self) -> None:
        """Close without renaming: the run did not finish (the `.part` file stays, for a look)."""
        if self._file is not None:
            file, self._file = self._file, None
            try:
                file.close()
            except OSError:  # the disk is full: what could be written is there
                pass


class ResultsFileError(VisaError):
    """The results file could not be written (`error` says why: a full disk, a quota, permissions)."""

    def __init__(self, path: Path, error: OSError):
        super().__init__(f"cannot write {path}: {error.strerror or error}")
        self.path, self.error = path, error


class ResultsReader:
    """The records of a results file, read anew on each iteration (never held all at once)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return read_results(self.path)


def read_results(path: str | os.PathLike) -> Iterator[dict[str, Any]]:
    """The records of a results file (`results.jsonl` or `results.jsonl.gz`), one at a time."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


def result_records(
    dataset: Dataset,
    queries: Sequence[int],
    candidates: torch.Tensor,
    base_scores: torch.Tensor,
    order: torch.Tensor,
    fused: torch.Tensor,
    scored: Scored,
) -> list[dict[str, Any]]:
    """The records of `queries` (indices into the dataset's queries); the tensors' rows and `scored`'s lists
    are those queries (a block of the run's queries, or all of them): their candidates and base scores in
    the backbone's order, the re-ranked `order`, the fused scores of the top-K and the re-ranker's answer."""
    k = fused.shape[1]
    gallery = dataset.gallery
    records = []
    # tensors to Python numbers once per block: .item() per score costs more than the rest of a record
    cand_rows, order_rows = candidates[:, :k].tolist(), order[:, :k].tolist()
    base_rows, text_rows, fused_rows = (t[:, :k].tolist() for t in (base_scores, scored.scores, fused))
    for row, qi in enumerate(queries):
        query = dataset.queries[qi]
        top_ids = [gallery[g].id for g in cand_rows[row]]
        by_id = {
            top_ids[r]: {
                "base": round(base_rows[row][r], 6),
                "text": round(text_rows[row][r], 6),
                "fused": round(fused_rows[row][r], 6),
            }
            for r in range(k)
        }
        record: dict[str, Any] = {
            "index": qi,
            "query": query.text,
            **({"reference": query.reference.id} if query.reference is not None else {}),
            "ground_truth": [gallery[g].id for g in query.relevant],
            **scored.query_fields[row],
            "base_top": [{"id": i, "score": by_id[i]["base"]} for i in top_ids],
            RERANKED_TOP: [{"id": gallery[g].id, **by_id[gallery[g].id]} for g in order_rows[row]],
        }
        if scored.candidate_fields is not None:
            fields = scored.candidate_fields[row]
            record["candidates"] = [{"id": top_ids[r], **fields[r]} for r in range(k)]
        records.append(record)
    return records


def reranked_top(record: dict[str, Any]) -> list[dict[str, Any]]:
    """The re-ranked top-K of a record (`rerank_top` in newer runs, `visa_top` before)."""
    return record.get(RERANKED_TOP) or record.get("visa_top") or []


def truth_rank(top: list[dict[str, Any]], truth: set[str]) -> int | None:
    """The 1-based rank of the first ground-truth item in a top-K list; None when none is in it."""
    for rank, entry in enumerate(top, 1):
        if entry["id"] in truth:
            return rank
    return None


def rank_key(rank: int | None, depth: int) -> int:
    """A rank to sort and compare by: past the last one (depth + 1) when not in the top-K."""
    return rank if rank is not None else depth + 1


def query_summary(record: dict[str, Any]) -> dict[str, Any]:
    """A query's ranks of its ground truth before and after re-ranking and what re-ranking did:
    `helped` (ranked higher), `hurt` (lower) or `unchanged`; `change` = positions gained."""
    truth = set(record.get("ground_truth") or [])
    base, reranked = record.get("base_top") or [], reranked_top(record)
    depth = max(len(base), len(reranked))
    before, after = truth_rank(base, truth), truth_rank(reranked, truth)
    change = rank_key(before, depth) - rank_key(after, depth)
    status = "helped" if change > 0 else "hurt" if change < 0 else "unchanged"
    return {
        "index": record["index"],
        "before": before,
        "after": after,
        "depth": depth,
        "change": change,
        "status": status,
    }
