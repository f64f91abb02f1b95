"""A tiny deterministic backbone for gallery store tests that can die like a killed worker: importable by
the worker processes of Ray and submitit (tests/ on their PYTHONPATH)."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import torch

from visa.data import Item

DIM = 8


@dataclass
class MarkedBackbone:
    """Embeddings from each item's id. With `die_marker` an existing file: the first process to encode a
    batch after `die_after` items of its own removes the file and exits at once (os._exit, as SIGKILL would
    end it), so exactly one worker dies mid-way."""

    batch_size: int = 2
    die_marker: str | None = None
    die_after: int = 2
    encoded: int = 0

    def identity(self) -> dict:
        return {"model": "marked", "dim": DIM}

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        return torch.stack([row(t) for t in texts])

    def encode_visual(self, items: list[Item]) -> torch.Tensor:
        if self.die_marker and self.encoded >= self.die_after:
            try:
                os.remove(self.die_marker)
            except FileNotFoundError:
                pass
            else:
                os._exit(9)
        self.encoded += len(items)
        return torch.stack([row(i.id) for i in items])


def row(text: str) -> torch.Tensor:
    seed = int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)
    v = torch.randn(DIM, generator=torch.Generator().manual_seed(seed))
    return v / v.norm()
