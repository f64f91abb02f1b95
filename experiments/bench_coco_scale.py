"""The framework's own cost at COCO size (figures in experiments/scaling.md, "COCO-sized runs").

    python -m experiments.bench_coco_scale                          # 25,000 queries x 5,000 items, K = 20
    python -m experiments.bench_coco_scale --queries 2500           # a scaled run: the same per-call figures
    python -m experiments.bench_coco_scale --queries 2500 --compare 1250   # memory at two sizes

The whole pipeline runs through `python -m visa.run` on a COCO-format dataset (Karpathy's json, 5,000
generated 32x32 images, 5 captions per captioned image), with a tiny open_clip backbone and a tiny
cross-encoder (tests/helpers/tiny_models.py: real model code, random weights) and the question LLM, the
describer and the answerer behind one local OpenAI-compatible server that answers at once
(tests/helpers/fake_openai_server.py, in its own process). Everything a model does is therefore nearly free,
and what is measured is the framework.

Each run is `visa.run` started in a driver process (as `python -m visa.run ARGS` would be) that times, for
every stage, how long the stage runner waits for its model (inside the stage's compute stream: the tiny
models' forward passes, the server's replies) and how long the whole run takes. The rest is the framework:
cache look-ups and writes, keys, prompts, passages, records, outputs, bookkeeping. Reported:

- cold run (empty cache): wall time, model time, framework time, framework ms per model call;
- fully cached rerun (same cache): wall time (no model is called) against the cold run's framework time;
- resumed run: the run is killed (SIGKILL) once half of the answer stage is in the cache, then started
  again: its wall time and the calls it computed again;
- peak memory (the run process's resident-set high-water mark, VmHWM) and its growth over the resident size
  after start-up; with --compare N, the same at N queries, to see whether memory grows with the answers;
- output sizes: results.jsonl, results.jsonl.gz (results_file=results.jsonl.gz), metrics.json, the cache.

The machine's load average is printed before and after: a figure counts when the load is low.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Runs visa.run in this process with every stage's model time measured: StageRunner.run's `compute` stream
# is wrapped so that the time spent inside it (waiting for the model) is added up per stage.
DRIVER = r"""
import json, resource, runpy, sys, time
t_start = time.perf_counter()
from visa.cache import runner as runner_module

model_seconds, calls = {}, {}
original_run = runner_module.StageRunner.run

def timed_run(self, stage, keys, inputs, compute, model="", **kw):
    def timed_compute(missing):
        iterator = iter(compute(missing))
        while True:
            t0 = time.perf_counter()
            try:
                item = next(iterator)
            except StopIteration:
                model_seconds[stage] = model_seconds.get(stage, 0.0) + time.perf_counter() - t0
                return
            model_seconds[stage] = model_seconds.get(stage, 0.0) + time.perf_counter() - t0
            yield item
    calls[stage] = calls.get(stage, 0) + len(keys)
    return original_run(self, stage, keys, inputs, timed_compute, model, **kw)

runner_module.StageRunner.run = timed_run

def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) * 1024

import visa.run  # noqa: the imports of a run, before the clock of the run starts
rss_start = status("VmRSS:")
out_file = sys.argv[1]
sys.argv = ["visa.run", *sys.argv[2:]]
def cpu():
    usage = resource.getrusage(resource.RUSAGE_SELF)  # every thread of this process (the HTTP client's too)
    return usage.ru_utime + usage.ru_stime

import cProfile, os
profile = cProfile.Profile() if os.environ.get("VISA_BENCH_PROFILE") else None
t0, cpu0 = time.perf_counter(), cpu()
code = 0
try:
    if profile:
        profile.enable()
    runpy.run_module("visa.run", run_name="__main__")
except SystemExit as e:
    code = e.code or 0
finally:
    if profile:
        profile.disable()
        profile.dump_stats(os.environ["VISA_BENCH_PROFILE"])
