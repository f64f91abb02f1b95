"""Gallery encoding across nodes: two processes started the way srun starts them (SLURM environment
variables, one task per node) join one Fabric group; rank 0's cache ends up with every item's embedding,
equal to a single-process encoding."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import tiny_models

from visa.backbones.open_clip import OpenClipBackbone  # noqa: E402
from visa.cache import SQLiteStore  # noqa: E402
from visa.core.errors import VisaError  # noqa: E402
from visa.data import Item  # noqa: E402
from visa.method.keys import visual_keys  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

NODE_SCRIPT = """
import sys
from pathlib import Path
from visa.backbones.open_clip import OpenClipBackbone
from visa.backbones.parallel import encode_across_nodes, start_nodes
from visa.cache import SQLiteStore
from visa.data import Item
from visa.method.keys import visual_keys

model, cache_dir, *paths = sys.argv[1:]
items = [Item(f"i{n}", p) for n, p in enumerate(paths)]
backbone = OpenClipBackbone(model=model, device="cpu", batch_size=2, devices=1, num_nodes=2)
fabric = start_nodes(backbone)
cache = SQLiteStore(cache_dir) if fabric.global_rank == 0 else None
encoded = encode_across_nodes(fabric, backbone, items, visual_keys(backbone, items), cache)
print("rank", fabric.global_rank, "encoded", encoded)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _srun_env(rank: int, port: int) -> dict:
    """What srun --nodes=2 --ntasks-per-node=1 sets in task `rank` (the part Lightning reads)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update(
        SLURM_NTASKS="2", SLURM_NTASKS_PER_NODE="1", SLURM_NNODES="2", SLURM_PROCID=str(rank),
        SLURM_LOCALID="0", SLURM_NODEID=str(rank), SLURM_NODELIST="localhost", SLURM_JOB_NAME="visa",
        SLURM_JOB_ID="4242", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
        PYTHONPATH=str(REPO), OMP_NUM_THREADS="1",
    )  # fmt: skip
    return env


def test_two_nodes_fill_rank0_cache_like_one_process(tmp_path):
    model = f"local-dir:{tiny_models.open_clip_dir(tmp_path / 'oc')}"
    paths = [str(p) for p in tiny_models.write_images(tmp_path / "imgs", 5)]
    cache_dir = tmp_path / "cache"
    port = _free_port()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", NODE_SCRIPT, model, str(cache_dir), *paths],
            env=_srun_env(rank, port),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for rank in range(2)
    ]
    outs = [p.communicate(timeout=240) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-2000:]
    assert "rank 0 encoded 5" in outs[0][0] and "rank 1 encoded 5" in outs[1][0]

    items = [Item(f"i{n}", p) for n, p in enumerate(paths)]
    single = OpenClipBackbone(model=model, device="cpu", batch_size=2)
    keys = visual_keys(single, items)
    cache = SQLiteStore(cache_dir)
    stored = cache.get_many(keys)
    cache.close()
    assert set(stored) == set(keys)
    expected = single.encode_visual(items)
    got = torch.from_numpy(np.stack([stored[k] for k in keys]))
    assert torch.allclose(got, expected, atol=1e-6)


def test_num_nodes_must_be_a_positive_count():
    with pytest.raises(VisaError, match="backbone.num_nodes=0"):
        OpenClipBackbone(model="ViT-B-32", num_nodes=0)
