"""What a normaliser of the base similarity costs on a COCO-sized search (experiments/normalizers.md).

    python experiments/bench_normalizers.py                       # 25,000 queries x 5,000 items, bank 25,000
    python experiments/bench_normalizers.py --bank 100000 --normalizers none nnn

Random unit vectors (dim 512) stand for the embeddings: 25,000 queries (COCO 5k's captions), 5,000 gallery
items, a reference bank of --bank queries. Each normaliser runs in a fresh process: its correction from the
bank and the gallery (`correction`, as `visa.method.retrieve.normalize` calls it), then the top-20 search
with the correction applied block by block (`search`, as `retrieve` runs it: QB-Norm's extra top-1 pass
included), timed apart, and the peak resident-set growth over both (VmHWM reset just before, so the
embeddings themselves are not counted). `none` is the plain search; a normaliser's overhead is its total
minus none's. The bank's encoding by the backbone is not counted (a cached model stage, like the queries').
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

PROBE = """
import json, sys, time
import torch
from visa.method.normalizers import DN, NNN, Blocks, NoNormalizer, QBNorm
from visa.method.retrieval import ranked_candidates

def status(field):  # kB -> bytes
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) * 1024

name, n_q, n_g, n_b, dim = sys.argv[1], *(int(a) for a in sys.argv[2:6])
def unit_rows(n, seed):
    gen = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(n, dim, generator=gen), dim=1)

queries, gallery, bank = unit_rows(n_q, 0), unit_rows(n_g, 1), unit_rows(n_b, 2)
normalizer = {"none": NoNormalizer(), "nnn": NNN(bank="bench"), "qb_norm": QBNorm(bank="bench"),
              "dn": DN(bank="bench")}[name]
ranked_candidates(queries[:8], gallery[:64], 2)  # warm kernels and the allocator
blocks = Blocks()  # the retrieval's default blocks: 1024 x 16384, cpu
before = status("VmRSS:")
open("/proc/self/clear_refs", "w").write("5")  # reset the peak (VmHWM) to the current size
t0 = time.perf_counter()
correction = normalizer.correction(bank, gallery, blocks)
t1 = time.perf_counter()
shifted = correction.shift_queries(queries)
rows = None
if correction.gate is not None:
    rows = correction.gate[ranked_candidates(shifted, gallery, 1)[1][:, 0]]
scores, idx = ranked_candidates(shifted, gallery, 20, bias=correction.bias, bias_rows=rows)
offsets = correction.offsets(shifted)
if offsets is not None:
    scores = scores + offsets[:, None]
t2 = time.perf_counter()
print(json.dumps({"normalizer": name, "correction_s": t1 - t0, "search_s": t2 - t1,
                  "peak_mb": (status("VmHWM:") - before) / 2**20, "threads": torch.get_num_threads(),
                  "normalised_queries": None if rows is None else int(rows.sum())}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=25_000)
    parser.add_argument("--gallery", type=int, default=5_000)
    parser.add_argument("--bank", type=int, default=25_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--normalizers", nargs="+", default=["none", "nnn", "qb_norm", "dn"])
    args = parser.parse_args()
    load = os.getloadavg()[0]
    results = []
    for name in args.normalizers:
        sizes = [str(v) for v in (args.queries, args.gallery, args.bank, args.dim)]
        proc = subprocess.run(
            [sys.executable, "-c", PROBE, name, *sizes], capture_output=True, text=True, cwd=REPO
        )
        if proc.returncode:
            sys.exit(f"error: {name}: {proc.stderr.strip().splitlines()[-1]}")
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    base = next((r for r in results if r["normalizer"] == "none"), None)
    print(
        f"{args.queries:,} queries x {args.gallery:,} items, bank {args.bank:,}, dim {args.dim}, top-20, "
        f"{results[0]['threads']} threads, load average before {load:.2f}, after {os.getloadavg()[0]:.2f}"
    )
    print("| normalizer | correction s | search s | total s | overhead vs none s | peak MB |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in results:
        total = r["correction_s"] + r["search_s"]
        overhead = "" if base is None else f"{total - base['correction_s'] - base['search_s']:+.2f}"
        print(
            f"| {r['normalizer']} | {r['correction_s']:.2f} | {r['search_s']:.2f} | {total:.2f} | "
            f"{overhead} | {r['peak_mb']:.0f} |"
        )


if __name__ == "__main__":
    main()
