"""A sharded run of the demo as one Hydra multirun through Hydra's Ray launcher (hydra-ray-launcher, the `ray`
extra) on a real Ray cluster: a head started here on the loopback address with 2 CPUs, the way
docs/scaling.md starts one; 2 shards into one cache as Ray tasks, then a run without shard settings
computes nothing and gives the same metrics and rankings as one unsharded process."""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import REPO, SMALL_DEMO, read_run, requires, run_cli

requires("hydra_plugins.hydra_ray_launcher", "ray")

MODEL_STAGES = ("encode_text", "encode_visual", "describe", "ask", "answer", "score")
# At the default batch sizes: a reply does not depend on its batch-mates, so the shard split changes none.
DEMO = SMALL_DEMO


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ranking(results: list[dict]) -> list:
    return [(r["query"], [c["id"] for c in r["rerank_top"]], r["questions"]) for r in results]


LOOPBACK_ONLY = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"  # "0": Ray's own addresses are the loopback address
ADDRESS = re.compile(
    r"\b(\d{1,3}(?:\.\d{1,3}){3})(?=:\d)|node IP\W*(?:\x1b\[[0-9;]*m)*(\d{1,3}(?:\.\d{1,3}){3})"
)


@dataclass
class RayHead:
    address: str
    temp_dir: Path

    def addresses(self, *texts: str) -> set[str]:
        """Every host:port address and node IP in Ray's logs so far and in `texts`."""
        logs = [
            p.read_text(errors="replace")
            for p in self.temp_dir.rglob("*")
            if p.is_file() and p.suffix in (".log", ".out", ".err")
        ]
        return {a or b for text in [*logs, *texts] for a, b in ADDRESS.findall(text)}


@pytest.fixture(scope="module")
def ray_head():
    """`ray start --head` on 127.0.0.1 with 2 CPUs, in the foreground (--block) so that stopping this one
    process stops its cluster and nothing else: `ray stop` would stop every Ray cluster on the machine.
    Yields the address to join. Its workers get this checkout on PYTHONPATH and the tests' offline
    settings."""
    port = _free_port()
    temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray puts its unix sockets under it
    # Ray turns 127.0.0.1 into the machine's outward address unless told it is a one-machine cluster: this
    # keeps the head, its workers and the test's driver (the sweep below, which inherits os.environ) on the
    # loopback interface.
    # Token authentication with the test's own token: what ~/.ray holds (a token another Ray session saved
    # there) changes nothing.
    fixed = {LOOPBACK_ONLY: "0", "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    saved = {name: os.environ.get(name) for name in fixed}
    os.environ.update(fixed)
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
        yield RayHead(f"127.0.0.1:{port}", Path(temp_dir))
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        head.send_signal(signal.SIGTERM)  # Ray's handler stops the cluster's processes, then exits
        try:
            head.wait(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.mark.slow
def test_two_shards_on_ray_then_a_final_run_equal_one_process(tmp_path, ray_head):
    reference = run_cli(*DEMO, cache=tmp_path / "reference-cache", run_dir=tmp_path / "reference")
    assert reference.returncode == 0, reference.stderr[-2000:]
    ref_metrics, ref_results = read_run(tmp_path / "reference")

    cache, sweep = tmp_path / "shared-cache", tmp_path / "multirun"
    shards = run_cli(
        "-m", "hydra/launcher=ray_cluster", f"hydra.launcher.ray.init.address={ray_head.address}",
        "hydra.launcher.ray.remote.num_gpus=0", "hydra.launcher.ray.remote.num_cpus=1",
        *DEMO, f"cache_dir={cache}", "shard.count=2", "shard.index=range(2)",
        f"hydra.sweep.dir={sweep}", cache=cache, run_dir=tmp_path / "unused",
    )  # fmt: skip
    assert shards.returncode == 0, shards.stderr[-3000:]
    assert "Connected to Ray cluster" in shards.stderr + shards.stdout
    # every address the cluster and the driver used is the loopback one: nothing left the machine's lo
    used = ray_head.addresses(shards.stderr, shards.stdout)
    assert used and used <= {"127.0.0.1", "0.0.0.0"}, used
    shard_metrics = [json.loads((sweep / str(i) / "metrics.json").read_text()) for i in range(2)]
    assert [m["shard/index"] for m in shard_metrics] == [0, 1]
    for stage in MODEL_STAGES:
        total = ref_metrics[f"calls/{stage}/computed"] + ref_metrics[f"calls/{stage}/cached"]
        done = [m[f"calls/{stage}/computed"] for m in shard_metrics]
        assert sum(done) == total, (stage, done, total)  # nothing computed twice, nothing left out
        if stage in ("encode_visual", "ask", "answer", "score"):
            assert all(d > 0 for d in done), (stage, done)  # both shards did a share

    final = run_cli(*DEMO, f"cache_dir={cache}", cache=cache, run_dir=tmp_path / "final")
    assert final.returncode == 0, final.stderr[-2000:]
    metrics, results = read_run(tmp_path / "final")
    assert all(metrics[f"calls/{stage}/computed"] == 0 for stage in MODEL_STAGES)
    for key, value in ref_metrics.items():
        if key.startswith(("base/", "rerank/")):
            assert metrics[key] == value, key
    assert _ranking(results) == _ranking(ref_results)
    assert metrics["results/digest"] == ref_metrics["results/digest"]
