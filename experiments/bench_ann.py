"""Approximate top-K against exact search over a gallery store (figures in experiments/scaling.md).

    flock /tmp/heavy.lock python experiments/bench_ann.py --gallery 200000 --dim 512 --queries 1000

A synthetic gallery of random-but-clustered unit vectors (`--clusters` random centres of norm ~1,
Gaussian noise of norm `--spread` around each, then normalised; queries drawn the same way) is written
through the real gallery store (`visa.cache.gallery`, float16 shards), then searched through the real
engines over the memory-mapped store: exact (FAISS flat and torch blocks, `visa.method.retrieval.topk_search`)
and the approximate indexes of `visa.method.ann` (HNSW, IVF-Flat, IVF-PQ). Reported per leg: build seconds
and index bytes, search milliseconds per query (all the queries at once, so batched), recall@K of the exact
top-K (FAISS flat over the same store) among the leg's top-K, and the leg's peak memory.

Large galleries run in pieces, one invocation after another, with `--folder DIR` (a cache folder kept
between invocations; the store goes to DIR/gallery/<key>/, keyed by the data's size and parameters):

    python experiments/bench_ann.py --gallery 5000000 --folder DIR --estimate-only
    python experiments/bench_ann.py --gallery 5000000 --folder DIR --indexes none    # store + exact legs
    python experiments/bench_ann.py --gallery 5000000 --folder DIR --exact none --indexes ivf_pq
    python experiments/bench_ann.py --gallery 5000000 --folder DIR --exact none --indexes ivf_flat
    python experiments/bench_ann.py --gallery 5000000 --folder DIR --exact none --indexes hnsw

The store is resumable (a killed invocation loses at most the shard it was writing); the queries and the
exact top-K ids are written beside it once (`queries_q{Q}.npy`, `exact_top{K}_q{Q}.npy`; each shard and the
queries draw from their own seeded generator, so the data does not depend on which invocation wrote what);
every leg's figures go to `bench_ann_top{K}_q{Q}.json` there and the table shows every leg measured so far,
saying which ran in this process. Indexes are written beside the store and read back by a later invocation
(the table then shows the build recorded when it was built, and "read in" seconds; `--rebuild` builds them
again). Each leg runs with only its own index in memory (the previous one is freed first) and
its own peak memory: VmHWM reset at its start (/proc/self/clear_refs), which counts the store's pages the
leg read through the memory map (file cache the kernel may drop, up to the store's size), and the peak of
the anonymous memory (sampled every 0.2 s), which is what the leg itself holds. Before each leg a line says
what it should take (`--estimate-only`: those lines only), scaled from 200,000-item figures (REF below).
The script fixes glibc's mmap threshold at 1 MiB (`--default-malloc` leaves it dynamic): the IVF lists
grow one buffer each, and the dynamic threshold leaves the freed buffers fragmenting the heap (1.45x).
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import math
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from visa.cache.gallery import GalleryStore
from visa.method.ann import build_index, factory_string, index_path
from visa.method.retrieval import topk_search
from visa.method.settings import RetrievalSettings

START = time.perf_counter()
MB = 2**20
EXACT_BLOCK = 16384  # gallery_chunk_size of the exact legs (FAISS searches blocks of 4 x this)


def say(message: str) -> None:
    print(f"[{time.perf_counter() - START:8.1f} s] {message}", flush=True)


def clustered(rng: np.random.Generator, centres: np.ndarray, n: int, spread: float) -> np.ndarray:
    x = centres[rng.integers(0, len(centres), n)] + spread * rng.standard_normal((n, centres.shape[1]))
    x = x.astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


# -- memory ---------------------------------------------------------------------------------------------
def status_mb(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def reset_peak() -> bool:
    """Reset VmHWM to the current resident size (Linux >= 4.0); False where that is not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def release_freed_memory() -> None:
    """Give the allocator's freed pages back to the system, so the next leg starts from what is held."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class Peak:
    """A leg's peak memory: VmHWM since the leg started, and the peak anonymous memory (RssAnon, sampled)."""

    def __enter__(self) -> Peak:
        release_freed_memory()
        self.reset = reset_peak()
        self.anon = status_mb("RssAnon")
        self.running = True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self) -> None:
        while self.running:  # FAISS, numpy and torch release the GIL while they work
            self.anon = max(self.anon, status_mb("RssAnon"))
            time.sleep(0.2)

    def __exit__(self, *exc: object) -> None:
        self.running = False
        self.thread.join()
        self.anon = max(self.anon, status_mb("RssAnon"))
        self.hwm = status_mb("VmHWM")

    def fields(self) -> dict[str, Any]:
        return {"hwm_mb": round(self.hwm), "anon_mb": round(self.anon), "hwm_is_per_leg": self.reset}


