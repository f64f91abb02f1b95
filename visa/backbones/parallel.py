"""Gallery encoding, data-parallel across devices with Lightning Fabric, and the precision settings that
the real backbones share.

A backbone that mixes in `FabricEncoding` gets a `stream_visual(items)` that the pipeline's encode_visual
stage uses instead of plain batching. With `devices: 1` it is plain batching in this process. With more,
Fabric starts one process per device (`strategy: ddp_spawn`, the default: it works from inside a Hydra run
and from a notebook), each process loads its own copy of the model, encodes every world_size-th item, and
the embeddings are gathered back in gallery order. The embeddings are the same as a single-process run.

Across nodes (`num_nodes: N`, `devices: G` per node), the processes are started by the cluster, one per GPU
(`srun --nodes=N --ntasks-per-node=G python -m visa.run ...`; torchrun works too): each runs the same
command, `start_nodes` joins them into one Fabric process group, `encode_across_nodes` encodes the
gallery items that global rank 0's cache lacks (every process a 1/(N*G) share), rank 0 writes them to the
cache, and the other processes end; rank 0 goes on with the run, its encode_visual stage all cached.
See docs/scaling.md for the SLURM script.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import nullcontext
from typing import Any

import numpy as np
import torch

from visa.core.devices import resolve_device
from visa.core.errors import VisaError
from visa.data import Item

# Fabric's precision names. "-true": the weights are loaded in that dtype; "-mixed": fp32 weights, autocast.
PRECISIONS = {
    "32-true": (torch.float32, None),
    "16-true": (torch.float16, None),
    "bf16-true": (torch.bfloat16, None),
    "16-mixed": (torch.float32, torch.float16),
    "bf16-mixed": (torch.float32, torch.bfloat16),
}
# Launchers that work from inside a running program (Hydra run, notebook). Fabric's "ddp" re-executes the
# command line once per device, which is for scripts written around Fabric, not for this pipeline.
STRATEGIES = ("ddp_spawn", "ddp_fork")


def check_precision(precision: str, where: str) -> None:
    if precision not in PRECISIONS:
        raise VisaError(f"{where}.precision={precision!r} is not one of {', '.join(PRECISIONS)}")


def weight_dtype(precision: str) -> torch.dtype:
    return PRECISIONS[precision][0]


def autocast(precision: str, device: torch.device):
    """torch.autocast for the "-mixed" precisions, nothing otherwise."""
    dtype = PRECISIONS[precision][1]
    if dtype is None:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def _encode_shard(fabric, backbone: Any, rows: list[tuple], batch_size: int) -> np.ndarray:
    """Runs in every process: encode this rank's share, gather all shares, restore gallery order."""
    items = [Item(*row) for row in rows]
    backbone.device = str(fabric.device)  # each process loads the model onto its own device
    world, rank = fabric.world_size, fabric.global_rank
    shard = items[rank::world]
    starts = range(0, len(shard), batch_size)
    parts = [backbone.encode_visual(shard[i : i + batch_size]).float() for i in starts]
    local = torch.cat(parts).to(fabric.device)
    # all_gather needs the same shape on every rank: pad each share to the largest one
    share = math.ceil(len(items) / world)
    padded = torch.zeros(share, local.shape[1], device=fabric.device)
    padded[: len(local)] = local
    gathered = fabric.all_gather(padded)  # [world, rows, d]
    order = torch.arange(len(items))
    # numpy, not a tensor: a tensor would come back through shared memory that dies with the worker
    return gathered[order % world, order // world].cpu().numpy()


def encode_parallel(
    backbone: Any, items: list[Item], devices: int, strategy: str = "ddp_spawn", accelerator: str = "auto"
) -> torch.Tensor:
    """Embeddings of `items` computed by `devices` processes; same values and order as one process."""
    from lightning.fabric import Fabric

    if accelerator == "auto":
        accelerator = "cuda" if torch.cuda.is_available() else "cpu"
    fabric = Fabric(accelerator=accelerator, devices=devices, strategy=strategy)
    # items travel as plain tuples: Fabric walks the arguments and refuses frozen dataclasses
    rows = [(item.id, item.path, item.kind, item.text) for item in items]
    # Fabric.launch passes the fabric first, then these arguments (its annotation names only the first)
    encoded = fabric.launch(_encode_shard, backbone, rows, backbone.batch_size)  # type: ignore[arg-type]
    return torch.from_numpy(encoded)


def start_nodes(backbone: Any) -> Any:
    """A launched Fabric spanning the processes that the cluster started (one per device on every node)."""
    from lightning.fabric import Fabric

    accelerator = resolve_device(backbone.device).type if backbone.device != "auto" else "auto"
    if accelerator == "auto":
        accelerator = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        fabric = Fabric(
            accelerator=accelerator, devices=backbone.devices, num_nodes=backbone.num_nodes, strategy="ddp"
        )
        fabric.launch()  # the processes exist already (srun, torchrun): this joins them into one group
    except (ValueError, RuntimeError) as e:
        raise VisaError(
            f"backbone.num_nodes={backbone.num_nodes} backbone.devices={backbone.devices}: cannot join the "
            f"processes ({str(e).splitlines()[0]}); start one process per device on every node, e.g. "
            f"srun --nodes={backbone.num_nodes} --ntasks-per-node={backbone.devices} python -m visa.run ..."
        ) from e
    if fabric.world_size != backbone.num_nodes * backbone.devices:
        raise VisaError(
            f"backbone.num_nodes={backbone.num_nodes} x backbone.devices={backbone.devices} processes "
            f"expected, {fabric.world_size} started; start them with srun --nodes={backbone.num_nodes} "
            f"--ntasks-per-node={backbone.devices}"
        )
    return fabric


def encode_across_nodes(fabric: Any, backbone: Any, items: Sequence[Item], keys: Sequence[str], cache) -> int:
    """Called by every process of `fabric`; encodes the items whose keys rank 0's `cache` lacks and writes
    them to it from rank 0 (the other processes pass cache=None). Returns the number of items encoded."""
    missing: list[int] | None = None
    if fabric.global_rank == 0:
        found = cache.get_many(list(keys))
        first = {k: i for i, k in reversed(list(enumerate(keys)))}  # each distinct key once
        missing = sorted(i for k, i in first.items() if k not in found)
    missing = fabric.broadcast(missing, src=0)  # rank 0's view decides, so every process does the same work
    if missing:
        rows = [(items[i].id, items[i].path, items[i].kind) for i in missing]
        embeddings = _encode_shard(fabric, backbone, rows, backbone.batch_size)
        if fabric.global_rank == 0:
            cache.put_many("encode_visual", {keys[i]: row for i, row in zip(missing, embeddings)})
    fabric.barrier()
    return len(missing)


class FabricEncoding:
    """Mixin: `stream_visual` for the pipeline; needs `encode_visual`, `batch_size`, `devices`, `strategy`,
    `device`, `num_nodes`. Loaded weights are not pickled into the worker processes (each loads its own)."""

    devices: int
    num_nodes: int = 1
    strategy: str
    device: str
    batch_size: int

    def _load(self) -> Any:
        """What the backbone's `_build(device)` returns (model, processors, ...) on its device; `_build` is a
        `load_once` loader, so each backbone object loads its weights once per device."""
        return self._build(resolve_device(self.device))  # type: ignore[attr-defined]

    def check_parallel(self, where: str) -> None:
        if not isinstance(self.devices, int) or self.devices < 1:
            raise VisaError(f"{where}.devices={self.devices!r} must be a number of devices >= 1")
        if not isinstance(self.num_nodes, int) or self.num_nodes < 1:
            raise VisaError(f"{where}.num_nodes={self.num_nodes!r} must be a number of nodes >= 1")
        if self.strategy not in STRATEGIES:
            raise VisaError(f"{where}.strategy={self.strategy!r} is not one of {', '.join(STRATEGIES)}")

    def stream_visual(self, items: list[Item]) -> Iterator[tuple[int, Any]]:
        if self.devices == 1 or len(items) < self.devices:
            for start in range(0, len(items), self.batch_size):
                # the backbone class that mixes this in has encode_visual
                embeddings = self.encode_visual(items[start : start + self.batch_size])  # type: ignore[attr-defined]
                for offset, row in enumerate(embeddings.float().numpy()):
                    yield start + offset, row
            return
        accelerator = resolve_device(self.device).type if self.device != "auto" else "auto"
        embeddings = encode_parallel(self, items, self.devices, self.strategy, accelerator)
        yield from enumerate(embeddings.numpy())

    def __getstate__(self) -> dict:
        # settings only: a model already loaded in the parent is not sent to the worker processes
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_loaded")}
