"""Sharded runs: `shard.count=N shard.index=i` makes a run do a deterministic 1/N of each model stage's work.

Which work is whose (the same in every shard, from the config alone):
- encode_text, ask, answer, score: by query, query q belongs to shard q % N;
- encode_visual: by gallery item, item g belongs to shard g % N;
- describe: the items among the top-K candidates, in gallery order, the j-th to shard j % N.

Every shard needs all the embeddings (to retrieve) and the descriptions of its candidates (to answer and
score), so after its own share of encode_text, encode_visual and describe a shard waits until the other
shards' results are in the shared cache. A shard that sees no progress for `idle_seconds` (another shard
never started: fewer job slots than shards; or it died) computes the rest itself, so a sharded run cannot
deadlock; in the normal case, every shard running at once, nothing is computed twice. After score, a shard
stops: the final run without shard settings finds every result cached and writes the metrics.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from visa.core.errors import VisaError

log = logging.getLogger("visa.method.shard")

# The stages whose results every shard needs in full; the others are split by query and not shared.
SHARED_STAGES = ("encode_text", "encode_visual", "describe")


@dataclass
class Shard:
    """`shard.count`, `shard.index`, `shard.idle_seconds` of the config, and the split they make."""

    count: int = 1  # N > 1: this run does 1/N of each model stage's work (docs/scaling.md)
    index: int = 0  # which 1/N: 0 .. count-1 ('shard.index=range(N)' in a multirun)
    idle_seconds: float = 600.0  # waiting on other shards with no progress this long: compute the rest
    poll_seconds: float = 2.0

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise VisaError(
                f"shard.index={self.index} shard.count={self.count}: the index must be in 0..count-1 "
                f"(e.g. shard.count=4 'shard.index=range(4)')"
            )

    @property
    def active(self) -> bool:
        return self.count > 1

    def mine(self, n: int) -> list[int]:
        """This shard's positions among n units of work."""
        return list(range(self.index, n, self.count))


def wait_for_others(
    shard: Shard,
    stage: str,
    keys: Sequence[str],
    fetch: Callable[[list[str]], dict[str, Any]],
    compute_missing: Callable[[list[str]], dict[str, Any]],
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """Results for all `keys`: read from the cache as the other shards write them; the ones that stop
    coming for `shard.idle_seconds` are computed by `compute_missing` (which writes them to the cache)."""
    wanted = list(dict.fromkeys(keys))
    found = fetch(wanted)
    last_progress, reported = clock(), len(found)
    while len(found) < len(wanted):
        missing = [k for k in wanted if k not in found]
        if clock() - last_progress >= shard.idle_seconds:
            log.warning(
                "shard %d/%d: %s: no progress from the other shards for %.0f s; computing the %d results "
                "still missing here",
                shard.index,
                shard.count,
                stage,
                shard.idle_seconds,
                len(missing),
            )
            found.update(compute_missing(missing))
            break
        sleep(shard.poll_seconds)
        more = fetch(missing)
        if more:
            found.update(more)
            last_progress = clock()
        if len(found) - reported >= max(1, len(wanted) // 10) or len(found) == len(wanted):
            log.info(
                "shard %d/%d: %s: %d/%d results", shard.index, shard.count, stage, len(found), len(wanted)
            )
            reported = len(found)
    return found
