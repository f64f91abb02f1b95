"""Dual encoders, each a class instantiated from `conf/backbone/<name>.yaml` that satisfies `Backbone`.

Constructors only store settings; weights load on first use, so a fully cached run loads no model.

A backbone may declare what it embeds in a class attribute `modalities`, a set of "text", "image", "video",
"image+text", "video+text" (composed queries and captioned items are media with text and reach
`encode_visual` as items whose `text` is set); without it, text queries over images and videos, as
before. `visa.data.check_modalities` reads it from the class before anything loads.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    import torch

    from visa.data import Item


@runtime_checkable
class Backbone(Protocol):
    """What the pipeline needs of a backbone."""

    batch_size: int  # texts or items per encode call

    def identity(self) -> dict:
        """Everything that changes the embeddings (the cache key)."""
        ...

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """L2-normalised embeddings [n, d]."""
        ...

    def encode_visual(self, items: list[Item]) -> torch.Tensor:
        """L2-normalised embeddings [n, d]."""
        ...


@runtime_checkable
class StreamingBackbone(Backbone, Protocol):
    """Optional ability, checked by the pipeline with isinstance (`FabricEncoding`): the gallery's
    embeddings as (index, row) pairs, e.g. encoded data-parallel over several devices."""

    def stream_visual(self, items: list[Item]) -> Iterator[tuple[int, Any]]: ...
