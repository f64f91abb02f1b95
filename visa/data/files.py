"""Reading annotation files and checking media files, the same way for every dataset: one clear line for a
file that cannot be read, and one policy for bad items (`dataset.on_bad_item`)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from visa.core.errors import VisaError
from visa.data.media import check_many

log = logging.getLogger("visa.data")

ON_BAD_ITEM = ("fail", "skip")


def read_text(path: Path) -> str:
    """The file's text; utf-8-sig, because annotation files saved by Windows tools start with a byte-order
    mark."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise VisaError(f"{path} is not UTF-8 text ({e}); save it as UTF-8") from None
    except OSError as e:
        raise VisaError(f"cannot read {path}: {e}") from e


def read_json(path: Path, hint: str = "check dataset.annotation and dataset.format") -> Any:
    try:
        return json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise VisaError(f"{path} is not valid json ({e}); {hint}") from e


def read_jsonl(path: Path) -> list[tuple[int, Any]]:
    """(line number, value) of every non-empty line."""
    rows = []
    for n, line in enumerate(read_text(path).splitlines(), 1):
        if line.strip():
            try:
                rows.append((n, json.loads(line)))
            except json.JSONDecodeError as e:
                raise VisaError(f"{path}:{n} is not valid json ({e}); each line is one object") from e
    return rows


class BadItems:
    """`dataset.on_bad_item`: `fail` stops at the first bad item with one line naming it and its problem;
    `skip` leaves bad items out, keeps them in `skipped` ("path (problem)"; counted as data/skipped in
    metrics.json) and names a few of them in one warning."""

    def __init__(self, policy: str, dataset: str):
        if policy not in ON_BAD_ITEM:
            raise VisaError(f"dataset.on_bad_item={policy!r} must be one of {', '.join(ON_BAD_ITEM)}")
        self.policy, self.dataset = policy, dataset
        self.skipped: list[str] = []

    def usable(self, paths: list[str]) -> set[str]:
        """The paths whose items can be read (each decoded or looked at in full, on a few threads); each bad
        one is failed on or skipped."""
        problems = check_many(paths)
        for path in paths:
            problem = problems[path]
            if problem is not None:
                self.bad(path, problem)
        return {p for p in paths if problems[p] is None}

    def bad(self, path: str | Path, problem: str) -> None:
        if self.policy == "fail":
            raise VisaError(
                f"dataset {self.dataset}: {path} ({problem}): fix or remove it, or set "
                "dataset.on_bad_item=skip"
            )
        self.skipped.append(f"{path} ({problem})")

    def warn(self) -> None:
        if self.skipped:
            log.warning(
                "dataset %s: skipped %d bad item(s) (dataset.on_bad_item=skip), e.g. %s",
                self.dataset,
                len(self.skipped),
                "; ".join(self.skipped[:3]),
            )
