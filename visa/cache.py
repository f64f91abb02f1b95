"""Content-addressed storage of stage results, and the one stage runner every model stage goes through.

Storage (`Store`): key -> value, with `get_many`, `put` and `close`. `SQLiteStore` is one SQLite file under
`cache_dir`, in WAL mode so that several runs (a Hydra multirun with parallel jobs) read and write it at
once. A key is the SHA-256 of everything that can change a result (`make_key`): the stage, the identity of
the model (id, dtype, generation parameters, ...), the prompt and the inputs.

Running (`StageRunner`): asks the store for a stage's keys, computes only the missing ones, and writes each
result as it arrives, so an interrupted run loses only the results still being computed; it also keeps the
per-stage counts and times reported in metrics.json.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import sqlite3
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from tqdm.auto import tqdm

from visa.errors import VisaError

_SCHEMA = "CREATE TABLE IF NOT EXISTS results (key TEXT PRIMARY KEY, stage TEXT, value BLOB, created REAL)"


def default_cache_dir() -> Path:
    """`$VISA_CACHE` if set, else the user's cache folder (e.g. ~/.cache/visa)."""
    if os.environ.get("VISA_CACHE"):
        return Path(os.environ["VISA_CACHE"])
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("visa"))


def model_label(identity: Any) -> str:
    """A short name for the model behind a stage's results (`python -m visa.cache` groups by it)."""
    if isinstance(identity, dict):
        for field in ("model", "model_path", "name", "backbone", "generator", "scorer"):
            if isinstance(identity.get(field), str):
                return identity[field]
    return str(identity)[:80]


