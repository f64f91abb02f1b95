"""A sharded run of the demo as one Hydra multirun through Hydra's Ray launcher (hydra-ray-launcher, the `ray`
extra) on a real Ray cluster: a head started here on the loopback address with 2 CPUs, the way
docs/scaling.md starts one; 2 shards into one cache as Ray tasks, then a run without shard settings
computes nothing and gives the same metrics and rankings as one unsharded process."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from conftest import REPO, SMALL_DEMO, read_run, requires, run_cli

requires("hydra_plugins.hydra_ray_launcher", "ray")

MODEL_STAGES = ("encode_text", "encode_visual", "describe", "ask", "answer", "score")
# One prompt per generation batch, so that the shard split cannot change a reply (as in test_shard_run.py).
ONE_PER_BATCH = [*SMALL_DEMO, "question_llm.batch_size=1"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ranking(results: list[dict]) -> list:
    return [(r["query"], [c["id"] for c in r["visa_top"]], r["questions"]) for r in results]


@pytest.fixture(scope="module")
def ray_head():
    """`ray start --head` on 127.0.0.1 with 2 CPUs, in the foreground (--block) so that stopping this one
    process stops its cluster and nothing else: `ray stop` would stop every Ray cluster on the machine.
    Yields the address to join. Its workers get this checkout on PYTHONPATH and the tests' offline
    settings."""
    port = _free_port()
    temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray puts its unix sockets under it
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    log_path = Path(temp_dir) / "head.log"
    cmd = [
        sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--node-ip-address=127.0.0.1",
        f"--port={port}", "--num-cpus=2", "--num-gpus=0", "--include-dashboard=false",
        "--disable-usage-stats", "--object-store-memory=100000000", f"--temp-dir={temp_dir}", "--block",
    ]  # fmt: skip
    with open(log_path, "w") as log:
        head = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 180  # a wait for start-up, not a measurement
        while "Ray runtime started" not in log_path.read_text():
            if head.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"ray start --head did not start:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.5)
        yield f"127.0.0.1:{port}"
    finally:
        head.send_signal(signal.SIGTERM)  # Ray's handler stops the cluster's processes, then exits
        try:
            head.wait(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.mark.slow
def test_two_shards_on_ray_then_a_final_run_equal_one_process(tmp_path, ray_head):
    reference = run_cli(*ONE_PER_BATCH, cache=tmp_path / "reference-cache", run_dir=tmp_path / "reference")
    assert reference.returncode == 0, reference.stderr[-2000:]
    ref_metrics, ref_results = read_run(tmp_path / "reference")

    cache, sweep = tmp_path / "shared-cache", tmp_path / "multirun"
    shards = run_cli(
        "-m", "hydra/launcher=ray_cluster", f"hydra.launcher.ray.init.address={ray_head}",
        "hydra.launcher.ray.remote.num_gpus=0", "hydra.launcher.ray.remote.num_cpus=1",
        *ONE_PER_BATCH, f"cache_dir={cache}", "shard.count=2", "shard.index=range(2)",
        f"hydra.sweep.dir={sweep}", cache=cache, run_dir=tmp_path / "unused",
    )  # fmt: skip
    assert shards.returncode == 0, shards.stderr[-3000:]
    assert "Connected to Ray cluster" in shards.stderr + shards.stdout
    shard_metrics = [json.loads((sweep / str(i) / "metrics.json").read_text()) for i in range(2)]
    assert [m["shard/index"] for m in shard_metrics] == [0, 1]
    for stage in MODEL_STAGES:
        total = ref_metrics[f"calls/{stage}/computed"] + ref_metrics[f"calls/{stage}/cached"]
        done = [m[f"calls/{stage}/computed"] for m in shard_metrics]
        assert sum(done) == total, (stage, done, total)  # nothing computed twice, nothing left out
        if stage in ("encode_visual", "ask", "answer", "score"):
            assert all(d > 0 for d in done), (stage, done)  # both shards did a share

    final = run_cli(*ONE_PER_BATCH, f"cache_dir={cache}", cache=cache, run_dir=tmp_path / "final")
    assert final.returncode == 0, final.stderr[-2000:]
    metrics, results = read_run(tmp_path / "final")
    assert all(metrics[f"calls/{stage}/computed"] == 0 for stage in MODEL_STAGES)
    for key, value in ref_metrics.items():
        if key.startswith(("base/", "visa/")):
            assert metrics[key] == value, key
    assert _ranking(results) == _ranking(ref_results)
