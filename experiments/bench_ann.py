"""Approximate top-K against exact search over a gallery store (figures in experiments/scaling.md).

    flock /tmp/heavy.lock python experiments/bench_ann.py --gallery 200000 --dim 512 --queries 1000

A synthetic gallery of random-but-clustered unit vectors (`--clusters` random centres of norm ~1,
Gaussian noise of norm `--spread` around each, then normalised; queries drawn the same way) is written
through the real gallery store (`visa.cache.gallery`, float16 shards), then searched through the real
engines over the memory-mapped store: exact (torch blocks and FAISS flat,
`visa.method.retrieval.topk_search`) and the approximate indexes of `visa.method.ann` (HNSW, IVF-Flat,
IVF-PQ). Reported per engine: build seconds and index bytes, search milliseconds per query (all the
queries at once, so batched), recall@K of the exact top-K (FAISS flat on the same store) among the
approximate top-K, and the process's peak resident memory so far (VmHWM).
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from visa.cache.gallery import GalleryStore
from visa.method.ann import build_index
from visa.method.retrieval import topk_search
from visa.method.settings import RetrievalSettings


def clustered(rng: np.random.Generator, centres: np.ndarray, n: int, spread: float) -> np.ndarray:
    x = centres[rng.integers(0, len(centres), n)] + spread * rng.standard_normal((n, centres.shape[1]))
    x = x.astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--gallery", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--clusters", type=int, default=2000)
    parser.add_argument("--spread", type=float, default=0.5, help="noise norm around a centre (of norm ~1)")
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--nlist", type=int, default=1024)
    parser.add_argument("--train-size", type=int, default=65536)
    parser.add_argument("--indexes", default="hnsw,ivf_flat,ivf_pq")
    parser.add_argument("--folder", default=None, help="where the store goes (default: a temporary folder)")
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((args.clusters, args.dim)).astype(np.float32) / np.sqrt(args.dim)
    spread = args.spread / np.sqrt(args.dim)  # per-dimension sigma
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.folder or tmp)
        ids = [str(i) for i in range(args.gallery)]
        store = GalleryStore.open(root, {"model": "synthetic", "dim": args.dim}, ids, ids, "float16", 32768)
        t0 = time.perf_counter()
        for n in store.missing():
            span = store.shard_rows(n)
            store.write_shard(n, clustered(rng, centres, len(span), spread))
        write_s = time.perf_counter() - t0
        gallery = store.rows()
        size = sum(p.stat().st_size for p in store.folder.rglob("*.npy"))
        queries = torch.from_numpy(clustered(rng, centres, args.queries, spread))
        print(
            f"store: {args.gallery} x {args.dim} float16 written in {write_s:.1f} s "
            f"({args.gallery / write_s:,.0f} items/s), {size / 2**20:.0f} MB"
        )

        t0 = time.perf_counter()
        exact_s, exact = topk_search(queries, gallery, args.k, index="faiss", gallery_chunk_size=16384)
        faiss_s = time.perf_counter() - t0
        rows.append(
            {
                "engine": "exact, FAISS flat (blocks of 65,536)",
                "build_s": 0,
                "bytes": 0,
                "ms_per_query": 1000 * faiss_s / args.queries,
                "recall": 100.0,
                "peak_mb": peak_mb(),
            }
        )
        t0 = time.perf_counter()
        _, torch_i = topk_search(queries, gallery, args.k, chunk_size=1024, gallery_chunk_size=16384)
        torch_s = time.perf_counter() - t0
        same = float((torch_i == exact).float().mean()) * 100
        rows.append(
            {
                "engine": "exact, torch blocks",
                "build_s": 0,
                "bytes": 0,
                "ms_per_query": 1000 * torch_s / args.queries,
                "recall": same,
                "peak_mb": peak_mb(),
            }
        )
        exact_sets = [set(r.tolist()) for r in exact]
        for name in args.indexes.split(","):
            settings = RetrievalSettings(index=name, nlist=args.nlist, train_size=args.train_size)
            ann, metrics = build_index(name, settings, gallery, folder=store.folder, progress=False)
            t0 = time.perf_counter()
            _, approx = ann.search(queries, args.k)
            search_s = time.perf_counter() - t0
            recall = np.mean(
                [len(exact_sets[q] & set(approx[q].tolist())) / args.k for q in range(args.queries)]
            )
            rows.append(
                {
                    "engine": f"{name} ({metrics['retrieval/index_factory']}, "
                    + (f"efSearch {settings.ef_search})" if name == "hnsw" else f"nprobe {settings.nprobe})"),
                    "build_s": metrics.get("retrieval/index_build_s", 0),
                    "bytes": metrics["retrieval/index_bytes"],
                    "ms_per_query": 1000 * search_s / args.queries,
                    "recall": 100 * recall,
                    "peak_mb": peak_mb(),
                }
            )
    print(f"\n| engine | build s | index MB | ms / query | recall@{args.k} (%) | peak RSS MB |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['engine']} | {r['build_s']:.1f} | {r['bytes'] / 2**20:.0f} | {r['ms_per_query']:.2f} | "
            f"{r['recall']:.1f} | {r['peak_mb']:,.0f} |"
        )
    print(json.dumps({"args": vars(args), "store_write_s": write_s, "rows": rows}))


if __name__ == "__main__":
    main()
