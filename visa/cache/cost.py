"""What computing one stage result cost: stored with the result, so that a run that finds it cached reports
the cost of the run that computed it (cost describes the method, not the cache state).

A part may report per-result costs through its stream: a stream yields (index, result) or
(index, result, Cost), and a list -> list part may expose `last_costs()` (one Cost per row of its last call,
`batched` picks it up). What a part leaves as None, the runner fills in: `media` from the stage's count of
the input's media, `seconds` from the wall time (a batch's time split over its rows; for a stream, the time
since the previous result arrived)."""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, replace
from typing import Any, Protocol, runtime_checkable

# the binary form in shared-folder logs: calls, tokens in, tokens out, media, seconds
PACKED = struct.Struct("<IQQId")


@dataclass(frozen=True)
class Cost:
    """The cost of one result: model calls, input and output tokens, media items (images, videos) encoded
    and model seconds. None (in what a part reports): not known to the part, filled in by the runner."""

    calls: int = 1
    tokens_in: int = 0
    tokens_out: int = 0
    media: int | None = None
    seconds: float | None = None

    def complete(self, media: int, seconds: float) -> Cost:
        """This cost with the fields the part left open filled in."""
        return replace(
            self,
            media=media if self.media is None else self.media,
            seconds=seconds if self.seconds is None else self.seconds,
        )

    def to_json(self) -> str:
        return json.dumps([self.calls, self.tokens_in, self.tokens_out, self.media or 0, self.seconds or 0.0])

    @classmethod
    def from_json(cls, text: str | None) -> Cost | None:
        """None for results stored before costs were (NULL in the SQLite cache)."""
        if not text:
            return None
        calls, tokens_in, tokens_out, media, seconds = json.loads(text)
        return cls(int(calls), int(tokens_in), int(tokens_out), int(media), float(seconds))

    def pack(self) -> bytes:
        return PACKED.pack(self.calls, self.tokens_in, self.tokens_out, self.media or 0, self.seconds or 0.0)

    @classmethod
    def unpack(cls, blob: bytes) -> Cost:
        return cls(*PACKED.unpack(blob))


@runtime_checkable
class CostReporting(Protocol):
    """Optional ability of a list -> list part (generator, backbone, scorer): the costs of the rows of its
    last call (tokens from its tokenizer), in order. Parts without it are still counted: one call per
    result, its media and its share of the wall time."""

    def last_costs(self) -> list[Cost]: ...


def token_costs(enc: Any, pad_token_id: int | None) -> list[Cost]:
    """One Cost per row of a tokenizer's batch `enc`: its input tokens, padding left out (the attention
    mask's ones; without a mask, the ids that are not padding)."""
    mask = enc.get("attention_mask") if hasattr(enc, "get") else None
    if mask is None:
        mask = enc["input_ids"] != pad_token_id
    return [Cost(tokens_in=int(n)) for n in mask.sum(dim=1).tolist()]


@dataclass
class CostTotals:
    """Sums over the distinct results a stage used; `unknown`: results cached before costs were stored
    (their cost is not in the sums)."""

    calls: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    media: int = 0
    seconds: float = 0.0
    unknown: int = 0

    def add(self, cost: Cost | None) -> None:
        if cost is None:
            self.unknown += 1
            return
        self.calls += cost.calls
        self.tokens_in += cost.tokens_in
        self.tokens_out += cost.tokens_out
        self.media += cost.media or 0
        self.seconds += cost.seconds or 0.0


def cost_report(totals: dict[str, CostTotals], stages: list[str], queries: int) -> dict[str, Any]:
    """cost/<stage>/calls|tokens_in|tokens_out|media|seconds|unknown for `stages` (zeros for a stage that
    did not run) and every other stage with costs, and cost/per_query/calls|tokens|seconds: the totals over
    all stages divided by the number of queries."""
    out: dict[str, Any] = {}
    everything = CostTotals()
    for stage in list(dict.fromkeys([*stages, *totals])):
        t = totals.get(stage, CostTotals())
        out[f"cost/{stage}/calls"] = t.calls
        out[f"cost/{stage}/tokens_in"] = t.tokens_in
        out[f"cost/{stage}/tokens_out"] = t.tokens_out
        out[f"cost/{stage}/media"] = t.media
        out[f"cost/{stage}/seconds"] = round(t.seconds, 4)
        out[f"cost/{stage}/unknown"] = t.unknown
        everything.calls += t.calls
        everything.tokens_in += t.tokens_in
        everything.tokens_out += t.tokens_out
        everything.seconds += t.seconds
    n = max(queries, 1)
    out["cost/per_query/calls"] = round(everything.calls / n, 4)
    out["cost/per_query/tokens"] = round((everything.tokens_in + everything.tokens_out) / n, 4)
    out["cost/per_query/seconds"] = round(everything.seconds / n, 6)
    return out
