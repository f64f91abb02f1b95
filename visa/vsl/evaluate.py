"""Evaluation as SCAN / SGRAF report it: encode a split once, score every image x caption pair in shards,
then Recall@K in both directions. Protocols: `1k` (the whole split: Flickr30K test), `5fold1k` (COCO 1K:
the mean over the 5 folds of 1,000 images of testall), `5k` (COCO 5K: all of testall)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from torch.utils.data import DataLoader

from visa.vsl.data import CAPTIONS_PER_IMAGE, PrecompSplit

SimilarityFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
PROTOCOLS = ("1k", "5fold1k", "5k")


@dataclass
class Encoded:
    """A split encoded by one matcher: images [N, R, d], captions [5N, L, d] (0-padded), lengths [5N]."""

    images: torch.Tensor
    captions: torch.Tensor
    lengths: torch.Tensor

    def fold(self, start: int, stop: int) -> Encoded:
        """Images start..stop and their captions."""
        c0, c1 = start * CAPTIONS_PER_IMAGE, stop * CAPTIONS_PER_IMAGE
        return Encoded(self.images[start:stop], self.captions[c0:c1], self.lengths[c0:c1])


class Encoder(Protocol):
    """What evaluation needs of a matcher (`RegionMatcher`, `RegionMatcherModule`)."""

    def encode_images(self, regions: torch.Tensor) -> torch.Tensor: ...

    def encode_texts(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor: ...


@torch.no_grad()
def encode_split(model: Encoder, loader: DataLoader, device: torch.device | str = "cpu") -> Encoded:
    """Every image once (from the first of its captions) and every caption, in split order."""
    data = loader.dataset
    if not isinstance(data, PrecompSplit):
        raise TypeError(f"encode_split reads a PrecompSplit, not {type(data).__name__}")
    images: torch.Tensor | None = None
    captions: torch.Tensor | None = None
    max_len = max(len(t) for t in data.tokens)
    lengths = torch.zeros(len(data), dtype=torch.long)
    for batch in loader:
        img = model.encode_images(batch.images.to(device)).cpu()
        cap = model.encode_texts(batch.captions.to(device), batch.lengths.to(device)).cpu()
        if images is None or captions is None:
            images = torch.zeros(data.num_images, *img.shape[1:])
            captions = torch.zeros(len(data), max_len, cap.shape[-1])
        first = batch.caption_ids % CAPTIONS_PER_IMAGE == 0
        images[batch.image_ids[first]] = img[first]
        captions[batch.caption_ids, : cap.shape[1]] = cap
        lengths[batch.caption_ids] = batch.lengths
    if images is None or captions is None:
        raise ValueError(f"split {data.split} is empty")
    return Encoded(images, captions, lengths)


@torch.no_grad()
def shard_similarities(
    similarity: SimilarityFn, enc: Encoded, shard_size: int | None = 100, device: torch.device | str = "cpu"
) -> np.ndarray:
    """[N images, 5N captions] float32. Pairs are scored in blocks of shard_size images x shard_size
    captions, so working memory is one block whatever the split size; shard_size=None scores all at once."""
    n_img, n_cap = enc.images.shape[0], enc.captions.shape[0]
    step_i, step_c = (shard_size or n_img), (shard_size or n_cap)
    sims = np.zeros((n_img, n_cap), dtype=np.float32)
    for i in range(0, n_img, step_i):
        im = enc.images[i : i + step_i].to(device)
        for c in range(0, n_cap, step_c):
            lens = enc.lengths[c : c + step_c]
            cap = enc.captions[c : c + step_c, : int(lens.max())].to(device)
            sims[i : i + step_i, c : c + step_c] = similarity(im, cap, lens.to(device)).float().cpu().numpy()
    return sims


def i2t_ranks(sims: np.ndarray) -> np.ndarray:
    """For each image, the best rank (0-based) of its 5 captions among all captions."""
    n_img = sims.shape[0]
    gt = sims.reshape(n_img, n_img, CAPTIONS_PER_IMAGE)[np.arange(n_img), np.arange(n_img)]  # [N, 5]
    best = gt.max(1)
    return (sims > best[:, None]).sum(1)


def t2i_ranks(sims: np.ndarray) -> np.ndarray:
    """For each caption, the rank (0-based) of its image among all images."""
    n_img, n_cap = sims.shape
    owner = np.arange(n_cap) // CAPTIONS_PER_IMAGE
    gt = sims[owner, np.arange(n_cap)]
    return (sims > gt[None, :]).sum(0)


def recalls(sims: np.ndarray, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """i2t/R@k, t2i/R@k (percent) and rsum, their sum over k = 1, 5, 10."""
    out: dict[str, float] = {}
    for direction, ranks in (("i2t", i2t_ranks(sims)), ("t2i", t2i_ranks(sims))):
        for k in ks:
            out[f"{direction}/R@{k}"] = 100.0 * float((ranks < k).mean())
    out["rsum"] = sum(out[f"{d}/R@{k}"] for d in ("i2t", "t2i") for k in ks)
    return out


def evaluate_protocol(
    similarity_of: Callable[[int, int], np.ndarray], num_images: int, protocol: str
) -> dict[str, float]:
    """Recalls of one protocol. `similarity_of(start, stop)` is the similarity matrix of images
    start..stop and their captions (one matcher, or the mean of SGR's and SAF's for SGRAF)."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol={protocol!r}: expected one of {', '.join(PROTOCOLS)}")
    if protocol in ("1k", "5k"):
        return recalls(similarity_of(0, num_images))
    if num_images < 5000:
        raise ValueError(f"protocol 5fold1k needs 5,000 images (COCO testall); this split has {num_images}")
    folds = [recalls(similarity_of(f * 1000, (f + 1) * 1000)) for f in range(5)]
    return {key: float(np.mean([f[key] for f in folds])) for key in folds[0]}
