"""Many servers behind one stage: least-outstanding-requests balancing and failover.

A `ServerPool` is used from one event loop (the OpenAI client's): `acquire()` names the server for the next
try of a request, `release(url, ok)` reports how it went. A request goes to the server with the fewest
requests in flight among those that are up (ties: the one that has served fewest, so a fresh pool spreads
evenly). A server whose request fails (refused or dropped connection, timeout, HTTP 5xx or 429) is taken
out for `backoff` seconds, doubled for every further failure in a row, at most `max_backoff`; its requests
are tried again on the others at once. When its time is up it gets requests again; one success puts it
back for good. Only when every server is out does a request wait (`wait_seconds`), and the caller's retry
budget decides when to stop the run.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from visa.core.errors import VisaError

log = logging.getLogger("visa.balance")


@dataclass
class ServerState:
    url: str
    in_flight: int = 0
    requests: int = 0  # tries sent
    completed: int = 0  # tries that got a reply
    failures: int = 0  # tries that failed
    failed_in_row: int = 0
    down_until: float = 0.0  # monotonic time before which it gets no requests


class ServerPool:
    def __init__(
        self,
        urls: Sequence[str],
        backoff: float = 5.0,
        max_backoff: float = 120.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        if not urls:
            raise VisaError("url: an empty list of servers; give one URL or a list of them")
        if len(set(urls)) != len(urls):
            raise VisaError(f"url: the list names a server twice: {list(urls)}")
        self.urls = list(urls)
        self.servers = {url: ServerState(url) for url in urls}
        self.backoff, self.max_backoff, self._clock = backoff, max_backoff, clock

    def up(self) -> list[ServerState]:
        now = self._clock()
        return [s for s in self.servers.values() if s.down_until <= now]

    def acquire(self) -> str | None:
        """The server for the next try, counted as in flight; None when every server is out."""
        candidates = self.up()
        if not candidates:
            return None
        best = min(candidates, key=lambda s: (s.in_flight, s.requests))
        best.in_flight += 1
        best.requests += 1
        return best.url

    def release(self, url: str, ok: bool | None) -> None:
        """`ok`: the server answered (True), failed (False), or the try was cancelled (None)."""
        server = self.servers[url]
        server.in_flight -= 1
        if ok is None:
            return
        if ok:
            server.completed += 1
            if server.failed_in_row:
                log.info("server %s answers again", url)
            server.failed_in_row = 0
            return
        server.failures += 1
        if len(self.servers) == 1:
            return  # nowhere else to send its requests: the caller's retries and backoff decide
        if server.down_until > self._clock():
            return  # already out: the other requests it had in flight are failing too
        server.failed_in_row += 1
        out_for = min(self.max_backoff, self.backoff * 2 ** (server.failed_in_row - 1))
        log.warning("server %s failed; its requests go to the others for %.0f s", url, out_for)
        server.down_until = self._clock() + out_for

    def wait_seconds(self) -> float:
        """How long until the first server that is out may be tried again (0 if one is up)."""
        now = self._clock()
        return max(0.0, min(s.down_until for s in self.servers.values()) - now)

    def counts(self) -> dict[str, int]:
        """Replies per server, for metrics.json."""
        return {url: s.completed for url, s in self.servers.items()}
