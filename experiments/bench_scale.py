"""Scaling benchmarks (figures in experiments/scaling.md).

    python experiments/bench_scale.py topk --queries 10000 --gallery 1000000   # top-K, torch vs FAISS

topk: exact top-20 search of random unit vectors (dim 768) with `visa.retrieval.topk_search`, once per
engine, each in a fresh process: wall time of the search and its peak resident-set growth (VmHWM, reset
just before the search, so the embeddings themselves are not counted), and whether the engines return
the same candidates.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

TOPK_PROBE = """
import json, sys, time
import numpy as np, torch
from visa.retrieval import topk_search

def status(field):  # kB -> bytes
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) * 1024

index, out, k = sys.argv[1], sys.argv[5], 20
n_q, n_g, dim = (int(a) for a in sys.argv[2:5])

def unit_rows(n, seed):  # filled block by block: no second full-size temporary
    gen = torch.Generator().manual_seed(seed)
    x = torch.empty(n, dim)
    for s in range(0, n, 65536):
        block = torch.randn(min(65536, n - s), dim, generator=gen)
        x[s : s + len(block)] = torch.nn.functional.normalize(block, dim=1)
    return x

q, g = unit_rows(n_q, 0), unit_rows(n_g, 1)
topk_search(q[:8], g[:64], 2, index=index)  # load the engine, warm kernels and allocator
before = status("VmRSS:")
open("/proc/self/clear_refs", "w").write("5")  # reset the peak (VmHWM) to the current size
t0 = time.perf_counter()
scores, idx = topk_search(q, g, k, index=index)
seconds = time.perf_counter() - t0
np.save(out, idx.numpy())
print(json.dumps({"index": index, "seconds": seconds, "peak_mb": (status("VmHWM:") - before) / 2**20,
                  "embeddings_mb": (q.numel() + g.numel()) * 4 / 2**20, "threads": torch.get_num_threads()}))
"""


def topk(args: argparse.Namespace) -> None:
    import numpy as np

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for index in args.index:
            out = f"{tmp}/{index}.npy"
            cmd = [
                sys.executable,
                "-c",
                TOPK_PROBE,
                index,
                str(args.queries),
                str(args.gallery),
                str(args.dim),
            ]
            proc = subprocess.run(cmd + [out], capture_output=True, text=True, cwd=REPO)
            if proc.returncode:
                sys.exit(f"error: {index}: {proc.stderr.strip().splitlines()[-1]}")
            results[index] = json.loads(proc.stdout)
            results[index]["indices"] = np.load(out)
    first = results[args.index[0]]
    print(
        f"top-20 search, {args.queries:,} queries x {args.gallery:,} items, dim {args.dim}, "
        f"{first['threads']} threads; embeddings {first['embeddings_mb']:.0f} MB (not counted below)"
    )
    for index, r in results.items():
        same = (r["indices"] == first["indices"]).mean()
        print(
            f"  {index:<6} {r['seconds']:8.1f} s   peak +{r['peak_mb']:6.0f} MB   "
            f"same candidates as {args.index[0]}: {100 * same:.2f}%"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="bench", required=True)
    p = sub.add_parser("topk", help="top-K search: torch blocks vs FAISS exact")
    p.add_argument("--queries", type=int, default=10_000)
    p.add_argument("--gallery", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=768)
    p.add_argument("--index", nargs="+", default=["torch", "faiss"])
    p.set_defaults(run=topk)
    args = parser.parse_args()
    os.environ.setdefault("PYTHONPATH", str(REPO))
    args.run(args)


if __name__ == "__main__":
    main()
