"""The gallery's embeddings for the retrieve stage: from the results cache (small galleries, as always), from
the gallery store (`visa.cache.gallery`: large galleries, `retrieval.gallery_store`), or from a backbone that
brings its own pre-computed gallery embeddings (`PublishedGallery`, e.g. INQUIRE's published iNat24
embeddings).

The store is written shard by shard as the items are encoded (a progress bar with the rate and the time
left); a run that finds some shards written encodes only the others. In a sharded run (`shard.count=N`,
the SLURM and Ray launchers of docs/scaling.md) run shard i encodes the store shards s with s % N == i,
then waits for the others' shards as it waits for their cache results (`visa.method.shard`); a run shard
that died is made up for by the others after `shard.idle_seconds`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
from tqdm.auto import tqdm

from visa.backbones import Backbone, StreamingBackbone
from visa.cache import batched
from visa.cache.gallery import GalleryStore, StoredRows
from visa.cache.runner import StageStats
from visa.core.errors import VisaError
from visa.data import Item
from visa.method.keys import visual_keys
from visa.method.shard import Shard, wait_for_others

log = logging.getLogger("visa.method.gallery")


@runtime_checkable
class PublishedGallery(Protocol):
    """A backbone whose gallery embeddings already exist on disk (it encodes only the queries)."""

    def gallery_rows(self, items: Sequence[Item]) -> StoredRows:
        """The embeddings of `items`, row i for item i, memory-mapped."""
        ...


def open_store(
    cache_root: Any, backbone: Backbone, items: Sequence[Item], dtype: str, shard_size: int
) -> GalleryStore:
    """The gallery store of `items` under `backbone` (created empty when new)."""
    keys = visual_keys(backbone, items)
    return GalleryStore.open(cache_root, backbone.identity(), keys, [i.id for i in items], dtype, shard_size)


def encode_shards(
    store: GalleryStore,
    backbone: Backbone,
    items: Sequence[Item],
    shards: Sequence[int],
    progress: bool = True,
    desc: str = "encode_visual (gallery store)",
) -> int:
    """Encode the given shards of the store and write each as soon as it is complete; the items encoded."""
    stream = (
        backbone.stream_visual
        if isinstance(backbone, StreamingBackbone)
        else batched(lambda b: list(backbone.encode_visual(b).float().numpy()), backbone.batch_size)
    )
    todo = [n for n in shards if not store.shard_path(n).is_file()]
    total = sum(len(store.shard_rows(n)) for n in todo)
    done = 0
    with tqdm(total=total, desc=desc, unit="item", disable=not progress, dynamic_ncols=True) as bar:
        for n in todo:
            rows = store.shard_rows(n)
            part = [items[i] for i in rows]
            out: list[Any] = [None] * len(part)
            for index, embedding, *_cost in stream(part):  # a batched stream also yields each row's cost
                out[index] = embedding
                bar.update(1)
            store.write_shard(n, np.stack(out))
            done += len(part)
    return done


def stored_gallery(
    store: GalleryStore,
    backbone: Backbone,
    items: Sequence[Item],
    stats: StageStats,
    shard: Shard | None = None,
    progress: bool = True,
) -> StoredRows:
    """The complete store's rows, encoding what it lacks (a run shard: its own shards first, then it waits
    for the others'); `stats` gets the items encoded (computed) and found (cached)."""
    missing = store.missing()
    encoded = 0
    if missing and shard is not None and shard.active:
        encoded += encode_shards(
            store, backbone, items, [n for n in missing if n % shard.count == shard.index], progress
        )

        def fetch(keys: list[str]) -> dict[str, Any]:
            return {k: True for k in keys if store.shard_path(int(k)).is_file()}

        def compute(keys: list[str]) -> dict[str, Any]:
            nonlocal encoded
            encoded += encode_shards(store, backbone, items, [int(k) for k in keys], progress)
            return {k: True for k in keys}

        wait_for_others(shard, "encode_visual (gallery store)", [str(n) for n in missing], fetch, compute)
    elif missing:
        log.info(
            "gallery store %s: %d of %d shards to encode (%d items)",
            store.folder,
            len(missing),
            store.num_shards,
            sum(len(store.shard_rows(n)) for n in missing),
        )
        encoded += encode_shards(store, backbone, items, missing, progress)
    stats.computed += encoded
    stats.cached += len(items) - encoded
    return store.rows()


def check_store_items(items: Sequence[Item]) -> None:
    """The store holds media embeddings (encode_visual); a gallery of text items keeps the cache path."""
    text = [i for i in items if i.kind == "text"]
    if text:
        raise VisaError(
            f"retrieval.gallery_store=on: the gallery has {len(text)} text item(s) (first {text[0].id!r}); "
            "the store holds media embeddings only: use retrieval.gallery_store=off or auto for this dataset"
        )
