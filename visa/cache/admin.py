"""`python -m visa.cache show|merge|prune|move-aside [FOLDER]`: what a cache folder holds, per stage and
model, and its upkeep. A folder may hold the single-machine SQLite file, the per-writer logs of shared storage
(visa.cache.shared), or both, and the gallery stores of large galleries (visa.cache.gallery)."""

from __future__ import annotations

import sqlite3
import sys
from collections.abc import Sequence
from pathlib import Path

from visa.cache.gallery import list_stores, prune_stores, show_stores
from visa.cache.shared import FOLDER, rewrite, scan
from visa.cache.store import default_cache_dir, move_aside
from visa.core.errors import VisaError

SQLITE = "visa-cache.sqlite"


def sqlite_summary(path: Path) -> dict[tuple[str, str], tuple[int, int]]:
    """(stage, model) -> (entries, value bytes) of a SQLite cache file, read-only."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        columns = {row[1] for row in db.execute("PRAGMA table_info(results)")}
        model = "model" if "model" in columns else "''"
        rows = db.execute(
            f"SELECT stage, COALESCE({model}, ''), COUNT(*), SUM(LENGTH(value)) FROM results GROUP BY 1, 2"
        ).fetchall()
    finally:
        db.close()
    return {(stage, m): (n, size or 0) for stage, m, n, size in rows}


def show(folder: Path) -> str:
    lines = [f"cache folder {folder}"]
    if (folder / SQLITE).exists():
        table = sqlite_summary(folder / SQLITE)
        size = (folder / SQLITE).stat().st_size
        lines.append(f"\nSQLite file {SQLITE} ({size / 2**20:.1f} MB; one host)")
        lines += _table({k: (n, b) for k, (n, b) in table.items()})
    if (folder / FOLDER).is_dir():
        summaries, logs = scan(folder)
        open_logs = sum(not log.closed for log in logs)
        size = sum(log.path.stat().st_size for log in logs)
        files = f"{len(logs)} files ({open_logs} not closed)"
        lines.append(f"\nper-writer logs in {FOLDER}/: {files}, {size / 2**20:.1f} MB")
        lines += _table({k: (row.keys, row.bytes) for k, row in summaries.items()})
    lines += show_stores(folder)
    if len(lines) == 1:
        lines.append("(no cache here)")
    return "\n".join(lines)


def _table(rows: dict[tuple[str, str], tuple[int, int]]) -> list[str]:
    out = [f"  {'stage':<14} {'model':<44} {'entries':>9} {'MB':>9}"]
    for (stage, model), (n, size) in sorted(rows.items()):
        out.append(f"  {stage:<14} {(model or '-')[:44]:<44} {n:>9,} {size / 2**20:>9.2f}")
    return out


def prune(folder: Path, stage: str | None, model: str | None, force: bool, store: str | None = None) -> str:
    """Remove the results of `stage` and/or `model`; gallery stores (encode_visual results) go with
    `--stage encode_visual`, `--model`, or by name with `--store`."""
    report = []
    if store is not None or (stage in (None, "encode_visual") and (stage or model)):
        if list_stores(folder):
            report.append(prune_stores(folder, model, store))
    if store is not None and stage is None and model is None:
        return "\n".join(report) or "(no gallery store here)"

    def matches(stage_of: str, model_of: str) -> bool:
        return (stage is None or stage_of == stage) and (model is None or model_of == model)

    if (folder / SQLITE).exists():
        db = sqlite3.connect(folder / SQLITE, timeout=120, isolation_level=None)
        try:
            clauses, args = [], []
            if stage is not None:
                clauses.append("stage = ?")
                args.append(stage)
            if model is not None:
                clauses.append("model = ?")
                args.append(model)
            with db:
                deleted = db.execute(f"DELETE FROM results WHERE {' AND '.join(clauses)}", args).rowcount
        finally:
            db.close()
        report.append(f"{SQLITE}: {deleted} entries removed")
    if (folder / FOLDER).is_dir():
        files, kept, dropped = rewrite(folder, drop=lambda r: matches(r.stage, r.model), force=force)
        report.append(f"{FOLDER}/: {files} finished logs rewritten, {kept} entries kept, {dropped} removed")
    return "\n".join(report) or "(no cache here)"


def command(name: str, folder: Path, args) -> int:
    """show / merge / prune for `python -m visa.cache` (visa.cache.main); the exit status."""
    try:
        if not folder.is_dir():
            raise VisaError(f"{folder} is not a folder; give the cache folder (cache_dir)")
        if name == "show":
            print(show(folder))
        elif name == "merge":
            files, kept, _ = rewrite(folder, force=args.force)
            print(f"{files} finished logs packed into one ({kept} entries)" if files else "nothing to merge")
        else:
            if args.stage is None and args.model is None and args.store is None:
                raise VisaError("prune needs --stage, --model and/or --store (what to remove)")
            print(prune(folder, args.stage, args.model, args.force, args.store))
    except (VisaError, sqlite3.Error, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m visa.cache {show,merge,prune,move-aside} [CACHE_DIR]` (default: $VISA_CACHE, else the user
    cache folder)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m visa.cache", description="Manage the stage cache.")
    sub = parser.add_subparsers(dest="command", required=True)
    commands = {
        "show": "what the cache folder holds, per stage and model",
        "merge": "pack the per-writer logs of finished writers (shared storage) into one file",
        "prune": "remove the results of a stage and/or a model, or a gallery store",
    }
    for name, text in commands.items():
        subcommand = sub.add_parser(name, help=text)
        subcommand.add_argument("cache_dir", nargs="?", default=None)
        if name == "prune":
            subcommand.add_argument("--stage", help="only this stage (encode_text, ..., score)")
            subcommand.add_argument("--model", help="only results of this model (as `show` lists it)")
            subcommand.add_argument(
                "--store", help="the gallery store whose name starts with this (as `show` lists it)"
            )
        if name != "show":
            subcommand.add_argument(
                "--force", action="store_true", help="also logs that may have a running writer"
            )
    aside = sub.add_parser("move-aside", help="rename a damaged cache file so that the next run starts anew")
    aside.add_argument("cache_dir", nargs="?", default=None)
    args = parser.parse_args(argv)
    folder = Path(args.cache_dir).expanduser() if args.cache_dir else default_cache_dir()
    if args.command in commands:
        return command(args.command, folder, args)
    moved = move_aside(folder)
    if not moved:
        print(f"error: no cache file (visa-cache.sqlite) in {folder}", file=sys.stderr)
        return 1
    print(f"moved aside: {', '.join(str(p) for p in moved)}; the next run starts a new cache in {folder}")
    return 0