def limit_mmap_threshold() -> bool:
    """Allocations of 1 MiB and more get their own mapping, given back when freed: glibc's default raises
    its threshold to 32 MiB as buffers are freed, and the IVF lists' buffers (a few MB each, doubling as
    they grow) then fragment the heap (1.4-1.5x the lists' size held at 640,000 x 512)."""
    try:
        return ctypes.CDLL("libc.so.6").mallopt(-3, 1 << 20) == 1  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        return False


# -- estimates ------------------------------------------------------------------------------------------
# 200,000 x 512 on this 2-core machine at load ~2 (2026-12-07, faiss-cpu 1.15.1): this script's store and
# exact legs, and FAISS alone for the indexes' training and adding timed apart (1,024 lists, 65,536
# training samples, efSearch 256, nprobe 16). The 200,000-item table in experiments/scaling.md was taken
# at load 8-15 and is 2-4x slower.
REF_N, REF_DIM = 200_000, 512
REF = {
    "store_items_per_s": 56_000,
    "faiss_ms": 1.24,  # per query over the 200,000 items
    "torch_ms": 1.53,
    "hnsw_build_s": 17.7,  # HNSW32; 5.1 s at 50,000, 9.6 s at 100,000: grows as n log n, or faster
    "hnsw_ms": 0.35,  # grows as log n
    "ivf_flat_train_s": 2.0,
    "ivf_flat_add_s": 1.0,
    "ivf_flat_ms": 0.32,  # scans nprobe / nlist of the items
    "ivf_pq_train_s": 58.4,  # the 64 sub-quantisers' k-means and the polysemous training
    "ivf_pq_add_s": 2.1,
    "ivf_pq_ms": 0.05,
}
BASE_MB = 600  # python, torch, FAISS, the queries and results