wall, cpu_seconds = time.perf_counter() - t0, cpu() - cpu0
json.dump({"code": code, "wall": wall, "cpu": cpu_seconds, "startup": t0 - t_start,
           "model_seconds": model_seconds, "calls": calls, "rss_start": rss_start,
           "peak_rss": status("VmHWM:")}, open(out_file, "w"))
"""


# The fake server, with a reply that names the image it was sent (a digest of its data URL), so that each
# candidate gets its own answers and description, and the re-ranker its own passage, as with a real model.
SERVER = r"""
import hashlib, sys
sys.path.insert(0, sys.argv[1])
from helpers.fake_openai_server import FakeOpenAIServer, default_reply

def reply(body):
    text, content = default_reply(body), body["messages"][-1]["content"]
    parts = content if isinstance(content, list) else []
    media = [p["image_url"]["url"] for p in parts if p.get("type") == "image_url"]
    return text + (f" (image {hashlib.sha1(media[0].encode()).hexdigest()[:8]})" if media else "")

server = FakeOpenAIServer(reply=reply)
print(server.url, flush=True)
server._httpd.serve_forever(poll_interval=0.05)
"""


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"{one:.2f} (5 min: {five:.2f})"


def make_data(work: Path, items: int, queries: int, seed: int = 0) -> Path:
    """A COCO-format folder: Karpathy's json (split test) over `items` 32x32 PNGs, the first queries/5
    images with 5 captions each (the rest are distractors without captions). Reused when present."""
    import numpy as np
    from PIL import Image

    sys.path.insert(0, str(REPO / "tests"))
    from helpers.tiny_models import WORDS

    root = work / f"coco-{items}"
    images = root / "images"
    if not (images / f"{items - 1:06d}.png").exists():
        images.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(seed)
        for i in range(items):
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(images / f"{i:06d}.png")
    annotation = root / f"dataset_coco_{queries}.json"
    if not annotation.exists():
        rand = random.Random(seed)
        words = [w for w in WORDS if w.isalpha()]
        entries = []
        for i in range(items):
            n = 5 if i < queries // 5 else 0
            sentences = [{"raw": " ".join(rand.choices(words, k=rand.randint(8, 14)))} for _ in range(n)]
            entries.append(
                {"filepath": "", "filename": f"{i:06d}.png", "split": "test", "sentences": sentences}
            )
        annotation.write_text(json.dumps({"images": entries}))
    return annotation


def make_models(work: Path) -> tuple[Path, Path]:
    sys.path.insert(0, str(REPO / "tests"))
    from helpers import tiny_models

    clip, scorer = work / "tiny-open-clip", work / "tiny-cross-encoder"
    if not (clip / "open_clip_config.json").exists():
        tiny_models.open_clip_dir(clip)
    if not (scorer / "config.json").exists():
        tiny_models.cross_encoder_dir(scorer)
    return clip, scorer


def overrides(annotation: Path, clip: Path, scorer: Path, url: str, top_k: int, questions: int) -> list[str]:
    server = [
        f"{part}{key}={value}"
        for part in ("question_llm", "answer_mllm", "describer")
        for key, value in ((".url", url), (".model", "fake-model"), (".max_concurrency", 64))
    ]
    return [
        "dataset=coco",
        f"dataset.root={annotation.parent}",
        f"dataset.annotation={annotation.name}",
        "dataset.media_dir=images",
        "backbone=clip_vit_b32",
        f"backbone.model=local-dir:{clip}",
        "backbone.pretrained=null",
        "backbone.device=cpu",
        "backbone.batch_size=256",
        "scorer=cross_encoder",
        f"scorer.model={scorer}",
        "scorer.device=cpu",
        "scorer.batch_size=256",
        "question_llm=server",
        "answer_mllm=server",
        "describer=qwen2_vl_7b_sglang",
        "describer.server=null",
        *server,
        f"retrieval.top_k={top_k}",
        f"questions.num={questions}",
        f"questions.max={questions}",
        "progress=false",
    ]


def run_once(args: list[str], cache: Path, run_dir: Path, out: Path, profile: Path | None = None) -> dict:
    env = {**os.environ, "VISA_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    if profile:
        env["VISA_BENCH_PROFILE"] = str(profile)
    cmd = [sys.executable, "-c", DRIVER, str(out), *args, f"hydra.run.dir={run_dir}"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode or not out.exists():
        sys.exit(f"error: the run failed:\n{proc.stderr[-3000:]}")
    result = json.loads(out.read_text())
    if result["code"]:
        sys.exit(f"error: visa.run exited with {result['code']}:\n{proc.stderr[-3000:]}")
    result["metrics"] = json.loads((run_dir / "metrics.json").read_text())
    return result


def cached_rows(cache: Path, stage: str) -> int:
    path = cache / "visa-cache.sqlite"
    if not path.exists():
        return 0
    try:
        with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)) as db:
            return db.execute("SELECT COUNT(*) FROM results WHERE stage=?", (stage,)).fetchone()[0]
    except sqlite3.OperationalError:
        return 0


def killed_midway(args: list[str], cache: Path, run_dir: Path, answers: int) -> int:
    """Start the run and SIGKILL it once half of the answer stage is in the cache; the answers saved."""
    env = {**os.environ, "VISA_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "visa.run", *args, f"hydra.run.dir={run_dir}"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        while proc.poll() is None and cached_rows(cache, "answer") < answers // 2:
            time.sleep(0.5)
        if proc.poll() is not None:
            sys.exit(f"error: the run ended before it was killed:\n{proc.stderr.read().decode()[-3000:]}")
        time.sleep(random.Random(0).uniform(0, 0.5))  # not just after a write: anywhere in the flush interval
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    return cached_rows(cache, "answer")


def store_rate(rows: int, batch: int = 256) -> float:
    """Microseconds per result written by the SQLite store in the stage runner's batches, alone (random
    SHA-256 keys, short JSON values like the answers'): the floor of a cold run's cost per call."""
    import hashlib
    import tempfile

    from visa.cache import SQLiteStore

    with tempfile.TemporaryDirectory() as tmp:
        store = SQLiteStore(tmp)
        items = {hashlib.sha256(str(i).encode()).hexdigest(): f"Reply to: question {i}" for i in range(rows)}
        keys = list(items)
        t0 = time.perf_counter()
        for start in range(0, rows, batch):
            store.put_many("answer", {k: items[k] for k in keys[start : start + batch]}, model="m")
        seconds = time.perf_counter() - t0
        store.close()
    return 1e6 * seconds / rows


def summary(result: dict) -> dict:
    m = result["metrics"]
    model_calls = sum(
        v for k, v in m.items() if k.startswith("calls/") and k.endswith(("/computed", "/cached"))
    )
    computed = sum(v for k, v in m.items() if k.startswith("calls/") and k.endswith("/computed"))
    model = sum(result["model_seconds"].values())
    framework = result["wall"] - model
    # the in-process tiny models' compute, to leave out of the process's CPU time (the servers' replies
    # are another process's CPU)
    local_model = sum(v for k, v in result["model_seconds"].items() if k.startswith(("encode", "score")))
    return {
        "wall_s": round(result["wall"], 2),
        "model_s": round(model, 2),
        "framework_s": round(framework, 2),
        "model_calls": model_calls,
        "computed": computed,
        "framework_ms_per_call": round(1000 * framework / max(1, model_calls), 4),
        "cpu_s": round(result["cpu"], 2),
        "cpu_ms_per_call": round(1000 * (result["cpu"] - local_model) / max(1, model_calls), 4),
        "peak_rss_mb": round(result["peak_rss"] / 2**20),
        "growth_mb": round((result["peak_rss"] - result["rss_start"]) / 2**20),
        "per_stage_framework_ms_per_call": {
            stage: round(1000 * (m[f"time/{stage}"] - result["model_seconds"].get(stage, 0.0)) / calls, 4)
            for stage in ("describe", "ask", "answer", "score")
            if (calls := m[f"calls/{stage}/computed"] + m[f"calls/{stage}/cached"])
        },
        "stage_model_s": {k: round(v, 2) for k, v in result["model_seconds"].items()},
        "stage_s": {k[5:]: v for k, v in m.items() if k.startswith("time/")},
    }


def measure(a: argparse.Namespace, queries: int, url: str, clip: Path, scorer: Path, resume: bool) -> dict:
    work = Path(a.work)
    annotation = make_data(work, a.items, queries)
    args = overrides(annotation, clip, scorer, url, a.top_k, a.questions)
    tag = f"q{queries}"
    for name in (f"cache-{tag}", f"cache-{tag}-resume", f"runs-{tag}"):
        shutil.rmtree(work / name, ignore_errors=True)
    cache, runs = work / f"cache-{tag}", work / f"runs-{tag}"
    out: dict = {"queries": queries, "items": a.items, "top_k": a.top_k, "questions": a.questions}
    print(f"[{tag}] cold run, load {load()}", flush=True)
    cold = run_once(
        [*args, f"results_file={a.results_file}"],
        cache,
        runs / "cold",
        work / f"{tag}-cold.json",
        a.profile if queries == a.queries else None,
    )
    out["cold"] = summary(cold)
    print(f"[{tag}] cached rerun, load {load()}", flush=True)
    warm = run_once([*args, "results_file=results.jsonl.gz"], cache, runs / "warm", work / f"{tag}-warm.json")
    out["cached"] = summary(warm)
    out["cached"]["over_cold_framework"] = round(warm["wall"] / out["cold"]["framework_s"], 3)
    sizes = {
        name: (runs / run / name).stat().st_size
        for run, name in (("cold", a.results_file), ("warm", "results.jsonl.gz"), ("cold", "metrics.json"))
    }
    sizes["cache"] = sum(p.stat().st_size for p in cache.iterdir())
    out["sizes_mb"] = {k: round(v / 2**20, 2) for k, v in sizes.items()}
    if resume:
        answers = cold["metrics"]["calls/answer/computed"]
        print(f"[{tag}] killed run, load {load()}", flush=True)
        saved = killed_midway(args, work / f"cache-{tag}-resume", runs / "killed", answers)
        print(f"[{tag}] resumed run, load {load()}", flush=True)
        resumed = run_once(args, work / f"cache-{tag}-resume", runs / "resumed", work / f"{tag}-resumed.json")
        out["resumed"] = {
            **summary(resumed),
            "answers_saved_at_kill": saved,
            "answers_computed_again": resumed["metrics"]["calls/answer/computed"],
            "answers_total": answers,
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=25000)
    parser.add_argument("--items", type=int, default=5000)
    parser.add_argument("--top-k", type=int, default=20)
    parser.add_argument("--questions", type=int, default=3)
    parser.add_argument("--compare", type=int, default=None, help="also measure at this many queries")
    parser.add_argument("--no-resume", action="store_true", help="skip the killed and resumed runs")
    parser.add_argument("--results-file", default="results.jsonl", help="the cold run's results_file")
    parser.add_argument("--work", default="/tmp/visa-bench-coco", help="data, models, caches, run folders")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    parser.add_argument(
        "--profile", type=Path, default=None, help="cProfile the cold run's main thread into this file"
    )
    parser.add_argument(
        "--store", type=int, default=0, help="only time the SQLite store writing this many results"
    )
    a = parser.parse_args()
    if a.store:
        print(f"load {load()}; SQLite store: {store_rate(a.store):.1f} us per result ({a.store:,} results)")
        return
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    clip, scorer = make_models(work)
    server = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(REPO / "tests")],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,  # a killed client's reset connections, reported by http.server
        text=True,
    )
    try:
        url = server.stdout.readline().strip()
        print(f"load before: {load()}; {os.cpu_count()} CPUs; server {url}", flush=True)
        figures = [measure(a, a.queries, url, clip, scorer, resume=not a.no_resume)]
        if a.compare:
            figures.append(measure(a, a.compare, url, clip, scorer, resume=False))
        print(f"load after: {load()}")
    finally:
        server.terminate()
        server.wait()
    text = json.dumps(figures, indent=2)
    print(text)
    if a.json:
        a.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
