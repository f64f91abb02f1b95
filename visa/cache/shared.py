"""A cache store that stays correct when many processes on many hosts write into one folder on a network
filesystem (NFS, Lustre, GPFS, BeeGFS, CephFS, SMB): one append-only log file per writer process.

Why not the single SQLite file: WAL mode keeps its index in a shared-memory file that every connection maps,
which only works for processes on one host (SQLite's own documentation: "WAL does not work over a network
filesystem"). Rollback-journal mode instead relies on POSIX advisory locks (fcntl) to keep a reader out
of a file while a writer changes it; on NFS those locks go through a separate lock service that is often
slow or broken, and Lustre refuses them unless mounted with `-o flock`. A SQLite file that a writer on one
host changes while a reader on another host reads it can therefore give that reader a torn page.

What this store needs from the filesystem instead, which NFS (close-to-open consistency), Lustre and GPFS
all give:
- a file is written by one process only: each writer creates its own file, named by host, pid and a
  random tag, with O_EXCL, and only ever appends to it. No two writers share a file, so no locks.
- a reader that opens a file sees what the writer flushed before (close-to-open); it may also see a
  record that is only partly there (a writer killed mid-write, pages that reached the server out of
  order). Every record carries its length and a CRC-32 of its content; a reader stops at the first record
  that is incomplete or fails its check, and reads on from there next time (a live writer completes it;
  a dead writer's torn tail is ignored for good and its results are computed again).
- a new file appears atomically in its folder (create; rename for merged files).

Writers flush each record to the kernel at once (`write(2)`: a killed process loses nothing it wrote) and
fsync at most every `SYNC_SECONDS` and at close (a crashed node loses at most those seconds of results).
Readers keep an index key -> (file, offset) in memory and read values on demand; a key written twice
(two shards racing on the same input) has one value, since results are deterministic functions of their
key, and the first one found is used.

`python -m visa.cache show FOLDER` shows what a folder holds per stage and model; `merge` packs the logs of
finished writers into one file; `prune` drops a stage or a model. Both leave files of writers that may
still run alone (see `finished`).
"""

from __future__ import annotations

import os
import socket
import struct
import time
import uuid
import zlib
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from visa.cache.codec import decode_value, encode_value
from visa.cache.cost import PACKED, Cost
from visa.cache.store import write_error
from visa.core.errors import VisaError

FOLDER = "writers"  # inside the cache folder
SUFFIX = ".vlog"
MAGIC = b"VSR1"  # a record without its cost (written before costs were, or with an unknown cost)
MAGIC_COST = b"VSR2"  # a record whose header is followed by its cost (`visa.cache.cost.PACKED`)
# magic, crc32 of the rest, then the lengths of key, stage, model and value
HEADER = struct.Struct("<4sIHHHI")
CLOSED = "\x00closed"  # the stage of the last record a writer writes when it closes cleanly
SYNC_SECONDS = 2.0


def encode_record(key: str, stage: str, model: str, value: bytes, cost: Cost | None = None) -> bytes:
    """One record; with a cost, in the VSR2 form (the cost right after the header, covered by the CRC)."""
    k, s, m = key.encode(), stage.encode(), model.encode()
    lengths = struct.pack("<HHHI", len(k), len(s), len(m), len(value))
    packed = cost.pack() if cost is not None else b""
    crc = zlib.crc32(lengths + packed + k + s + m + value)
    magic = MAGIC_COST if cost is not None else MAGIC
    return HEADER.pack(magic, crc, len(k), len(s), len(m), len(value)) + packed + k + s + m + value


@dataclass
class Record:
    key: str
    stage: str
    model: str
    offset: int  # of the value in the file
    size: int  # of the value
    cost: Cost | None = None  # None: a VSR1 record (unknown cost)


def read_records(data: bytes, start: int = 0) -> Iterator[tuple[Record, int]]:
    """(record, offset after it) for each complete, intact record from `start`; stops at the first that is
    incomplete or damaged."""
    pos = start
    while pos + HEADER.size <= len(data):
        magic, crc, nk, ns, nm, nv = HEADER.unpack_from(data, pos)
        extra = PACKED.size if magic == MAGIC_COST else 0
        end = pos + HEADER.size + extra + nk + ns + nm + nv
        if magic not in (MAGIC, MAGIC_COST) or end > len(data):
            return
        body = data[pos + 8 : end]  # the lengths, the cost and the content: what the CRC covers
        if zlib.crc32(body) != crc:
            return
        c0 = pos + HEADER.size
        cost = Cost.unpack(data[c0 : c0 + extra]) if extra else None
        k0 = c0 + extra
        key = data[k0 : k0 + nk].decode()
        stage = data[k0 + nk : k0 + nk + ns].decode()
        model = data[k0 + nk + ns : k0 + nk + ns + nm].decode()
        yield Record(key, stage, model, k0 + nk + ns + nm, nv, cost), end
        pos = end


