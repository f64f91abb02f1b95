"""The gallery store: a large gallery's embeddings as memory-mapped arrays on disk instead of millions of
rows in the results cache.

One store holds one backbone's embeddings of one gallery, in the cache folder under
`gallery/<key>/`, where the key is the SHA-256 of the backbone's identity, the storage dtype and the
encode_visual cache keys of every item in order (so a changed file, model or dtype is a new store, as it is
a new cache key). Inside:

    store.json           what the store is: model, identity, dtype, items, shard size, dimension
    items.txt            the item ids, one per line, in gallery order (row i of the store is item i)
    shards/000000.npy    rows [0, shard_size), an .npy file written to a temporary name and renamed when
    shards/000001.npy    complete, so a shard is either whole or absent: a run (or a worker) killed
    ...                  mid-way loses at most the shards it was writing, and the next run encodes only
                         the missing ones
    index-<key>.faiss    approximate indexes built from the store (visa.method.ann)

The approximate indexes of embeddings published elsewhere (`visa.backbones.published`) are kept the same
way, in a folder whose store.json names the published files and that holds no shards (`index_folder`).

Shards are independent files, so several processes (Ray tasks, SLURM array jobs) can each write their own.
`StoredRows` reads a complete store as one [items, dim] array without loading it: each block a search
needs is read from the memory-mapped shards when it is used.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from visa.cache.codec import model_label
from visa.core.errors import VisaError

FOLDER = "gallery"  # under the cache folder
DTYPES = ("float16", "float32")
MANIFEST = "store.json"


def store_key(identity: Any, item_keys: Sequence[str], dtype: str) -> str:
    """The store's content address: backbone identity, storage dtype, and every item's cache key in order."""
    items = hashlib.sha256("\n".join(item_keys).encode("ascii")).hexdigest()
    blob = json.dumps(["gallery_store", identity, dtype, items], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class StoredRows:
    """A complete store's rows as one read-only [items, dim] array: slices and index lists give float32
    torch tensors read from the memory-mapped shards; nothing else is loaded."""

    def __init__(self, shards: list[np.ndarray]):
        self.shards = shards
        self.starts = np.cumsum([0] + [len(s) for s in shards])
        dims = {s.shape[1] for s in shards}
        self.shape = (int(self.starts[-1]), dims.pop() if dims else 0)
        self.dtype = torch.float32  # what reading gives

    def __len__(self) -> int:
        return self.shape[0]

    def block(self, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) as a numpy array in the storage dtype (a view when inside one shard)."""
        stop = min(stop, self.shape[0])
        first = int(np.searchsorted(self.starts, start, side="right")) - 1
        parts = []
        while start < stop:
            shard = self.shards[first]
            lo = start - int(self.starts[first])
            hi = min(len(shard), stop - int(self.starts[first]))
            parts.append(shard[lo:hi])
            start += hi - lo
            first += 1
        if len(parts) == 1:
            return parts[0]
        if not parts:
            return np.zeros((0, self.shape[1]), dtype=np.float32)
        return np.concatenate(parts)

    def take(self, rows: np.ndarray) -> np.ndarray:
        """The given rows (any order, repeats allowed) as a numpy array in the storage dtype."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        if rows.size and (rows.min() < 0 or rows.max() >= self.shape[0]):
            raise IndexError(f"row out of range 0..{self.shape[0] - 1}")
        out = np.empty((rows.size, self.shape[1]), dtype=self.shards[0].dtype if self.shards else np.float32)
        which = np.searchsorted(self.starts, rows, side="right") - 1
        for s in np.unique(which):
            mask = which == s
            local = rows[mask] - self.starts[s]
            order = np.argsort(local, kind="stable")  # sorted reads from the memory map
            picked = np.empty((local.size, self.shape[1]), dtype=out.dtype)
            picked[order] = self.shards[s][local[order]]
            out[mask] = picked
        return out

    def __getitem__(self, key: Any) -> torch.Tensor:
        if isinstance(key, slice):
            start, stop, step = key.indices(self.shape[0])
            if step != 1:
                raise IndexError("a stored gallery is sliced with step 1")
            return torch.from_numpy(np.array(self.block(start, stop), dtype=np.float32))
        if isinstance(key, int):
            return torch.from_numpy(np.array(self.take(np.array([key])), dtype=np.float32))[0]
        if isinstance(key, torch.Tensor):
            key = key.cpu().numpy()
        return torch.from_numpy(np.array(self.take(np.asarray(key)), dtype=np.float32))

    def blocks(self, size: int) -> Iterator[tuple[int, np.ndarray]]:
        """(first row, rows) blocks of at most `size` rows, in order, in the storage dtype."""
        for start in range(0, self.shape[0], size):
            yield start, self.block(start, start + size)

    def float(self) -> torch.Tensor:
        """Every row loaded, float32 (what a normaliser that needs the whole gallery at once gets)."""
        return torch.from_numpy(np.array(self.block(0, self.shape[0]), dtype=np.float32))

    def to(self, device: Any) -> torch.Tensor:
        return self.float().to(device)


@dataclass
class GalleryStore:
    """One store folder (see the module docstring)."""

    folder: Path
    count: int
    shard_size: int
    dtype: str

    @classmethod
    def open(
        cls,
        cache_root: str | os.PathLike,
        identity: Any,
        item_keys: Sequence[str],
        item_ids: Sequence[str],
        dtype: str = "float16",
        shard_size: int = 32768,
    ) -> GalleryStore:
        """The store of these items under this backbone, created (empty) when new; an existing store keeps
        its shard size."""
        if dtype not in DTYPES:
            raise VisaError(f"retrieval.gallery_dtype={dtype!r} is not one of {', '.join(DTYPES)}")
        if shard_size < 1:
            raise VisaError(f"retrieval.gallery_shard_size={shard_size} must be at least 1")
        key = store_key(identity, item_keys, dtype)
        folder = Path(cache_root).expanduser() / FOLDER / key[:32]
        manifest = folder / MANIFEST
        if manifest.is_file():
            meta = read_manifest(folder)
            return cls(folder, int(meta["count"]), int(meta["shard_size"]), str(meta["dtype"]))
        try:
            (folder / "shards").mkdir(parents=True, exist_ok=True)
            _write_atomic(folder / "items.txt", "".join(f"{i}\n" for i in item_ids).encode("utf-8"))
            meta = {
                "model": model_label(identity),
                "identity": identity,
                "dtype": dtype,
                "count": len(item_keys),
                "shard_size": shard_size,
                "dim": None,
                "created": time.time(),
            }
            _write_atomic(manifest, json.dumps(meta, default=str, indent=1).encode("utf-8"))
        except OSError as e:
            raise VisaError(
                f"cannot create the gallery store in {folder}: {e.strerror or e}; free space or set cache_dir"
            ) from e
        return cls(folder, len(item_keys), shard_size, dtype)

    # -- shards --------------------------------------------------------------------------------------------
    @property
    def num_shards(self) -> int:
        return (self.count + self.shard_size - 1) // self.shard_size

    def shard_rows(self, n: int) -> range:
        return range(n * self.shard_size, min(self.count, (n + 1) * self.shard_size))

    def shard_path(self, n: int) -> Path:
        return self.folder / "shards" / f"{n:06d}.npy"

    def missing(self) -> list[int]:
        """The shards not written yet."""
        return [n for n in range(self.num_shards) if not self.shard_path(n).is_file()]

    def complete(self) -> bool:
        return not self.missing()

    def write_shard(self, n: int, rows: np.ndarray) -> None:
        """Shard n's embeddings [rows of shard n, dim], stored in the store's dtype; whole or not at all."""
        expected = len(self.shard_rows(n))
        if rows.ndim != 2 or rows.shape[0] != expected:
            raise VisaError(f"gallery store {self.folder}: shard {n} needs {expected} rows, got {rows.shape}")
        if not np.isfinite(rows).all():
            bad = int(np.argwhere(~np.isfinite(rows))[0][0]) + self.shard_rows(n).start
            raise VisaError(
                f"the backbone's embedding of gallery item {bad} (row {bad} of {self.folder / 'items.txt'}) "
                "is not a finite number; check the backbone's weights and dtype"
            )
        target = self.shard_path(n)
        partial = target.with_name(f"{target.name}.{os.getpid()}.part")
        try:
            with open(partial, "wb") as f:
                np.save(f, np.ascontiguousarray(rows, dtype=self.dtype), allow_pickle=False)
                f.flush()
                os.fsync(f.fileno())
            os.replace(partial, target)
        except OSError as e:
            partial.unlink(missing_ok=True)
            raise VisaError(
                f"cannot write {target}: {e.strerror or e}; the shards written before are kept. Free space "
                "and run the same command again to resume"
            ) from e
        meta = read_manifest(self.folder)
        if meta.get("dim") is None:
            meta["dim"] = int(rows.shape[1])
            _write_atomic(self.folder / MANIFEST, json.dumps(meta, default=str, indent=1).encode("utf-8"))

    def rows(self) -> StoredRows:
        """The complete store, memory-mapped."""
        missing = self.missing()
        if missing:
            raise VisaError(
                f"gallery store {self.folder} lacks {len(missing)} of {self.num_shards} shards (first: "
                f"{missing[0]}); run the same command again to encode them"
            )
        shards = [np.load(self.shard_path(n), mmap_mode="r") for n in range(self.num_shards)]
        dims = {s.shape[1] for s in shards}
        if len(dims) > 1:
            raise VisaError(f"gallery store {self.folder}: shards of different widths {sorted(dims)}")
        return StoredRows(shards)

    def ids(self) -> list[str]:
        return (self.folder / "items.txt").read_text(encoding="utf-8").splitlines()


def index_folder(cache_root: str | os.PathLike, identity: Any, rows: StoredRows) -> Path:
    """Where the approximate indexes of embeddings that are not a store of ours (a benchmark's published
    embeddings) are kept: `gallery/<key>/` with a store.json that says so (no shards), keyed by the
    backbone's identity and the embedding files' names, sizes and modification times."""
    files = []
    for shard in rows.shards:
        name = getattr(shard, "filename", None)
        st = os.stat(name) if name else None
        files.append([str(name), st.st_size if st else len(shard), st.st_mtime_ns if st else 0])
    blob = json.dumps(["published", identity, list(rows.shape), files], sort_keys=True, default=str)
    folder = Path(cache_root).expanduser() / FOLDER / hashlib.sha256(blob.encode()).hexdigest()[:32]
    if not (folder / MANIFEST).is_file():
        folder.mkdir(parents=True, exist_ok=True)
        meta = {
            "model": model_label(identity),
            "identity": identity,
            "dtype": "published",
            "count": rows.shape[0],
            "shard_size": max(rows.shape[0], 1),
            "dim": rows.shape[1],
            "published": [f[0] for f in files],
            "created": time.time(),
        }
        _write_atomic(folder / MANIFEST, json.dumps(meta, default=str, indent=1).encode("utf-8"))
    return folder


def _write_atomic(path: Path, data: bytes) -> None:
    partial = path.with_name(f"{path.name}.{os.getpid()}.part")
    partial.write_bytes(data)
    os.replace(partial, path)


def read_manifest(folder: Path) -> dict[str, Any]:
    try:
        return json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise VisaError(
            f"{folder / MANIFEST} is unreadable ({e}); remove the folder {folder} and run again"
        ) from e


# -- python -m visa.cache: show and prune -------------------------------------------------------------------
@dataclass
class StoreSummary:
    folder: Path
    model: str
    dtype: str
    count: int
    dim: int | None
    shards_done: int
    shards: int
    bytes: int
    indexes: list[str]
    created: float


def list_stores(cache_root: Path) -> list[StoreSummary]:
    """Every gallery store under a cache folder, oldest first."""
    root = cache_root / FOLDER
    out = []
    for folder in sorted(p for p in root.glob("*") if p.is_dir()) if root.is_dir() else []:
        try:
            meta = read_manifest(folder)
        except VisaError:
            continue
        count, shard_size = int(meta["count"]), int(meta["shard_size"])
        done = len(list((folder / "shards").glob("*.npy")))
        if meta.get("published"):  # indexes of published embeddings: no shards of ours
            done = (count + shard_size - 1) // shard_size
        size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
        indexes = sorted(p.name for p in folder.glob("index-*.faiss"))
        shards = (count + shard_size - 1) // shard_size
        out.append(
            StoreSummary(
                folder,
                str(meta.get("model", "")),
                str(meta["dtype"]),
                count,
                meta.get("dim"),
                done,
                shards,
                size,
                indexes,
                float(meta.get("created", 0)),
            )
        )
    return sorted(out, key=lambda s: s.created)


def show_stores(cache_root: Path) -> list[str]:
    stores = list_stores(cache_root)
    if not stores:
        return []
    lines = [f"\ngallery stores in {FOLDER}/: {len(stores)}"]
    lines.append(
        f"  {'store':<12} {'model':<36} {'items':>11} {'dim':>5} {'dtype':<8} {'shards':>13} {'MB':>9}"
    )
    for s in stores:
        shards = f"{s.shards_done}/{s.shards}" + ("" if s.shards_done == s.shards else " (partial)")
        if s.dtype == "published":
            shards = "published"
        lines.append(
            f"  {s.folder.name[:12]:<12} {(s.model or '-')[:36]:<36} {s.count:>11,} {s.dim or '-':>5} "
            f"{s.dtype:<8} {shards:>13} {s.bytes / 2**20:>9.1f}"
        )
        for index in s.indexes:
            size = (s.folder / index).stat().st_size
            lines.append(f"  {'':<12}   index {index} ({size / 2**20:.1f} MB)")
    return lines


def prune_stores(cache_root: Path, model: str | None, store: str | None) -> str:
    """Remove the gallery stores of `model` (as `show` lists it) and/or the one whose name starts with
    `store`; the report line."""
    removed = 0
    for s in list_stores(cache_root):
        if (model is None or s.model == model) and (store is None or s.folder.name.startswith(store)):
            shutil.rmtree(s.folder)
            removed += 1
    return f"{FOLDER}/: {removed} gallery store(s) removed"
