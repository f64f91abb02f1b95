"""Pipeline benchmark: cold and warm demo run time, and peak memory of a COCO-sized top-K search.

    python experiments/bench_pipeline.py              # all three figures (the cold run takes minutes)
    python experiments/bench_pipeline.py --only memory

The cold run uses a fresh, empty cache; the warm run repeats it on the filled cache (nothing is computed,
no model is loaded). The memory figure is the peak resident-set growth (VmHWM, reset before the search) of
`visa.method.retrieval.topk_search` over
25,000 query x 5,000 item embeddings (dim 1152, SigLIP-SO400M's width), measured in a fresh process.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

MEMORY_PROBE = """
import sys, torch
from visa.method.retrieval import topk_search

def status(field):  # kB -> bytes
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) * 1024

torch.manual_seed(0)
n_q, n_g, dim, k = 25_000, 5_000, 1152, 20
q = torch.nn.functional.normalize(torch.randn(n_q, dim), dim=1)
g = torch.nn.functional.normalize(torch.randn(n_g, dim), dim=1)
topk_search(q[:8], g[:8], 2)  # warm up kernels and allocator
before = status("VmRSS:")
open("/proc/self/clear_refs", "w").write("5")  # reset the peak (VmHWM) to the current size
scores, idx = topk_search(q, g, k, chunk_size=int(sys.argv[1]))
print(status("VmHWM:") - before, scores.shape[0], idx.shape[1])
"""


def memory(chunk_size: int) -> float:
    out = subprocess.run(
        [sys.executable, "-c", MEMORY_PROBE, str(chunk_size)],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    ).stdout.split()
    return int(out[0]) / 2**20


def timed_run(cache: str, run_dir: str, overrides: list[str]) -> float:
    env = {**os.environ, "VISA_CACHE": cache}
    t0 = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "visa.run", *overrides, f"hydra.run.dir={run_dir}", "progress=false"],
        check=True,
        cwd=REPO,
        env=env,
        capture_output=True,
    )
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", choices=["memory", "runs"], default=None)
    parser.add_argument(
        "overrides", nargs="*", help="extra overrides for the demo runs, e.g. dataset.limit=10"
    )
    args = parser.parse_args()
    if args.only in (None, "memory"):
        dense_mb = 25_000 * 5_000 * 4 / 2**20
        for chunk in (1024, 4096):
            print(
                f"top-K search 25,000 x 5,000, chunk_size={chunk}: peak +{memory(chunk):.0f} MB "
                f"(the dense fp32 score matrix alone: {dense_mb:.0f} MB)"
            )
    if args.only in (None, "runs"):
        with tempfile.TemporaryDirectory() as tmp:
            cold = timed_run(f"{tmp}/cache", f"{tmp}/cold", args.overrides)
            warm = timed_run(f"{tmp}/cache", f"{tmp}/warm", args.overrides)
            metrics = json.loads(Path(f"{tmp}/warm/metrics.json").read_text())
            computed = sum(v for k, v in metrics.items() if k.endswith("/computed"))
        print(
            f"demo run {' '.join(args.overrides) or '(defaults)'}: cold {cold:.1f} s, warm {warm:.1f} s "
            f"({100 * warm / cold:.1f}% of cold; warm computed {computed} model calls)"
        )


if __name__ == "__main__":
    main()
