"""SCAN's precomputed data: `<root>/<name>/{split}_ims.npy` (images x regions x feature dim, float32,
memory-mapped) with `{split}_caps.txt` (5 captions per image, in image order), and the vocabulary json
`<root>/vocab/<name>_vocab.json`. Splits: train, dev, test, testall (COCO's 5K test)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import lightning as L
import numpy as np
import scipy.sparse as sp
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from visa.core.errors import VisaError
from visa.vsl.text import Vocabulary, caption_tfidf, image_semantics, read_captions

CAPTIONS_PER_IMAGE = 5


class PrecompSplit(Dataset):
    """One split: item i is caption i with the region features of its image (i // 5)."""

    def __init__(self, folder: str | Path, split: str, vocab: Vocabulary, max_images: int | None = None):
        folder = Path(folder)
        ims, caps = folder / f"{split}_ims.npy", folder / f"{split}_caps.txt"
        for path in (ims, caps):
            if not path.is_file():
                raise VisaError(
                    f"{path} not found; SCAN's layout is <root>/<name>/{{split}}_ims.npy + _caps.txt"
                )
        try:
            features = np.load(ims, mmap_mode="r")  # the features stay on disk; items are read on demand
        except ValueError as e:
            raise VisaError(f"{ims} is not a .npy array: {e}") from None
        if features.ndim != 3 or features.dtype.kind != "f":
            raise VisaError(
                f"{ims} has shape {features.shape} ({features.dtype}); expected images x regions x dim floats"
            )
        captions = read_captions(caps)
        if len(captions) == features.shape[0]:
            # The rkiros layout repeats each image's row for each of its 5 captions.
            self.image_rows = np.arange(0, len(captions), CAPTIONS_PER_IMAGE)
        elif len(captions) == CAPTIONS_PER_IMAGE * features.shape[0]:
            self.image_rows = np.arange(features.shape[0])
        else:
            raise VisaError(
                f"{caps} has {len(captions)} captions for {features.shape[0]} images in {ims}; "
                f"expected {CAPTIONS_PER_IMAGE} per image, in image order"
            )
        if max_images is not None:  # SGRAF validates on the first 1,000 dev images (5,000 captions)
            self.image_rows = self.image_rows[:max_images]
            captions = captions[: CAPTIONS_PER_IMAGE * len(self.image_rows)]
        self.split, self.features, self.captions, self.vocab = split, features, captions, vocab
        self.tokens = [torch.tensor(vocab.encode(c), dtype=torch.long) for c in captions]

    @property
    def num_images(self) -> int:
        return len(self.image_rows)

    @property
    def feature_shape(self) -> tuple[int, int]:
        return tuple(self.features.shape[1:])

    def image(self, index: int) -> torch.Tensor:
        return torch.from_numpy(np.array(self.features[self.image_rows[index]], dtype=np.float32))

    def __len__(self) -> int:
        return len(self.captions)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, int, int]:
        image_index = index // CAPTIONS_PER_IMAGE
        return self.image(image_index), self.tokens[index], index, image_index


@dataclass
class Batch:
    images: torch.Tensor  # [B, regions, dim]
    captions: torch.Tensor  # [B, max length] token ids, 0-padded
    lengths: torch.Tensor  # [B]
    caption_ids: torch.Tensor  # [B] caption index in the split
    image_ids: torch.Tensor  # [B] image index in the split
    image_semantics: torch.Tensor | None = None  # [B, B] VSL's image-image TF-IDF similarity


