"""The one stage runner every model stage goes through: it asks the store for a stage's keys, computes only
the missing ones, and writes the results as they arrive, a few at a time (at most `FLUSH_RESULTS` results or
`FLUSH_SECONDS` seconds' worth, whichever comes first; everything received on an error, Ctrl-C or a stop
signal), so a killed run loses at most that much and an interrupted one nothing it received; it also keeps
the per-stage counts and times reported in metrics.json, and the cost of the results each stage used
(`visa.cache.cost`: stored with each result, so a cached result costs what it cost when computed)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

from tqdm.auto import tqdm

from visa.cache.cost import Cost, CostReporting, CostTotals, cost_report
from visa.cache.store import Store
from visa.core.errors import VisaError


@dataclass
class StageStats:
    computed: int = 0
    cached: int = 0
    seconds: float = 0.0


# A stream yields (index, result), or (index, result, Cost) when it knows what a result cost.
Stream = Callable[[list[Any]], Iterator[tuple[Any, ...]]]


def batched(fn: Callable[[list[Any]], list[Any]], batch_size: int, part: Any = None) -> Stream:
    """Turn a list -> list function into a stream of (index, result, Cost), one batch at a time: each row
    costs one call and an equal share of the batch's wall time; when `part` (the object `fn` belongs to)
    reports `last_costs()`, its tokens too."""
    reporting = part if isinstance(part, CostReporting) else None

    def stream(inputs: list[Any]) -> Iterator[tuple[Any, ...]]:
        for start in range(0, len(inputs), batch_size):
            t0 = time.perf_counter()
            outputs = fn(inputs[start : start + batch_size])
            seconds = (time.perf_counter() - t0) / max(len(outputs), 1)
            if len(outputs) != len(inputs[start : start + batch_size]):
                raise RuntimeError(f"{fn} returned {len(outputs)} results for {batch_size} inputs")
            costs = reporting.last_costs() if reporting is not None else []
            if len(costs) != len(outputs):  # a part that could not count this batch: calls and time only
                costs = [Cost() for _ in outputs]
            for j, (out, cost) in enumerate(zip(outputs, costs)):
                yield start + j, out, cost if cost.seconds is not None else replace(cost, seconds=seconds)

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
        self.costs: dict[str, CostTotals] = {}  # per stage, over the distinct results it used
        self._counted: dict[str, set[int]] = {}  # per stage, hashes of the keys already in `costs`

    def count_cost(self, stage: str, key: str, cost: Cost | None) -> None:
        """Add one result's cost to its stage, once per run whichever call used it (a run's cost does not
        depend on how its stages were split into blocks)."""
        seen = self._counted.setdefault(stage, set())
        h = hash(key)  # an int, not the key: a million-item gallery keeps a small set
        if h not in seen:
            seen.add(h)
            self.costs.setdefault(stage, CostTotals()).add(cost)

    def fetch(self, stage: str, keys: Sequence[str]) -> dict[str, Any]:
        """The stored results of `keys` (those present), their costs counted under `stage`."""
        if self.store is None:
            return {}
        entries: dict[str, tuple[Any, Cost | None]]
        if not hasattr(self.store, "get_with_costs"):  # a store that keeps no costs
            entries = {k: (v, None) for k, v in self.store.get_many(list(keys)).items()}
        else:
            entries = self.store.get_with_costs(list(keys))
        for key, (_, cost) in entries.items():
            self.count_cost(stage, key, cost)
        return {key: value for key, (value, _) in entries.items()}

    def run(
        self,
        stage: str,
        keys: Sequence[str],
        inputs: Sequence[Any],
        compute: Stream,
        model: str = "",
        note: str | None = None,
        media: Callable[[Any], int] | None = None,
    ) -> list[Any]:
        """Results for `inputs`, computing only the keys the store lacks.

        `compute` receives the missing inputs (each distinct key once) and yields (index, result) or
        (index, result, Cost) in any order; the results go to the store, with their costs, in small batches
        as they arrive (see the module docstring). `model` labels the results in the store
        (`python -m visa.cache show` groups by it). `note` says which part of a stage this call is (a block
        of queries): its progress bar then goes when done. `media(input)`: the images and videos one input
        shows the model, for costs that do not say (default 0).
        """
        stats = self.stats.setdefault(stage, StageStats())
        with self.timed(stage):
            first_input = dict(zip(keys, inputs))
            found = self.fetch(stage, list(first_input))
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
                        stage,
                        missing,
                        [first_input[k] for k in missing],
                        compute,
                        model,
                        found,
                        bar,
                        media or (lambda _: 0),
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
        media: Callable[[Any], int],
    ) -> None:
        """Put each result in `found` and, in batches, in the store; on any way out (the stream ends, fails,
        or Ctrl-C / a stop signal interrupts it) what was received and not yet stored is stored."""
        stats, store = self.stats[stage], self.store
        pending: dict[str, Any] = {}
        pending_costs: dict[str, Cost] = {}
        last_flush = time.monotonic()

        def flush() -> None:
            nonlocal pending, pending_costs, last_flush
            assert store is not None
            try:
                store.put_many(stage, pending, model=model, costs=pending_costs)
            except (VisaError, OSError):  # the store cannot take them (disk full, ...): not tried again
                pending, pending_costs = {}, {}
                raise
            # (Ctrl-C inside the write: tried again below)
            pending, pending_costs, last_flush = {}, {}, time.monotonic()

        try:
            last = time.perf_counter()
            for index, result, *reported in compute(inputs):
                now = time.perf_counter()
                # a stream that does not time its results: each one costs the wall time since the last
                cost = (reported[0] if reported else Cost()).complete(media(inputs[index]), now - last)
                last = now
                key = missing[index]
                found[key] = result
                stats.computed += 1
                self.count_cost(stage, key, cost)
                bar.update(1)
                if store is None:
                    continue
                pending[key], pending_costs[key] = result, cost
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

    def report(self, model_stages: Sequence[str], queries: int = 0) -> dict[str, Any]:
        """calls/<stage>/computed|cached for the model stages, time/<stage> for every stage that ran; with
        `queries`, the cost/... keys too (`visa.cache.cost.cost_report`)."""
        out: dict[str, Any] = {}
        for stage in model_stages:
            s = self.stats.get(stage, StageStats())
            out[f"calls/{stage}/computed"] = s.computed
            out[f"calls/{stage}/cached"] = s.cached
        for stage, s in self.stats.items():
            out[f"time/{stage}"] = round(s.seconds, 4)
        if queries:
            out.update(cost_report(self.costs, list(model_stages), queries))
        return out
