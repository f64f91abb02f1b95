"""The single-machine cache: one SQLite file, `visa-cache.sqlite` under the cache folder, in WAL mode so
that several runs on one host (a Hydra multirun with parallel jobs) read and write it at once. Stores on
shared storage are in `visa.cache.shared`; `visa.cache.layout.open_cache` chooses between them."""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from visa.cache.codec import decode_value, encode_value
from visa.cache.cost import Cost
from visa.core.errors import VisaError

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS results "
    "(key TEXT PRIMARY KEY, stage TEXT, value BLOB, created REAL, model TEXT DEFAULT '', cost TEXT)"
)
# columns added after the first release: caches written before gain them when opened (see _add_column)
_LATER_COLUMNS = {"model": "TEXT DEFAULT ''", "cost": "TEXT"}


def default_cache_dir() -> Path:
    """`$VISA_CACHE` if set, else the user's cache folder (e.g. ~/.cache/visa)."""
    if os.environ.get("VISA_CACHE"):
        return Path(os.environ["VISA_CACHE"])
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("visa"))


class Store(Protocol):
    """Where stage results live: key -> value (JSON-serialisable values or numpy arrays)."""

    def get_many(self, keys: Sequence[str]) -> dict[str, Any]:
        """The values of the keys present (missing keys are absent from the result)."""
        ...

    def get_with_costs(self, keys: Sequence[str]) -> dict[str, tuple[Any, Cost | None]]:
        """(value, what computing it cost) of the keys present; the cost is None for a result stored
        before costs were (or without one)."""
        ...

    def put(self, stage: str, key: str, value: Any, model: str = "", cost: Cost | None = None) -> None:
        """Store one result durably (a crash right after loses nothing that was put); `model` labels it,
        `cost` is what computing it cost."""
        ...

    def put_many(
        self, stage: str, items: dict[str, Any], model: str = "", costs: dict[str, Cost] | None = None
    ) -> None:
        """Store several results of one stage at once (one transaction), as durably as `put`; `costs`:
        per key, what computing it cost (a key without one is stored with an unknown cost)."""
        ...

    def close(self) -> None: ...


def write_error(path: Path, reason: str) -> VisaError:
    """A cache that cannot take a result (a full disk, a quota, a read-only folder): what is kept, and what
    to do."""
    return VisaError(
        f"cannot write to the cache {path}: {reason}; the results saved before are kept. Free space or fix "
        "its permissions and run the same command again to resume, or point cache_dir at another folder"
    )


def _switch_to_wal(db: sqlite3.Connection, patience: float = 120.0) -> None:
    """WAL mode; when several processes open a new cache at once (parallel multirun jobs), the switch can
    meet another's lock without SQLite's busy handler waiting for it, so it is tried again for a while."""
    deadline = time.monotonic() + patience
    while True:
        try:
            db.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _add_later_columns(db: sqlite3.Connection) -> None:
    """Caches written before results named their model, or stored their cost, gain the columns (their
    results keep an empty model and an unknown cost). Two processes opening such a cache at once may both
    see a column missing; the second one's "duplicate column" means the work is done."""
    columns = {row[1] for row in db.execute("PRAGMA table_info(results)")}
    for name, kind in _LATER_COLUMNS.items():
        if name in columns:
            continue
        try:
            db.execute(f"ALTER TABLE results ADD COLUMN {name} {kind}")
        except sqlite3.OperationalError as e:
            if "duplicate column" not in str(e):
                raise


class SQLiteStore:
    """A `Store` in one SQLite file, `visa-cache.sqlite` under `root`."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).expanduser()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            self.path = self.root / "visa-cache.sqlite"
            self._db = sqlite3.connect(self.path, timeout=120, isolation_level=None)
            _switch_to_wal(self._db)
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(_SCHEMA)
            _add_later_columns(self._db)
        except sqlite3.DatabaseError as e:
            if not isinstance(e, sqlite3.OperationalError):  # "file is not a database"
                raise self._damaged(e) from None
            raise VisaError(
                f"cannot open the cache in {self.root}: {e}; set cache_dir=... or VISA_CACHE"
            ) from e
        except (OSError, sqlite3.Error) as e:
            raise VisaError(
                f"cannot open the cache in {self.root}: {e}; set cache_dir=... or VISA_CACHE"
            ) from e
        self.written: dict[str, int] = {}  # results stored by this run, per stage

    def _damaged(self, error: Exception) -> VisaError:
        return VisaError(
            f"the cache file {self.path} is damaged ({error}); nothing was deleted. Move it aside with "
            f"`python -m visa.cache move-aside {self.root}` and run again (finished results are computed "
            "anew), or point cache_dir at another folder"
        )

    def get_many(self, keys: Sequence[str]) -> dict[str, Any]:
        return {key: value for key, (value, _) in self._select(keys, "NULL").items()}

    def get_with_costs(self, keys: Sequence[str]) -> dict[str, tuple[Any, Cost | None]]:
        found = self._select(keys, "cost")
        return {key: (value, Cost.from_json(cost)) for key, (value, cost) in found.items()}

    def _select(self, keys: Sequence[str], cost_column: str) -> dict[str, tuple[Any, Any]]:
        found: dict[str, tuple[Any, Any]] = {}
        keys = list(dict.fromkeys(keys))
        try:
            for start in range(0, len(keys), 500):  # SQLite limits the number of bound parameters
                chunk = keys[start : start + 500]
                marks = ",".join("?" * len(chunk))
                for key, blob, cost in self._db.execute(
                    f"SELECT key, value, {cost_column} FROM results WHERE key IN ({marks})", chunk
                ):
                    found[key] = (decode_value(blob), cost)
        except sqlite3.OperationalError as e:  # I/O error, locked for longer than the timeout, ...
            raise VisaError(f"cannot read the cache {self.path}: {e}") from None
        except (sqlite3.DatabaseError, ValueError, OSError, EOFError) as e:  # damaged pages or values
            raise self._damaged(e) from None
        return found

    def put_many(
        self, stage: str, items: dict[str, Any], model: str = "", costs: dict[str, Cost] | None = None
    ) -> None:
        if not items:
            return
        now, costs = time.time(), costs or {}
        rows = [
            (k, stage, encode_value(v), now, model, costs[k].to_json() if k in costs else None)
            for k, v in items.items()
        ]
        try:
            with self._db:  # one transaction
                self._db.executemany(
                    "INSERT OR REPLACE INTO results (key, stage, value, created, model, cost) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    rows,
                )
        except sqlite3.OperationalError as e:  # disk full, read-only, ...
            raise write_error(self.path, str(e)) from None
        except sqlite3.DatabaseError as e:
            raise self._damaged(e) from None
        self.written[stage] = self.written.get(stage, 0) + len(rows)

    def put(self, stage: str, key: str, value: Any, model: str = "", cost: Cost | None = None) -> None:
        self.put_many(stage, {key: value}, model=model, costs={key: cost} if cost else None)

    def close(self) -> None:
        self._db.close()


def move_aside(root: str | os.PathLike) -> list[Path]:
    """Rename the cache file in `root` (and its -wal/-shm companions) to visa-cache.damaged-<time>.sqlite...,
    so that the next run starts a new cache; nothing is deleted. The new names, in order."""
    folder = Path(root).expanduser()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    moved = []
    for suffix in ("", "-wal", "-shm"):
        path = folder / f"visa-cache.sqlite{suffix}"
        if path.exists():
            target = folder / f"visa-cache.damaged-{stamp}.sqlite{suffix}"
            path.rename(target)
            moved.append(target)
    return moved
