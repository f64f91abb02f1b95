"""The one stage runner every model stage goes through: it asks the store for a stage's keys, computes only
the missing ones, and writes the results as they arrive, a few at a time (at most `FLUSH_RESULTS` results or
`FLUSH_SECONDS` seconds' worth, whichever comes first; everything received on an error, Ctrl-C or a stop
signal), so a killed run loses at most that much and an interrupted one nothing it received; it also keeps
the per-stage counts and times reported in metrics.json."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from tqdm.auto import tqdm

from visa.cache.store import Store
from visa.core.errors import VisaError


@dataclass
class StageStats:
    computed: int = 0
    cached: int = 0
    seconds: float = 0.0


Stream = Callable[[list[Any]], Iterator[tuple[int, Any]]]


def batched(fn: Callable[[list[Any]], list[Any]], batch_size: int) -> Stream:
    """Turn a list -> list function into a stream of (index, result), one batch at a time."""

    def stream(inputs: list[Any]) -> Iterator[tuple[int, Any]]:
        for start in range(0, len(inputs), batch_size):
            outputs = fn(inputs[start : start + batch_size])
            if len(outputs) != len(inputs[start : start + batch_size]):
                raise RuntimeError(f"{fn} returned {len(outputs)} results for {batch_size} inputs")
            yield from ((start + j, out) for j, out in enumerate(outputs))

    return stream


# A run killed without warning (SIGKILL, a node lost) loses at most this many results per stage, or this
# many seconds' worth: one SQLite transaction per result would cost more than the rest of a cached call.
FLUSH_RESULTS = 256
FLUSH_SECONDS = 0.5


class StageRunner:
    """Runs the stages of one evaluation against a store (None: nothing is stored) and keeps, per stage, how
    many results were computed or found, and the seconds spent."""

    def __init__(self, store: Store | None, progress: bool = True):
        self.store, self.progress = store, progress
        self.stats: dict[str, StageStats] = {}

    def run(
        self,
        stage: str,
        keys: Sequence[str],
        inputs: Sequence[Any],
        compute: Stream,
        model: str = "",
        note: str | None = None,
    ) -> list[Any]:
        """Results for `inputs`, computing only the keys the store lacks.

        `compute` receives the missing inputs (each distinct key once) and yields (index, result) pairs in
        any order; the results go to the store in small batches as they arrive (see the module docstring).
        `model` labels the results in the store (`python -m visa.cache show` groups by it). `note` says
        which part of a stage this call is (a block of queries): its progress bar then goes when done.
        """
        stats = self.stats.setdefault(stage, StageStats())
        with self.timed(stage):
            first_input = dict(zip(keys, inputs))
            found = self.store.get_many(list(first_input)) if self.store is not None else {}
            missing = [k for k in first_input if k not in found]
            stats.cached += len(first_input) - len(missing)
            if missing:
                desc = f"{stage} ({note})" if note else stage
                with tqdm(
                    total=len(missing),
                    desc=desc,
                    unit="call",
                    disable=not self.progress,
                    dynamic_ncols=True,
                    leave=note is None,
                ) as bar:
                    self._compute(
                        stage, missing, [first_input[k] for k in missing], compute, model, found, bar
                    )
                lost = [k for k in missing if k not in found]
                if lost:
                    raise RuntimeError(f"stage {stage}: {len(lost)} inputs got no result")
        return [found[k] for k in keys]

    def _compute(
        self,
        stage: str,
        missing: list[str],
        inputs: list[Any],
        compute: Stream,
        model: str,
        found: dict[str, Any],
        bar: tqdm,
    ) -> None:
        """Put each result in `found` and, in batches, in the store; on any way out (the stream ends, fails,
        or Ctrl-C / a stop signal interrupts it) what was received and not yet stored is stored."""
        stats, store = self.stats[stage], self.store
        pending: dict[str, Any] = {}
        last_flush = time.monotonic()

        def flush() -> None:
            nonlocal pending, last_flush
            assert store is not None
            try:
                store.put_many(stage, pending, model=model)
            except (VisaError, OSError):  # the store cannot take them (disk full, ...): not tried again
                pending = {}
                raise
            pending, last_flush = {}, time.monotonic()  # (Ctrl-C inside the write: tried again below)

        try:
            for index, result in compute(inputs):
                key = missing[index]
                found[key] = result
                stats.computed += 1
                bar.update(1)
                if store is None:
                    continue
                pending[key] = result
                if len(pending) >= FLUSH_RESULTS or time.monotonic() - last_flush >= FLUSH_SECONDS:
                    flush()
        finally:
            if pending:
                flush()

    def add_time(self, stage: str, seconds: float) -> None:
        self.stats.setdefault(stage, StageStats()).seconds += seconds

    @contextmanager
    def timed(self, stage: str) -> Iterator[None]:
        """Adds the seconds spent inside to `stage` (also for steps without a model: retrieve, fuse)."""
        stats = self.stats.setdefault(stage, StageStats())
        t0 = time.perf_counter()
        try:
            yield
        finally:
            stats.seconds += time.perf_counter() - t0

    def report(self, model_stages: Sequence[str]) -> dict[str, Any]:
        """calls/<stage>/computed|cached for the model stages, time/<stage> for every stage that ran."""
        out: dict[str, Any] = {}
        for stage in model_stages:
            s = self.stats.get(stage, StageStats())
            out[f"calls/{stage}/computed"] = s.computed
            out[f"calls/{stage}/cached"] = s.cached
        for stage, s in self.stats.items():
            out[f"time/{stage}"] = round(s.seconds, 4)
        return out
