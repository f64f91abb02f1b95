"""Text re-rankers, each a class instantiated from `conf/scorer/<name>.yaml` that satisfies `Scorer`.

Constructors only store settings; weights load on first use.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable


@runtime_checkable
class Scorer(Protocol):
    """What the pipeline needs of a scorer."""

    batch_size: int  # pairs per score call

    def identity(self) -> dict:
        """Everything that changes the scores (the cache key)."""
        ...

    def score(self, pairs: list[tuple[str, str]]) -> list[float]:
        """Raw relevance of each (query, passage) pair, higher is better."""
        ...


# Every scorer here is also `visa.core.abilities.Counting`: it counts the pairs whose query or passage it cut
# to its token budgets (truncated_queries, truncated_passages), reported as score/<name>.