def make_key(stage: str, identity: Any, inputs: Any) -> str:
    """SHA-256 over a canonical JSON encoding of (stage, model identity, inputs)."""
    blob = json.dumps([stage, identity, inputs], sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def _encode(value: Any) -> bytes:
    if isinstance(value, np.ndarray):
        buf = io.BytesIO()
        np.save(buf, value, allow_pickle=False)
        return b"N" + buf.getvalue()
    return b"J" + json.dumps(value, ensure_ascii=False).encode("utf-8")


def _decode(blob: bytes) -> Any:
    if blob[:1] == b"N":
        return np.load(io.BytesIO(blob[1:]), allow_pickle=False)
    return json.loads(blob[1:].decode("utf-8"))


class Store(Protocol):
    """Where stage results live: key -> value (JSON-serialisable values or numpy arrays)."""

    def get_many(self, keys: Sequence[str]) -> dict[str, Any]:
        """The values of the keys present (missing keys are absent from the result)."""
        ...

    def put(self, stage: str, key: str, value: Any, model: str = "") -> None:
        """Store one result durably (a crash right after loses nothing that was put); `model` labels it."""
        ...

    def close(self) -> None: ...


class SQLiteStore:
    """A `Store` in one SQLite file, `visa-cache.sqlite` under `root`."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).expanduser()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            self.path = self.root / "visa-cache.sqlite"
            self._db = sqlite3.connect(self.path, timeout=120, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
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
                    found[key] = _decode(blob)
        except sqlite3.OperationalError as e:  # I/O error, locked for longer than the timeout, ...
            raise VisaError(f"cannot read the cache {self.path}: {e}") from None
        except (sqlite3.DatabaseError, ValueError, OSError, EOFError) as e:  # damaged pages or values
            raise self._damaged(e) from None
        return found

    def put_many(self, stage: str, items: dict[str, Any], model: str = "") -> None:
        if not items:
            return
        now = time.time()
        rows = [(k, stage, _encode(v), now, model) for k, v in items.items()]
        try:
            with self._db:  # one transaction
                self._db.executemany(
                    "INSERT OR REPLACE INTO results (key, stage, value, created, model) "
                    "VALUES (?, ?, ?, ?, ?)",
                    rows,
                )
        except sqlite3.OperationalError as e:  # disk full, read-only, ...
            raise VisaError(
                f"cannot write to the cache {self.path}: {e}; free space or fix its permissions, or point "
                "cache_dir at another folder"
            ) from None
        except sqlite3.DatabaseError as e:
            raise self._damaged(e) from None
        self.written[stage] = self.written.get(stage, 0) + len(rows)

    def put(self, stage: str, key: str, value: Any, model: str = "") -> None:
        self.put_many(stage, {key: value}, model=model)

    def close(self) -> None:
        self._db.close()


@dataclass
class StageStats:
    computed: int = 0
    cached: int = 0
    seconds: float = 0.0


Stream = Callable[[list[Any]], Iterator[tuple[int, Any]]]


def batched(fn: Callable[[list[Any]], list[Any]], batch_size: int) -> Stream:
    """Turn a list -> list function into a stream of (index, result), one batch at a time."""

    def stream(inputs: list[Any]) -> Iterator[tuple[int, Any]]:
        for start in range(0, len(inputs), batch_size):
            outputs = fn(inputs[start : start + batch_size])
            if len(outputs) != len(inputs[start : start + batch_size]):
                raise RuntimeError(f"{fn} returned {len(outputs)} results for {batch_size} inputs")
            yield from ((start + j, out) for j, out in enumerate(outputs))

    return stream


class StageRunner:
    """Runs the stages of one evaluation against a store (None: nothing is stored) and keeps, per stage, how
    many results were computed or found, and the seconds spent."""

    def __init__(self, store: Store | None, progress: bool = True):
        self.store, self.progress = store, progress
        self.stats: dict[str, StageStats] = {}

    def run(
        self, stage: str, keys: Sequence[str], inputs: Sequence[Any], compute: Stream, model: str = ""
    ) -> list[Any]:
        """Results for `inputs`, computing only the keys the store lacks.

        `compute` receives the missing inputs (each distinct key once) and yields (index, result) pairs in
        any order; each result is put in the store as it arrives (a small SQLite transaction, well under a
        millisecond), so an interrupted or killed run loses only the results still being computed. `model`
        labels the results in the store (`python -m visa.cache show` groups by it).
        """
        stats = self.stats.setdefault(stage, StageStats())
        with self.timed(stage):
            first_input = dict(zip(keys, inputs))
            found = self.store.get_many(list(first_input)) if self.store is not None else {}
            missing = [k for k in first_input if k not in found]
            stats.cached += len(first_input) - len(missing)
            if missing:
                with tqdm(
                    total=len(missing), desc=stage, unit="call", disable=not self.progress, dynamic_ncols=True
                ) as bar:
                    for index, result in compute([first_input[k] for k in missing]):
                        if self.store is not None:
                            self.store.put(stage, missing[index], result, model=model)
                        found[missing[index]] = result
                        stats.computed += 1
                        bar.update(1)
                lost = [k for k in missing if k not in found]
                if lost:
                    raise RuntimeError(f"stage {stage}: {len(lost)} inputs got no result")
        return [found[k] for k in keys]

    def add_time(self, stage: str, seconds: float) -> None:
        self.stats.setdefault(stage, StageStats()).seconds += seconds

    @contextmanager
    def timed(self, stage: str) -> Iterator[None]:
        """Adds the seconds spent inside to `stage` (also for steps without a model: retrieve, fuse)."""
        stats = self.stats.setdefault(stage, StageStats())
        t0 = time.perf_counter()
        try:
            yield
        finally:
            stats.seconds += time.perf_counter() - t0

    def report(self, model_stages: Sequence[str]) -> dict[str, Any]:
        """calls/<stage>/computed|cached for the model stages, time/<stage> for every stage that ran."""
        out: dict[str, Any] = {}
        for stage in model_stages:
            s = self.stats.get(stage, StageStats())
            out[f"calls/{stage}/computed"] = s.computed
            out[f"calls/{stage}/cached"] = s.cached
        for stage, s in self.stats.items():
            out[f"time/{stage}"] = round(s.seconds, 4)
        return out


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


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m visa.cache {show,merge,prune,move-aside} [CACHE_DIR]` (default: $VISA_CACHE, else the user
    cache folder)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m visa.cache", description="Manage the stage cache.")
    sub = parser.add_subparsers(dest="command", required=True)
    commands = {
        "show": "what the cache folder holds, per stage and model",
        "merge": "pack the per-writer logs of finished writers (shared storage) into one file",
        "prune": "remove the results of a stage and/or a model",
    }
    for name, text in commands.items():
        command = sub.add_parser(name, help=text)
        command.add_argument("cache_dir", nargs="?", default=None)
        if name == "prune":
            command.add_argument("--stage", help="only this stage (encode_text, ..., score)")
            command.add_argument("--model", help="only results of this model (as `show` lists it)")
        if name != "show":
            command.add_argument(
                "--force", action="store_true", help="also logs that may have a running writer"
            )
    aside = sub.add_parser("move-aside", help="rename a damaged cache file so that the next run starts anew")
    aside.add_argument("cache_dir", nargs="?", default=None)
    args = parser.parse_args(argv)
    folder = Path(args.cache_dir).expanduser() if args.cache_dir else default_cache_dir()
    if args.command in commands:
        from visa.cache_admin import command

        return command(args.command, folder, args)
    moved = move_aside(folder)
    if not moved:
        print(f"error: no cache file (visa-cache.sqlite) in {folder}", file=sys.stderr)
        return 1
    print(f"moved aside: {', '.join(str(p) for p in moved)}; the next run starts a new cache in {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
