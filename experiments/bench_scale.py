"""Scaling benchmarks (figures in experiments/scaling.md).

    python experiments/bench_scale.py topk --queries 10000 --gallery 1000000   # top-K, torch vs FAISS
    python experiments/bench_scale.py servers     # 4 fake servers vs 1; one of 4 killed mid-run
    python experiments/bench_scale.py shards dataset.limit=3 retrieval.top_k=2   # 2 shards vs 1 process

topk: exact top-20 search of random unit vectors (dim 768) with `visa.method.retrieval.topk_search`, once per
engine, each in a fresh process: wall time of the search and its peak resident-set growth (VmHWM, reset
just before the search, so the embeddings themselves are not counted), and whether the engines return
the same candidates.

servers: fake OpenAI-compatible servers (tests/fake_openai_server.py, each its own process, 50 ms per
request, 16 requests worked on at once, like a GPU server's batch) behind the real client
(`OpenAIChatGenerator` with `url` a list, 64 requests in flight), through the stage runner and a SQLite
cache as in a run: requests per second with 4 servers vs 1; then 4 servers with one killed (SIGKILL) a
third of the way through: the stage completes, every prompt is answered exactly once (replies counted
per server by the client), and a second pass computes nothing.

shards: the demo (with the given overrides) as one process on a fresh cache, and as 2 shards launched as
one Hydra multirun through submitit's local executor (hydra/launcher=submitit_local) on another fresh
cache, then a final unsharded run on that cache: wall times, model calls computed per stage by each, and
whether the final run's metrics equal the single process's.
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
from visa.method.retrieval import topk_search

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


def _start_servers(n: int, latency: float, capacity: int) -> tuple[list[subprocess.Popen], list[str]]:
    script = REPO / "tests" / "helpers" / "fake_openai_server.py"
    if not script.exists():
        script = REPO / "tests" / "fake_openai_server.py"
    procs, urls = [], []
    for _ in range(n):
        cmd = [sys.executable, str(script), "--latency", str(latency), "--capacity", str(capacity)]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        procs.append(proc)
        urls.append(proc.stdout.readline().strip())
    return procs, urls


def servers(args: argparse.Namespace) -> None:
    import time

    from visa.cache import SQLiteStore, StageRunner
    from visa.generation.openai_api import OpenAIChatGenerator
    from visa.method.prompts import Prompt

    def client(urls: list[str]) -> OpenAIChatGenerator:
        return OpenAIChatGenerator(
            model="fake-model", url=urls, max_concurrency=args.in_flight, server_backoff=2.0, max_retries=5
        )

    def prompts(tag: str) -> list[Prompt]:
        return [Prompt(f"Answer briefly\n{tag} request {i}") for i in range(args.requests)]

    rates = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in (1, 4):
            procs, urls = _start_servers(n, args.latency, args.capacity)
            try:
                gen = client(urls)
                gen.generate(prompts("warm-up")[:50])
                cache = SQLiteStore(f"{tmp}/cache-{n}")
                todo = prompts(f"{n}-servers")
                t0 = time.perf_counter()
                StageRunner(cache, progress=False).run("answer", [p.text for p in todo], todo, gen.stream)
                rates[n] = args.requests / (time.perf_counter() - t0)
                cache.close()
            finally:
                for proc in procs:
                    proc.kill()
            setting = f"{args.requests} requests, {args.in_flight} in flight"
            print(f"{n} server(s): {rates[n]:7.0f} requests/s ({setting})")
        print(f"4 servers / 1 server: {rates[4] / rates[1]:.2f}x (ideal 4x)")

        procs, urls = _start_servers(4, args.latency, args.capacity)
        try:
            gen = client(urls)
            todo = prompts("kill")
            kill_at = args.requests // 3

            def stream_killing_one(inputs):
                for n, item in enumerate(gen.stream(inputs)):
                    if n == kill_at:
                        procs[0].kill()  # SIGKILL: its requests in flight are lost
                    yield item

            cache = SQLiteStore(f"{tmp}/cache-kill")
            first, second = StageRunner(cache, progress=False), StageRunner(cache, progress=False)
            keys = [p.text for p in todo]
            t0 = time.perf_counter()
            out = first.run("answer", keys, todo, stream_killing_one)
            seconds = time.perf_counter() - t0
            replies = {k: v for k, v in gen.counters().items() if k.startswith("requests/")}
            second.run("answer", keys, todo, gen.stream)
            stats, again = first.stats["answer"], second.stats["answer"]
            cache.close()
        finally:
            for proc in procs:
                proc.kill()
        right = sum(o == f"Reply to: kill request {i}" for i, o in enumerate(out))
        print(
            f"4 servers, one killed after {kill_at} replies: {len(out)} results in {seconds:.1f} s, "
            f"{right} correct; replies per server {list(replies.values())} (sum {sum(replies.values())}); "
            f"computed {stats.computed}; retried tries {gen.retried}; second pass computed {again.computed}"
        )


STAGES = ("encode_text", "encode_visual", "describe", "ask", "answer", "score")


def shards(args: argparse.Namespace) -> None:
    import time

    def run(overrides: list[str], cache: str, run_dir: str) -> float:
        env = {**os.environ, "VISA_CACHE": cache, "PYTHONPATH": str(REPO)}
        cmd = [sys.executable, "-m", "visa.run", *overrides, "progress=false"]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd + [run_dir], cwd=REPO, env=env, capture_output=True, text=True)
        if proc.returncode:
            sys.exit(f"error: {' '.join(overrides)}: {proc.stderr.strip()[-500:]}")
        return time.perf_counter() - t0

    def calls(path: Path) -> list[int]:
        metrics = json.loads(path.read_text())
        return [metrics[f"calls/{stage}/computed"] for stage in STAGES]

    with tempfile.TemporaryDirectory() as tmp:
        single = run(args.overrides, f"{tmp}/c1", f"hydra.run.dir={tmp}/single")
        sweep = f"hydra.sweep.dir={tmp}/multirun"
        sharded = run(
            ["-m", "hydra/launcher=submitit_local", *args.overrides, "shard.count=2", "shard.index=range(2)"],
            f"{tmp}/c2",
            sweep,
        )
        final = run(args.overrides, f"{tmp}/c2", f"hydra.run.dir={tmp}/final")
        one = calls(Path(tmp, "single", "metrics.json"))
        parts = [calls(Path(tmp, "multirun", str(i), "metrics.json")) for i in range(2)]
        last = calls(Path(tmp, "final", "metrics.json"))
        a = json.loads(Path(tmp, "single", "metrics.json").read_text())
        b = json.loads(Path(tmp, "final", "metrics.json").read_text())
        same = all(a[k] == b[k] for k in a if k.startswith(("base/", "rerank/")))
    print(f"demo {' '.join(args.overrides)}; model calls computed per stage ({', '.join(STAGES)}):")
    print(f"  1 process:            {single:7.1f} s  {one}  (total {sum(one)})")
    summed = [x + y for x, y in zip(*parts)]
    print(
        f"  2 shards (submitit):  {sharded:7.1f} s  {parts[0]} + {parts[1]} = {summed}  (total {sum(summed)})"
    )
    print(f"  final unsharded run:  {final:7.1f} s  {last}  (total {sum(last)})")
    print(f"  metrics of the final run equal the single process's: {same}")


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
    p = sub.add_parser("servers", help="4 fake servers vs 1; one of 4 killed mid-run")
    p.add_argument("--requests", type=int, default=3000)
    p.add_argument("--latency", type=float, default=0.05, help="seconds per request")
    p.add_argument("--capacity", type=int, default=16, help="requests each server works on at once")
    p.add_argument("--in-flight", type=int, default=64, help="the client's max_concurrency")
    p.set_defaults(run=servers)
    p = sub.add_parser("shards", help="2 shards through submitit_local vs 1 process, on the demo")
    p.add_argument("overrides", nargs="*", help="demo overrides, e.g. dataset.limit=3")
    p.set_defaults(run=shards)
    args = parser.parse_args()
    os.environ.setdefault("PYTHONPATH", str(REPO))
    args.run(args)


if __name__ == "__main__":
    main()
