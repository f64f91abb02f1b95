"""Optional abilities that any part (backbone, generator, scorer) may have, as runtime-checkable Protocols:
the pipeline asks `isinstance(part, Closable)` rather than probing attributes by name."""

from __future__ import annotations

from typing import Protocol, runtime_checkable


@runtime_checkable
class Closable(Protocol):
    """`close()` stops what the part started (a launched server) at the end of the run."""

    def close(self) -> None: ...


@runtime_checkable
class Counting(Protocol):
    """`counters()` are reported in metrics.json (generation/<part>/<name>, score/<name>)."""

    def counters(self) -> dict[str, int]: ...