def estimate(
    leg: str, args: argparse.Namespace, settings: RetrievalSettings | None = None
) -> dict[str, float]:
    """Rough seconds and anonymous MB of a leg at this size, scaled from REF (`index_mb`: the index)."""
    n, dim, q = args.gallery, args.dim, args.queries
    scale = n / REF_N * dim / REF_DIM
    width = (dim + 7) // 8 * 8
    if leg == "store":
        return {"s": n / REF["store_items_per_s"] * dim / REF_DIM, "mb": BASE_MB + 5 * 32768 * dim * 8 / MB}
    if leg in ("exact_faiss", "exact_torch"):
        return {"s": q * REF[leg[6:] + "_ms"] / 1000 * scale, "mb": BASE_MB + 4 * 4 * EXACT_BLOCK * dim / MB}
    assert settings is not None
    lists = int(factory_string(leg, width, n, args.nlist).split(",")[0][3:]) if leg != "hnsw" else 0
    if leg == "hnsw":
        m = settings.hnsw_m
        links = 4 * (2 * m + m / (m - 1)) + 12  # level-0 links, the levels above, levels and offsets
        index = n * (4 * width + links)
        return {
            "s": REF["hnsw_build_s"] * scale * math.log(n) / math.log(REF_N),
            "search_ms": REF["hnsw_ms"] * math.log(n) / math.log(REF_N),
            "index_mb": index / MB,
            # the links' buffer doubles as it grows; a block of the store in float32, and its padded copy
            "mb": BASE_MB + (index + n * links + 2 * 65536 * width * 4) / MB,
        }
    train = min(n, args.train_size) / 65536 * lists / 1024 * dim / REF_DIM
    searched = settings.nprobe / lists  # the share of the items each query scans
    code = 4 * width if leg == "ivf_flat" else (settings.pq_m or width // 8)
    index = n * (code + 8)  # codes and ids
    return {
        "s": REF[f"{leg}_train_s"] * train + REF[f"{leg}_add_s"] * n / REF_N * lists / 1024 * dim / REF_DIM,
        "search_ms": REF[f"{leg}_ms"] * n / REF_N * dim / REF_DIM * searched / (16 / 1024),
        "index_mb": index / MB,
        "mb": BASE_MB + index / MB + 4 * 65536 * width * 4 / MB,  # + a block and its assignments
    }


def show_estimate(leg: str, args: argparse.Namespace, settings: RetrievalSettings | None = None) -> None:
    e = estimate(leg, args, settings)
    store_mb = args.gallery * args.dim * 2 / MB
    extra = ""
    if "index_mb" in e:
        extra = f", index {e['index_mb']:,.0f} MB, search ~{e['search_ms']:.2f} ms / query"
    available = meminfo_mb("MemAvailable")
    warn = f"  ** more than the {available:,.0f} MB available now **" if e["mb"] > available else ""
    say(
        f"{leg}: estimate {duration(e['s'])} (on a quiet 2-core machine), ~{e['mb']:,.0f} MB "
        f"anonymous memory + up to {store_mb:,.0f} MB of the store's mapped pages{extra}{warn}"
    )


def duration(seconds: float) -> str:
    return f"~{seconds:.0f} s" if seconds < 120 else f"~{seconds / 60:.0f} min"


def meminfo_mb(key: str) -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


# -- the legs -------------------------------------------------------------------------------------------
def open_store(args: argparse.Namespace, root: Path) -> GalleryStore:
    ids = [str(i) for i in range(args.gallery)]
    identity = {
        "model": "synthetic",
        "dim": args.dim,
        "clusters": args.clusters,
        "spread": args.spread,
        "seed": args.seed,
    }
    return GalleryStore.open(root, identity, ids, ids, "float16", 32768)


def write_store(store: GalleryStore, args: argparse.Namespace, centres: np.ndarray, spread: float) -> dict:
    """The missing shards, each drawn from its own generator (the same vectors whichever invocation writes
    them); a progress line every 10% or 60 s."""
    missing = store.missing()
    t0 = last = time.perf_counter()
    written = 0
    for done, n in enumerate(missing, 1):
        span = store.shard_rows(n)
        store.write_shard(n, clustered(np.random.default_rng([args.seed, 1, n]), centres, len(span), spread))
        written += len(span)
        now = time.perf_counter()
        if done == len(missing) or done % max(1, len(missing) // 10) == 0 or now - last > 60:
            last = now
            say(f"store: {done}/{len(missing)} missing shards written ({written / (now - t0):,.0f} items/s)")
    return {"items_written": written, "write_s": time.perf_counter() - t0}


def queries_of(
    store: GalleryStore, args: argparse.Namespace, centres: np.ndarray, spread: float
) -> torch.Tensor:
    path = store.folder / f"queries_q{args.queries}.npy"
    if not path.is_file():
        np.save(path, clustered(np.random.default_rng([args.seed, 2]), centres, args.queries, spread))
    return torch.from_numpy(np.load(path))


def recall(found: torch.Tensor, exact: np.ndarray) -> float:
    """The share of each query's exact top-K among its found top-K, in percent, averaged over the queries."""
    found_np = found.numpy()
    return 100 * float(np.mean([np.isin(e, f).mean() for e, f in zip(exact, found_np)]))


def exact_leg(
    engine: str, store: GalleryStore, queries: torch.Tensor, args: argparse.Namespace
) -> tuple[dict[str, Any], torch.Tensor]:
    gallery = store.rows()
    with Peak() as peak:
        t0 = time.perf_counter()
        if engine == "faiss":
            _, ids = topk_search(queries, gallery, args.k, index="faiss", gallery_chunk_size=EXACT_BLOCK)
        else:
            _, ids = topk_search(queries, gallery, args.k, chunk_size=1024, gallery_chunk_size=EXACT_BLOCK)
        seconds = time.perf_counter() - t0
    del gallery  # the memory map: the next leg counts the store's pages it reads itself
    label = (
        f"exact, FAISS flat over the store (blocks of {4 * EXACT_BLOCK:,})"
        if engine == "faiss"
        else f"exact, torch blocks (1,024 x {EXACT_BLOCK:,})"
    )
    row = {"engine": label, "build_s": None, "bytes": None, "ms_per_query": 1000 * seconds / args.queries}
    return row | peak.fields(), ids


def index_leg(
    name: str, store: GalleryStore, queries: torch.Tensor, exact: np.ndarray, args: argparse.Namespace
) -> dict[str, Any]:
    settings = RetrievalSettings(index=name, nlist=args.nlist, train_size=args.train_size)
    path = index_path(store.folder, name, settings, args.gallery, args.dim)
    if args.rebuild and path.is_file():
        say(f"{name}: --rebuild: removing {path.name}")
        path.unlink()
    gallery = store.rows()
    with Peak() as peak:
        t0 = time.perf_counter()
        say(f"{name}: {'reading' if path.is_file() else 'training and adding to'} the index")
        ann, metrics = build_index(name, settings, gallery, folder=store.folder, progress=True)
        call_s = time.perf_counter() - t0
        built = "retrieval/index_build_s" in metrics
        say(
            f"{name}: {'built' if built else 'read'} in {call_s:.1f} s"
            + (f" (build {metrics['retrieval/index_build_s']:.1f} s, then written)" if built else "")
            + f", {metrics['retrieval/index_bytes'] / MB:,.0f} MB; searching"
        )
        t0 = time.perf_counter()
        _, approx = ann.search(queries, args.k)
        search_s = time.perf_counter() - t0
    del gallery, ann  # only one index in memory at a time
    search = f"efSearch {settings.ef_search}" if name == "hnsw" else f"nprobe {settings.nprobe}"
    return {
        "engine": f"`{name}` ({metrics['retrieval/index_factory']}, {search})",
        "build_s": metrics.get("retrieval/index_build_s"),
        "load_s": metrics.get("retrieval/index_load_s"),
        "bytes": metrics["retrieval/index_bytes"],
        "ms_per_query": 1000 * search_s / args.queries,
        "recall": recall(approx, exact),
    } | peak.fields()


# -- results --------------------------------------------------------------------------------------------
def record(results_path: Path, key: str, row: dict[str, Any]) -> None:
    """Write one leg's figures into the folder's results (a read index keeps the build figures recorded)."""
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}
    before = results.get(key, {})
    if row.get("build_s") is None and before.get("build_s") is not None:
        row = row | {"build_s": before["build_s"], "build_recorded": before.get("when")}
    results[key] = row | {"when": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
    results_path.write_text(json.dumps(results, indent=1))


def table(results: dict[str, dict], args: argparse.Namespace, ran: set[str]) -> list[str]:
    lines = []
    store = results.get("store")
    if store:
        rate = store["items_written"] / max(store["write_s"], 1e-9)
        lines.append(
            f"store: {args.gallery:,} x {args.dim} float16, {store['store_mb']:,.0f} MB; "
            f"{store['items_written']:,} items written in {store['write_s']:.1f} s ({rate:,.0f} items/s) "
            f"[{'this process' if 'store' in ran else 'earlier: ' + store['when']}]"
        )
    lines += [
        f"\n| engine | build s | index MB | ms / query | recall@{args.k} (%) | peak RSS MB (VmHWM) "
        "| peak anon MB | run |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for key, r in results.items():
        if key == "store":
            continue
        build = "-" if r.get("build_s") is None else f"{r['build_s']:.1f}"
        if r.get("load_s") is not None:
            build += f" (read in {r['load_s']:.1f})"
        size = "-" if r.get("bytes") is None else f"{r['bytes'] / MB:,.0f}"
        hwm = f"{r['hwm_mb']:,}" + ("" if r.get("hwm_is_per_leg") else " (process)")
        when = "this process" if key in ran else f"earlier: {r['when']}"
        lines.append(
            f"| {r['engine']} | {build} | {size} | {r['ms_per_query']:.2f} | {r['recall']:.1f} | {hwm} "
            f"| {r['anon_mb']:,} | {when} |"
        )
    return lines


def legs(text: str) -> list[str]:
    return [] if text in ("", "none") else [x.strip() for x in text.split(",") if x.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--gallery", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--clusters", type=int, default=2000)
    parser.add_argument("--spread", type=float, default=0.5, help="noise norm around a centre (of norm ~1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--nlist", type=int, default=1024)
    parser.add_argument("--train-size", type=int, default=65536)
    parser.add_argument("--indexes", default="hnsw,ivf_flat,ivf_pq", help="approximate legs, or none")
    parser.add_argument(
        "--exact",
        default="faiss,torch",
        help="exact legs to time, or none (the exact top-K is computed once, with FAISS, when missing)",
    )
    parser.add_argument(
        "--folder", default=None, help="cache folder kept between invocations (default: temp)"
    )
    parser.add_argument("--rebuild", action="store_true", help="build the indexes even when written before")
    parser.add_argument("--estimate-only", action="store_true", help="print the legs' estimates and stop")
    parser.add_argument(
        "--default-malloc",
        action="store_true",
        help="keep glibc's dynamic mmap threshold (see the docstring)",
    )
    args = parser.parse_args()
    indexes, exact_legs = legs(args.indexes), legs(args.exact)
    for name in exact_legs:
        if name not in ("faiss", "torch"):
            parser.error(f"--exact {args.exact}: {name!r} is not faiss or torch")
    threshold = False if args.default_malloc else limit_mmap_threshold()
    say(
        f"{args.gallery:,} x {args.dim}, {args.queries:,} queries, K {args.k}; "
        f"exact legs {','.join(exact_legs) or 'none'}, indexes {','.join(indexes) or 'none'}; "
        f"{torch.get_num_threads()} threads; malloc mmap threshold "
        f"{'1 MiB' if threshold else 'glibc default'}; {meminfo_mb('MemAvailable'):,.0f} MB available"
    )
    settings = {
        name: RetrievalSettings(index=name, nlist=args.nlist, train_size=args.train_size) for name in indexes
    }
    if args.estimate_only:
        show_estimate("store", args)
        for name in exact_legs:
            show_estimate(f"exact_{name}", args)
        for name in indexes:
            show_estimate(name, args, settings[name])
        return

    rng = np.random.default_rng(args.seed)
    centres = rng.standard_normal((args.clusters, args.dim)).astype(np.float32) / np.sqrt(args.dim)
    spread = args.spread / np.sqrt(args.dim)  # per-dimension sigma
    ran: set[str] = set()
    with tempfile.TemporaryDirectory() as tmp:
        store = open_store(args, Path(args.folder or tmp))
        results_path = store.folder / f"bench_ann_top{args.k}_q{args.queries}.json"
        say(
            f"store {store.folder}: {store.num_shards - len(store.missing())}/{store.num_shards} shards there"
        )
        if store.missing():
            show_estimate("store", args)
            with Peak() as peak:
                written = write_store(store, args, centres, spread)
            size = sum(p.stat().st_size for p in (store.folder / "shards").glob("*.npy"))
            record(results_path, "store", written | {"store_mb": size / MB} | peak.fields())
            ran.add("store")
        queries = queries_of(store, args, centres, spread)

        exact_path = store.folder / f"exact_top{args.k}_q{args.queries}.npy"
        needed = bool(indexes) or "torch" in exact_legs
        if needed and not exact_path.is_file() and "faiss" not in exact_legs:
            say(f"{exact_path.name} is missing: the exact FAISS leg runs first to write it")
            exact_legs.insert(0, "faiss")
        exact = np.load(exact_path) if exact_path.is_file() else None
        for engine in sorted(exact_legs, key=["faiss", "torch"].index):
            show_estimate(f"exact_{engine}", args)
            row, ids = exact_leg(engine, store, queries, args)
            if engine == "faiss" and exact is None:
                exact = ids.numpy()
                np.save(exact_path, exact)
            row["recall"] = recall(ids, exact)
            record(results_path, f"exact_{engine}", row)
            ran.add(f"exact_{engine}")
            say(f"exact {engine}: {row['ms_per_query']:.2f} ms / query, peak anonymous {row['anon_mb']:,} MB")

        for name in indexes:
            show_estimate(name, args, settings[name])
            row = index_leg(name, store, queries, exact, args)
            record(results_path, row["engine"], row)  # keyed by index and settings
            ran.add(row["engine"])
            say(f"{name}: recall@{args.k} {row['recall']:.1f}%, peak anonymous {row['anon_mb']:,} MB")
            release_freed_memory()

        results = json.loads(results_path.read_text()) if results_path.is_file() else {}
        print("\n".join(table(results, args, ran)))
        print(
            json.dumps(
                {"args": vars(args), "folder": str(store.folder), "ran": sorted(ran), "results": results}
            )
        )


if __name__ == "__main__":
    main()
