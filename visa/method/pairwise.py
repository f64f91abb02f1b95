"""The retrieve stage's pairwise path, for matchers that are not dual encoders (cross-attention matchers such
as SGR / SAF score a (query, item) pair jointly, so there is no embedding to search).

Every query x item pair is scored, in blocks of `batch_size` queries x `item_chunk` items, keeping only a
running top-`depth` per query: memory is one block plus the top lists, whatever the gallery size. Each query's
top list is a cached stage result ("retrieve_pairs"), written as its query batch finishes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch

if TYPE_CHECKING:
    from visa.data import Item


@runtime_checkable
class PairwiseBackbone(Protocol):
    """What the pipeline needs of a pairwise matcher (found by its `score_pairs`)."""

    batch_size: int  # queries per block
    item_chunk: int  # gallery items per block

    def identity(self) -> dict: ...

    def score_pairs(self, texts: list[str], items: list[Item], indices: list[int]) -> torch.Tensor:
        """Scores [len(texts), len(items)]; `indices` are the items' positions in the gallery (matchers
        with precomputed gallery features read their rows by position)."""
        ...


ScoreBlock = Callable[[list[str], list["Item"], list[int]], torch.Tensor]


@torch.no_grad()
def pairwise_topk_stream(
    score_block: ScoreBlock, gallery: list[Item], depth: int, query_batch: int, item_chunk: int
) -> Callable[[list[str]], Iterator[tuple[int, tuple[list[float], list[int]]]]]:
    """A stage stream: for each query text, (top-`depth` scores, their gallery indices), best first."""
    depth = min(depth, len(gallery))

    def stream(texts: list[str]) -> Iterator[tuple[int, tuple[list[float], list[int]]]]:
        for q0 in range(0, len(texts), query_batch):
            batch = texts[q0 : q0 + query_batch]
            best_s = torch.full((len(batch), 0), float("-inf"))
            best_i = torch.zeros((len(batch), 0), dtype=torch.long)
            for g0 in range(0, len(gallery), item_chunk):
                indices = list(range(g0, min(g0 + item_chunk, len(gallery))))
                block = score_block(batch, gallery[g0 : g0 + item_chunk], indices).float().cpu()
                s = torch.cat([best_s, block], dim=1)
                i = torch.cat([best_i, torch.arange(g0, g0 + block.shape[1]).expand(len(batch), -1)], dim=1)
                best_s, order = s.topk(min(depth, s.shape[1]), dim=1)
                best_i = i.gather(1, order)
            for j in range(len(batch)):
                yield q0 + j, (best_s[j].tolist(), best_i[j].tolist())

    return stream


def gallery_key(gallery: list[Item]) -> str:
    """Identifies the gallery (ids and order) in a query's cache key."""
    digest = hashlib.sha256()
    for item in gallery:
        digest.update(item.id.encode() + b"\0")
    return digest.hexdigest()


def stack_topk(results: list[tuple[list[float], list[int]]]) -> tuple[torch.Tensor, torch.Tensor]:
    scores = torch.tensor([r[0] for r in results], dtype=torch.float32)
    indices = torch.tensor([r[1] for r in results], dtype=torch.long)
    return scores, indices


def retrieve_pairwise(stage: Callable[..., list[Any]], make_key, backbone, texts, gallery, depth: int):
    """(scores, indices) [queries, depth] through the cached stage `retrieve_pairs`."""
    ident, gkey = backbone.identity(), gallery_key(gallery)
    keys = [make_key("retrieve_pairs", ident, [t, gkey, depth]) for t in texts]
    stream = pairwise_topk_stream(
        backbone.score_pairs, gallery, depth, backbone.batch_size, backbone.item_chunk
    )
    return stack_topk(stage("retrieve_pairs", keys, texts, stream, ident))
