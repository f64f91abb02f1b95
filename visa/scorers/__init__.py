"""Text re-rankers. A scorer is a class with this interface, instantiated from `conf/scorer/<name>.yaml`:

    identity() -> dict
    score(list[tuple[query, passage]]) -> list[float]   # raw relevance logits, higher is better
    batch_size: int

Constructors only store settings; weights load on first use.
"""