@dataclass
class LogFile:
    path: Path
    good: int = 0  # bytes read and found intact
    closed: bool = False  # its writer closed it cleanly
    records: int = 0


class SharedFolderStore:
    """Key -> value (encoded by `visa.cache.codec`); one log file per writer under `root/writers/`."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).expanduser()
        self.folder = self.root / FOLDER
        self.name = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}{SUFFIX}"
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise VisaError(f"cannot create the cache folder {self.folder}: {e}; set cache_dir=...") from e
        self._fd: int | None = None  # created on the first put: a run that computes nothing writes no file
        self._last_sync = 0.0
        self.files: dict[str, LogFile] = {}
        # key -> (file name, value offset, size, cost)
        self.index: dict[str, tuple[str, int, int, Cost | None]] = {}
        self.path = self.folder  # what messages name (the SQLite cache names its file)
        self.written: dict[str, int] = {}  # results stored by this run, per stage

    # -- reading ----------------------------------------------------------------------------------------
    def refresh(self) -> None:
        """Index what writers added since the last look (new files, new records in known files)."""
        try:
            names = sorted(p.name for p in os.scandir(self.folder) if p.name.endswith(SUFFIX))
        except FileNotFoundError:
            names = []
        for name in names:
            if name == self.name:
                continue  # this writer's own records are indexed as they are written
            log = self.files.setdefault(name, LogFile(self.folder / name))
            if log.closed:
                continue
            try:
                with open(log.path, "rb") as f:  # opened anew each time: close-to-open consistency on NFS
                    f.seek(log.good)
                    data = f.read()
            except FileNotFoundError:  # merged away meanwhile: its records are in the merged file
                del self.files[name]
                continue
            consumed = 0  # offsets in `data` count from where this read started (log.good)
            for record, end in read_records(data):
                if record.stage == CLOSED:
                    log.closed = True
                else:
                    self.index.setdefault(
                        record.key, (name, log.good + record.offset, record.size, record.cost)
                    )
                    log.records += 1
                consumed = end
            log.good += consumed

    def get_many(self, keys: Sequence[str]) -> dict[str, Any]:
        return {key: value for key, (value, _) in self.get_with_costs(keys).items()}

    def get_with_costs(self, keys: Sequence[str]) -> dict[str, tuple[Any, Cost | None]]:
        self.refresh()
        found: dict[str, tuple[Any, Cost | None]] = {}
        for _ in range(2):  # a second pass if a file was merged away between indexing and reading
            gone = False
            wanted: dict[str, list[tuple[str, int, int, Cost | None]]] = defaultdict(list)
            for key in dict.fromkeys(keys):
                if key in self.index and key not in found:
                    name, offset, size, cost = self.index[key]
                    wanted[name].append((key, offset, size, cost))
            for name, entries in wanted.items():
                try:
                    with open(self.folder / name, "rb") as f:
                        for key, offset, size, cost in sorted(entries, key=lambda e: e[1]):
                            f.seek(offset)
                            found[key] = (decode_value(f.read(size)), cost)
                except FileNotFoundError:
                    gone = True
                    self.files.pop(name, None)
                    self.index = {k: v for k, v in self.index.items() if v[0] != name}
            if not gone:
                break
            self.refresh()
        return found

    # -- writing ----------------------------------------------------------------------------------------
    def put(self, stage: str, key: str, value: Any, model: str = "", cost: Cost | None = None) -> None:
        self.put_many(stage, {key: value}, model=model, costs={key: cost} if cost else None)

    def put_many(
        self, stage: str, items: dict[str, Any], model: str = "", costs: dict[str, Cost] | None = None
    ) -> None:
        if not items:
            return
        costs = costs or {}
        if self._fd is None:
            path = self.folder / self.name
            try:
                self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
            except OSError as e:
                raise write_error(path, e.strerror or str(e)) from None
            self.files[self.name] = LogFile(path)
        log = self.files[self.name]
        chunks = []
        for key, value in items.items():
            blob, cost = encode_value(value), costs.get(key)
            record = encode_record(key, stage, model, blob, cost)
            value_offset = log.good + len(record) - len(blob)
            self.index.setdefault(key, (self.name, value_offset, len(blob), cost))
            log.good += len(record)
            log.records += 1
            chunks.append(record)
        data = b"".join(chunks)
        try:
            written = os.write(self._fd, data)  # in the kernel now: survives this process being killed
            if written != len(data):  # the disk filled up part-way: the torn record is ignored by readers
                raise OSError(28, "No space left on device")
            if time.monotonic() - self._last_sync > SYNC_SECONDS:
                os.fsync(self._fd)
                self._last_sync = time.monotonic()
        except OSError as e:
            for key in items:  # not stored: a later look-up must not find them in this writer's file
                if self.index.get(key, ("",))[0] == self.name:
                    del self.index[key]
            raise write_error(self.folder / self.name, e.strerror or str(e)) from None
        self.written[stage] = self.written.get(stage, 0) + len(items)

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                os.write(fd, encode_record("", CLOSED, "", b""))
                os.fsync(fd)
            except OSError:  # a full disk: the log stays unmarked, and is read as a finished writer's
                pass
            finally:
                os.close(fd)


def _intact_length(data: bytes) -> int:
    """Bytes of `data` up to the end of its last intact record."""
    ends = [end for _, end in read_records(data)]
    return ends[-1] if ends else 0


# -- inspecting and maintaining a folder (python -m visa.cache) ---------------------------------------------
@dataclass
class Summary:
    records: int = 0
    keys: int = 0
    bytes: int = 0


def scan(folder: str | os.PathLike) -> tuple[dict[tuple[str, str], Summary], list[LogFile]]:
    """Per (stage, model): records, distinct keys and value bytes in a folder's logs; and the log files."""
    store_folder = Path(folder).expanduser() / FOLDER
    table: dict[tuple[str, str], Summary] = defaultdict(Summary)
    seen: set[str] = set()
    logs = []
    for path in sorted(store_folder.glob(f"*{SUFFIX}")):
        data = path.read_bytes()
        log = LogFile(path, good=_intact_length(data))
        for record, _ in read_records(data):
            if record.stage == CLOSED:
                log.closed = True
                continue
            log.records += 1
            row = table[(record.stage, record.model)]
            row.records += 1
            row.bytes += record.size
            if record.key not in seen:
                seen.add(record.key)
                row.keys += 1
        logs.append(log)
    return dict(table), logs


