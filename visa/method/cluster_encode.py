"""Gallery store encoding spread over a cluster (`retrieval.gallery_launcher`): the store's missing shards
dealt out to `retrieval.gallery_workers` workers, each a Ray task (`ray`: joins the running cluster,
`ray.init(address="auto")` unless `retrieval.gallery_executor.address` says otherwise) or one job of a
SLURM job array (`slurm`, through submitit; `local`: submitit's local executor, the same code path on one
machine), each encoding its own shards and writing them to the store itself (the cache folder must be on
storage every worker sees). The run waits for them, then deals out what is still missing again (a worker
that died: its unfinished shards; finished shards are never redone), `retrieval.gallery_rounds` times, and
encodes any rest itself. Then the run builds its index from the complete store.

`retrieval.gallery_executor` passes settings to the launcher: for Ray `address`, `num_cpus`, `num_gpus`
(per task); for submitit its `update_parameters` keys, e.g. `slurm_partition`, `gpus_per_node`,
`timeout_min`, `cpus_per_task`, `slurm_array_parallelism`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from visa.backbones import Backbone
from visa.cache.gallery import GalleryStore
from visa.core.errors import VisaError
from visa.data import Item
from visa.method.gallery import encode_shards

log = logging.getLogger("visa.method.cluster_encode")

LAUNCHERS = ("none", "ray", "slurm", "local")


@dataclass
class EncodeJob:
    """What one worker does: encode these shards of the store in `folder` (picklable; runs anywhere)."""

    folder: str
    count: int
    shard_size: int
    dtype: str
    backbone: Backbone
    items: list[Item | None]  # None before the first shard's items: they stay with the run
    shards: list[int]

    def __call__(self) -> int:
        store = GalleryStore(Path(self.folder), self.count, self.shard_size, self.dtype)
        return encode_shards(store, self.backbone, self.items, self.shards, progress=False)  # type: ignore[arg-type]


def _deal(store: GalleryStore, backbone: Backbone, items: Sequence[Item], workers: int) -> list[EncodeJob]:
    missing = store.missing()
    n = max(1, min(workers, len(missing)))
    jobs = []
    for w in range(n):  # contiguous runs of shards, so that a worker gets only the items of its span
        shards = missing[w * len(missing) // n : (w + 1) * len(missing) // n]
        first, last = store.shard_rows(shards[0]).start, store.shard_rows(shards[-1]).stop
        # only the items of its shards travel to a worker (with their positions kept by the store's ranges)
        part: list[Item | None] = [None] * first + list(items[first:last])
        jobs.append(
            EncodeJob(str(store.folder), store.count, store.shard_size, store.dtype, backbone, part, shards)
        )
    return jobs


def _run_ray(jobs: list[EncodeJob], options: dict[str, Any]) -> list[str]:
    try:
        import ray
    except ImportError as e:
        raise VisaError("retrieval.gallery_launcher=ray needs Ray: pip install 'visa-retrieval[ray]'") from e
    if not ray.is_initialized():
        address = options.get("address", "auto")
        try:
            ray.init(address=address, log_to_driver=False)
        except ConnectionError as e:
            raise VisaError(
                f"retrieval.gallery_launcher=ray: no Ray cluster at address={address!r} ({e}); start one "
                "with `ray start --head`, or set +retrieval.gallery_executor.address=local for one here"
            ) from e
    resources = {"num_cpus": options.get("num_cpus", 1), "num_gpus": options.get("num_gpus", 0)}
    remote = ray.remote(max_retries=0, **resources)(_call)
    refs = [remote.remote(job) for job in jobs]
    errors = []
    for i, ref in enumerate(refs):
        try:
            ray.get(ref)
        except Exception as e:  # a task that died or raised: its shards are dealt out again
            errors.append(f"worker {i}: {type(e).__name__}: {str(e).strip().splitlines()[-1][:200]}")
    return errors


def _call(job: EncodeJob) -> int:
    return job()


def _run_submitit(jobs: list[EncodeJob], options: dict[str, Any], local: bool, folder: Path) -> list[str]:
    try:
        import submitit
    except ImportError as e:
        raise VisaError(
            "retrieval.gallery_launcher=slurm/local needs submitit: pip install 'visa-retrieval[cluster]'"
        ) from e
    executor = submitit.AutoExecutor(folder=str(folder), cluster="local" if local else "slurm")
    executor.update_parameters(**options)
    submitted = executor.map_array(_call, jobs)  # one job array
    errors = []
    for i, job in enumerate(submitted):
        try:
            job.result()
        except Exception as e:  # a job that failed or was killed: its shards are dealt out again
            errors.append(f"worker {i} (job {job.job_id}): {type(e).__name__}: {str(e).strip()[-200:]}")
    return errors


def encode_on_cluster(
    store: GalleryStore,
    backbone: Backbone,
    items: Sequence[Item],
    launcher: str,
    workers: int,
    options: dict[str, Any] | None = None,
    rounds: int = 2,
) -> int:
    """Encode the store's missing shards on `workers` workers of `launcher`, `rounds` times at most; the
    items the workers encoded (the caller encodes whatever is still missing)."""
    if launcher not in LAUNCHERS or launcher == "none":
        raise VisaError(f"retrieval.gallery_launcher={launcher!r} is not one of ray, slurm, local")
    options = dict(options or {})
    before = set(store.missing())
    for attempt in range(rounds):
        if not store.missing():
            break
        jobs = _deal(store, backbone, items, workers)
        t0 = time.perf_counter()
        log.info(
            "gallery store %s: %d shards on %d %s workers (round %d)",
            store.folder.name,
            len(store.missing()),
            len(jobs),
            launcher,
            attempt + 1,
        )
        if launcher == "ray":
            errors = _run_ray(jobs, options)
        else:
            folder = store.folder / "jobs"
            errors = _run_submitit(jobs, options, launcher == "local", folder)
        for line in errors:
            log.warning("gallery store %s: %s", store.folder.name, line)
        seconds = time.perf_counter() - t0
        log.info("round %d: %.1f s, %d shards still missing", attempt + 1, seconds, len(store.missing()))
    still = set(store.missing())
    return sum(len(store.shard_rows(n)) for n in before - still)
