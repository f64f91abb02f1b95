"""Throughput of the sglang client against a local fake server with an artificial per-request latency.

    python experiments/bench_sglang.py                      # figures in experiments/sglang.md
    python experiments/bench_sglang.py --latency 0.1 --requests 2000

What it measures:
- requests per second with max_concurrency 1 and 64 (and the ratio) when every request takes `latency`
  seconds on the server: what many requests in flight buy against a server that batches;
- the client's overhead per request: the CPU time this process spends per request (building the body,
  HTTP, JSON, the event-loop thread, the hand-over to the caller), for text prompts and for prompts with a
  real photo sent as a base64 data URL, and the same through the stage runner with the SQLite store.

The fake server runs in its own process (tests/helpers/fake_openai_server.py) so that its work is not counted.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from visa.cache import SQLiteStore, StageRunner, make_key
from visa.data.media import package_dir
from visa.generation.openai_api import OpenAIChatGenerator
from visa.method.prompts import Prompt, answer_prompt

REPO = Path(__file__).resolve().parents[1]


FAKE_SERVER = REPO / "tests" / "helpers" / "fake_openai_server.py"


def start_server(latency: float) -> tuple[subprocess.Popen, str]:
    server = subprocess.Popen(
        [sys.executable, str(FAKE_SERVER), "--latency", str(latency)],
        stdout=subprocess.PIPE,
        text=True,
    )
    return server, server.stdout.readline().strip()


def measure(url: str, prompts: list[Prompt], concurrency: int, cache_dir: str | None = None) -> dict:
    gen = OpenAIChatGenerator(model="fake-model", url=url, max_concurrency=concurrency)
    wall, cpu = time.perf_counter(), time.process_time()
    if cache_dir is None:
        out = gen.generate(prompts)
    else:
        keys = [make_key("bench", gen.identity(), [p.as_key(), i]) for i, p in enumerate(prompts)]
        store = SQLiteStore(cache_dir)
        out = StageRunner(store, progress=False).run("bench", keys, prompts, gen.stream)
        store.close()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    assert len(out) == len(prompts) and all(out) and gen.malformed == 0
    n = len(prompts)
    return {
        "requests": n,
        "seconds": wall,
        "per_s": n / wall,
        "cpu_ms": 1000 * cpu / n,
        "wall_ms": 1000 * wall / n,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency", type=float, default=0.05, help="server seconds per request")
    parser.add_argument("--requests", type=int, default=2560, help="requests of the max_concurrency=64 run")
    parser.add_argument(
        "--serial-requests", type=int, default=100, help="requests of the max_concurrency=1 run"
    )
    args = parser.parse_args()

    text = [Prompt(f"Answer in one sentence.\nQuestion: is there a dog? ({i})") for i in range(args.requests)]
    photo = str(package_dir("skimage") / "data" / "astronaut.png")  # 512x512 PNG, 791 kB
    # 60 distinct image files, 3 questions each (as the pipeline sends them: one item's questions together).
    photos_dir = tempfile.TemporaryDirectory()
    images = []
    for j in range(60):
        copy = Path(photos_dir.name) / f"photo{j}.png"
        shutil.copyfile(photo, copy)
        images += [answer_prompt(f"Is there a dog? ({q})", ["dog"], (str(copy),), "image") for q in range(3)]

    rows = []
    server, url = start_server(args.latency)
    try:
        measure(url, text[:64], 64)  # warm-up (imports, first connections)
        serial = measure(url, text[: args.serial_requests], 1)
        parallel = measure(url, text, 64)
        rows.append((f"text, latency {args.latency * 1000:g} ms, max_concurrency 1", serial))
        rows.append((f"text, latency {args.latency * 1000:g} ms, max_concurrency 64", parallel))
    finally:
        server.terminate()
        server.wait()

    server, url = start_server(0.0)
    try:
        measure(url, text[:64], 64)  # warm-up
        rows.append(("text, latency 0, max_concurrency 64", measure(url, text, 64)))
        rows.append(("text, latency 0, max_concurrency 1", measure(url, text[: args.requests // 4], 1)))
        rows.append(
            ("photo 512x512 PNG (60 files x 3 questions), latency 0, max_conc. 64", measure(url, images, 64))
        )
        with tempfile.TemporaryDirectory() as cache_dir:
            rows.append(
                (
                    "text via StageRunner + SQLite store, latency 0, max_conc. 64",
                    measure(url, text, 64, cache_dir),
                )
            )
    finally:
        server.terminate()
        server.wait()

    print("| case | requests | req/s | wall ms/req | client CPU ms/req |")
    print("|---|---:|---:|---:|---:|")
    for name, r in rows:
        print(f"| {name} | {r['requests']} | {r['per_s']:.0f} | {r['wall_ms']:.2f} | {r['cpu_ms']:.3f} |")
    speedup = parallel["per_s"] / serial["per_s"]
    print(f"\nspeed-up of max_concurrency 64 over 1 at {args.latency * 1000:g} ms: {speedup:.1f}x")
    print(f"(ideal: 64x; python {sys.version.split()[0]})")
    photos_dir.cleanup()


if __name__ == "__main__":
    main()