def finished(log: LogFile, force: bool = False) -> bool:
    """A log that no writer appends to any more: closed cleanly, or written by a process of this host that
    is gone. A log of another host that is not closed may belong to a running job: left alone unless
    `force` (when no job runs)."""
    if log.closed or force:
        return True
    host, pid = _writer(log.path.name)
    if host == socket.gethostname() and pid is not None:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False
    return False


def _writer(name: str) -> tuple[str, int | None]:
    stem = name[: -len(SUFFIX)]
    parts = stem.rsplit("-", 2)
    if len(parts) == 3 and parts[1].isdigit():
        return parts[0], int(parts[1])
    return stem, None


def rewrite(
    folder: str | os.PathLike, drop=lambda record: False, force: bool = False
) -> tuple[int, int, int]:
    """Pack the finished logs into one new log, keeping each key once and leaving out records for which
    `drop(record)` is true; then remove them. Returns (files packed, records kept, records dropped).

    The new file is written under a temporary name and renamed into place before the old ones go, so a
    reader sees every record at any moment (possibly twice, which is harmless)."""
    store_folder = Path(folder).expanduser() / FOLDER
    _, logs = scan(folder)
    sources = [log for log in logs if finished(log, force)]
    if not sources:
        return 0, 0, 0
    kept = dropped = 0
    seen: set[str] = set()
    tag = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp = store_folder / f".{tag}.tmp"
    with open(tmp, "wb") as out:
        for log in sources:
            data = log.path.read_bytes()
            for record, _ in read_records(data):
                if record.stage == CLOSED or record.key in seen:
                    continue
                if drop(record):
                    dropped += 1
                    continue
                seen.add(record.key)
                value = data[record.offset : record.offset + record.size]
                out.write(encode_record(record.key, record.stage, record.model, value, record.cost))
                kept += 1
        out.write(encode_record("", CLOSED, "", b""))
        out.flush()
        os.fsync(out.fileno())
    if kept:
        os.rename(tmp, store_folder / f"merged-{tag}{SUFFIX}")
    else:
        tmp.unlink()
    for log in sources:
        log.path.unlink()
    return len(sources), kept, dropped
