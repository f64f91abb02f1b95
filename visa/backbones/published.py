"""Pre-computed gallery embeddings published with a benchmark, with the text tower of the model that made
them: `backbone=inquire_published` reads INQUIRE's iNat24 image embeddings (`inat24/embs/<model>/`,
clip-retrieval's layout: `img_emb/img_emb_*.npy` and `metadata/*.parquet`, both in sorted order)
memory-mapped, and encodes only the queries, with `text` (the matching CLIP model's backbone config). So a
five-million-image first stage needs no image encoding at all.

The gallery must be the embeddings' own image list (`dataset=inquire_fullrank dataset.gallery=embeddings`,
with `dataset.embeddings` the same folder); the run stops with one line otherwise.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from visa.cache.gallery import StoredRows
from visa.core.errors import VisaError
from visa.data import Item
from visa.data.inquire_fullrank import image_key, published_arrays, published_image_paths


class PublishedEmbeddings:
    """Gallery rows from a published embeddings folder, queries from the `text` backbone."""

    modalities = frozenset({"text", "image"})

    def __init__(self, embeddings: str, text: Any):
        self.folder = Path(embeddings).expanduser()
        if not hasattr(text, "encode_text"):
            raise VisaError(
                "backbone.text must be a backbone config (with _target_) whose text tower matches the "
                f"published embeddings in {self.folder}, e.g. visa.backbones.open_clip.OpenClipBackbone"
            )
        self.text = text
        self.batch_size = int(getattr(text, "batch_size", 64))

    def identity(self) -> dict:
        return {
            "model": f"published:{self.folder.name}",
            "embeddings": str(self.folder),
            "text": self.text.identity(),
        }

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        return self.text.encode_text(texts)

    def encode_visual(self, items: list[Item]) -> torch.Tensor:
        raise VisaError(
            f"backbone=inquire_published encodes no images: the gallery's embeddings come from {self.folder} "
            "(dataset.gallery=embeddings); composed queries and other galleries need an image backbone"
        )

    def gallery_rows(self, items: list[Item]) -> StoredRows:
        paths = published_image_paths(self.folder)
        if len(paths) != len(items) or any(image_key(p) != image_key(i.id) for p, i in zip(paths, items)):
            raise VisaError(
                f"the gallery ({len(items)} items) is not the image list of the published embeddings in "
                f"{self.folder} ({len(paths)} images); use dataset.gallery=embeddings with "
                "dataset.embeddings naming this folder"
            )
        rows = StoredRows(published_arrays(self.folder))
        if rows.shape[0] != len(paths):
            raise VisaError(
                f"{self.folder}: img_emb/*.npy hold {rows.shape[0]} rows and metadata/*.parquet {len(paths)} "
                "images; the two must match row for row"
            )
        return rows

    def close(self) -> None:
        close = getattr(self.text, "close", None)
        if callable(close):
            close()
