"""Any image backbone as a video backbone: a video's embedding is the mean of its frames' embeddings.

Frames are sampled uniformly (`visa.data.video.sample_uniform`). The inner backbone embeds them with its
`encode_images(list[PIL.Image]) -> Tensor` when it has one; otherwise the frames are written to a temporary
folder as PNG files and passed to its `encode_visual` as image items, so every backbone works.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from visa.data import Item
from visa.data.video import sample_uniform


class FramePooledBackbone:
    def __init__(self, image_backbone: Any, num_frames: int = 8, batch_size: int = 8):
        self.image_backbone = image_backbone  # instantiated by Hydra from the nested config's _target_
        self.num_frames = num_frames
        self.batch_size = batch_size

    def identity(self) -> dict:
        return {
            "backbone": "frame_pooled",
            "image": self.image_backbone.identity(),
            "num_frames": self.num_frames,
        }

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        return self.image_backbone.encode_text(texts)

    def _encode_frames(self, frames: list[Image.Image]) -> torch.Tensor:
        encode_images = getattr(self.image_backbone, "encode_images", None)
        if encode_images is not None:
            return encode_images(frames)
        with tempfile.TemporaryDirectory(prefix="visa-frames-") as tmp:
            items = []
            for i, frame in enumerate(frames):
                path = Path(tmp) / f"{i:04d}.png"
                frame.save(path)
                items.append(Item(id=f"frame{i}", path=str(path), kind="image"))
            return self.image_backbone.encode_visual(items)

    def encode_visual(self, items: list[Item]) -> torch.Tensor:
        out: list[torch.Tensor | None] = [None] * len(items)
        images = [(i, item) for i, item in enumerate(items) if item.kind != "video"]
        if images:
            for (i, _), emb in zip(
                images, self.image_backbone.encode_visual([it for _, it in images]), strict=True
            ):
                out[i] = emb
        for i, item in enumerate(items):
            if item.kind == "video":
                out[i] = self._encode_frames(sample_uniform(item.path, self.num_frames)).float().mean(0)
        return torch.nn.functional.normalize(torch.stack([e for e in out if e is not None]).float(), dim=-1)
