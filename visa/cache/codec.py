"""What the cache stores and under which key: the content address of a stage result (`make_key`) and the
byte encoding of values (JSON, or numpy arrays in .npy), shared by every store layout."""

from __future__ import annotations

import hashlib
import io
import json
from typing import Any

import numpy as np


def model_label(identity: Any) -> str:
    """A short name for the model behind a stage's results (`python -m visa.cache` groups by it)."""
    if isinstance(identity, dict):
        for field in ("model", "model_path", "name", "backbone", "generator", "scorer"):
            if isinstance(identity.get(field), str):
                return identity[field]
    return str(identity)[:80]


def make_key(stage: str, identity: Any, inputs: Any) -> str:
    """SHA-256 over a canonical JSON encoding of (stage, model identity, inputs)."""
    blob = json.dumps([stage, identity, inputs], sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def encode_value(value: Any) -> bytes:
    if isinstance(value, np.ndarray):
        buf = io.BytesIO()
        np.save(buf, value, allow_pickle=False)
        return b"N" + buf.getvalue()
    return b"J" + json.dumps(value, ensure_ascii=False).encode("utf-8")


def decode_value(blob: bytes) -> Any:
    if blob[:1] == b"N":
        return np.load(io.BytesIO(blob[1:]), allow_pickle=False)
    return json.loads(blob[1:].decode("utf-8"))
