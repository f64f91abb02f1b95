"""What identifies an input in the cache keys of the method's stages."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from visa.backbones import Backbone
from visa.cache import make_key
from visa.core.errors import VisaError
from visa.data import Item, Query


def item_fingerprint(item: Item) -> dict:
    """What identifies an item's content in cache keys: its path, size and modification time, and its text
    when it carries one (a media item without text keeps the key it always had)."""
    if item.kind == "text":
        return {"text": item.text}
    try:
        st = os.stat(item.path)
    except OSError as e:
        raise VisaError(
            f"{item.kind} not found or unreadable: {item.path} (item {item.id!r}): {e.strerror}"
        ) from e
    fingerprint: dict[str, Any] = {
        "path": os.path.abspath(item.path),
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
    }
    if item.text is not None:
        fingerprint["text"] = item.text
    return fingerprint


def visual_keys(backbone: Backbone, items: Sequence[Item]) -> list[str]:
    """The encode_visual stage's cache keys of `items`."""
    identity = backbone.identity()
    return [make_key("encode_visual", identity, item_fingerprint(i)) for i in items]


def with_reference(key: Any, query: Query | None) -> Any:
    """A cache key's content, with the reference's media for a composed query (text queries keep the key
    they always had)."""
    if query is None or query.reference is None:
        return key
    return [key, {"reference": item_fingerprint(query.reference)}]
