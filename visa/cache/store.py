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
from visa.core.errors import VisaError

_SCHEMA = "CREATE TABLE IF NOT EXISTS results (key TEXT PRIMARY KEY, stage TEXT, value BLOB, created REAL)"


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

    def put(self, stage: str, key: str, value: Any, model: str = "") -> None:
        """Store one result durably (a crash right after loses nothing that was put); `model` labels it."""
        ...

    def put_many(self, stage: str, items: dict[str, Any], model: str = "") -> None:
        """Store several results of one stage at once (one transaction), as durably as `put`."""
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
            columns = {row[1] for row in self._db.execute("PRAGMA table_info(results)")}
            if "model" not in columns:  # caches written before results named their model
                self._db.execute("ALTER TABLE results ADD COLUMN model TEXT DEFAULT ''")
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
        found: dict[str, Any] = {}
        keys = list(dict.fromkeys(keys))
        try:
            for start in range(0, len(keys), 500):  # SQLite limits the number of bound parameters
                chunk = keys[start : start + 500]
                marks = ",".join("?" * len(chunk))
                for key, blob in self._db.execute(
                    f"SELECT key, value FROM results WHERE key IN ({marks})", chunk
                ):
                    found[key] = decode_value(blob)
        except sqlite3.OperationalError as e:  # I/O error, locked for longer than the timeout, ...
            raise VisaError(f"cannot read the cache {self.path}: {e}") from None
        except (sqlite3.DatabaseError, ValueError, OSError, EOFError) as e:  # damaged pages or values
            raise self._damaged(e) from None
        return found

    def put_many(self, stage: str, items: dict[str, Any], model: str = "") -> None:
        if not items:
            return
        now = time.time()
        rows = [(k, stage, encode_value(v), now, model) for k, v in items.items()]
        try:
            with self._db:  # one transaction
                self._db.executemany(
                    "INSERT OR REPLACE INTO results (key, stage, value, created, model) "
                    "VALUES (?, ?, ?, ?, ?)",
                    rows,
                )
        except sqlite3.OperationalError as e:  # disk full, read-only, ...
            raise write_error(self.path, str(e)) from None
        except sqlite3.DatabaseError as e:
            raise self._damaged(e) from None
        self.written[stage] = self.written.get(stage, 0) + len(rows)

    def put(self, stage: str, key: str, value: Any, model: str = "") -> None:
        self.put_many(stage, {key: value}, model=model)

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