class Collate:
    """Pads captions; with `semantics` (VSL's training split) adds the batch's image-image similarity."""

    def __init__(self, semantics: sp.csr_matrix | None = None):
        self.semantics = semantics

    def __call__(self, items: list[tuple[torch.Tensor, torch.Tensor, int, int]]) -> Batch:
        images, tokens, caption_ids, image_ids = zip(*items)
        lengths = torch.tensor([len(t) for t in tokens])
        captions = torch.zeros(len(tokens), int(lengths.max()), dtype=torch.long)
        for i, t in enumerate(tokens):
            captions[i, : len(t)] = t
        sim = None
        if self.semantics is not None:
            rows = self.semantics[list(image_ids)]
            sim = torch.from_numpy((rows @ rows.T).toarray().astype(np.float32))
        return Batch(
            torch.stack(images), captions, lengths, torch.tensor(caption_ids), torch.tensor(image_ids), sim
        )


class EpochShuffle(Sampler[int]):
    """A new permutation each epoch, drawn from (seed, epoch) alone: a run resumed from a checkpoint sees
    the same batches as an uninterrupted one (Lightning calls set_epoch; under DDP it wraps this sampler)."""

    def __init__(self, size: int, seed: int = 0):
        self.size, self.seed, self.epoch = size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.size, generator=generator).tolist())

    def __len__(self) -> int:
        return self.size


class PrecompDataModule(L.LightningDataModule):
    """SCAN's precomputed features for training (train), validation (dev) and test (test or testall)."""

    def __init__(
        self,
        root: str,
        name: str,
        vocab_path: str | None = None,
        batch_size: int = 128,
        eval_batch_size: int = 100,
        num_workers: int = 0,
        val_split: str = "dev",
        val_images: int | None = 1000,
        test_split: str = "test",
        semantics: bool = True,
        pin_memory: bool = False,
        seed: int = 0,
        protocols: list[str] | None = None,
    ):
        super().__init__()
        self.folder = Path(root) / name
        self.name = name
        if not self.folder.is_dir():
            raise VisaError(
                f"data folder {self.folder} not found; datamodule.root must hold {name}/ (SCAN's layout)"
            )
        self.vocab_path = Path(vocab_path) if vocab_path else Path(root) / "vocab" / f"{name}_vocab.json"
        self.vocab = Vocabulary.load(self.vocab_path)
        self.batch_size, self.eval_batch_size, self.num_workers = batch_size, eval_batch_size, num_workers
        self.val_split, self.val_images, self.test_split = val_split, val_images, test_split
        self.semantics, self.pin_memory, self.seed = semantics, pin_memory, seed
        self.protocols = list(protocols or ["1k"])  # how the papers evaluate this dataset
        self.splits: dict[str, PrecompSplit] = {}
        self.train_semantics: sp.csr_matrix | None = None

    def split(self, name: str, max_images: int | None = None) -> PrecompSplit:
        key = f"{name}:{max_images}"
        if key not in self.splits:
            self.splits[key] = PrecompSplit(self.folder, name, self.vocab, max_images)
        return self.splits[key]

    @property
    def feature_shape(self) -> tuple[int, int]:
        return self.split(self.test_split).feature_shape

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit"):
            train = self.split("train")
            if self.semantics and self.train_semantics is None:
                self.train_semantics = image_semantics(caption_tfidf(train.captions))
            self.split(self.val_split, self.val_images)

    def _loader(self, data: PrecompSplit, batch_size: int, shuffle: bool, collate: Collate) -> DataLoader:
        return DataLoader(
            data,
            batch_size=batch_size,
            sampler=EpochShuffle(len(data), self.seed) if shuffle else None,
            num_workers=self.num_workers,
            collate_fn=collate,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
            # Its own generator: making an iterator draws a worker seed, which must not shift the global
            # random state (dropout) that a resumed run restores.
            generator=torch.Generator().manual_seed(self.seed),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.split("train"), self.batch_size, True, Collate(self.train_semantics))

    def val_dataloader(self) -> DataLoader:
        return self._loader(
            self.split(self.val_split, self.val_images), self.eval_batch_size, False, Collate()
        )

    def eval_dataloader(self, split: str) -> DataLoader:
        return self._loader(self.split(split), self.eval_batch_size, False, Collate())
