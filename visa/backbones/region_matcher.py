"""A region-feature matcher trained by `visa.train` (SGR or SAF; two checkpoints = SGRAF, the mean of their
similarities) as a VISA backbone. It is not a dual encoder: it scores (query, image) pairs jointly, so the
pipeline takes its pairwise path (`visa.method.pairwise`). Gallery images are read as rows of SCAN's
precomputed feature file, by gallery position; `visa.data.precomp.AnnotatedPrecompDataset` checks that they
line up."""

from __future__ import annotations

import os

import numpy as np
import torch

from visa.core.errors import VisaError
from visa.data import Item


def _fingerprint(path: str) -> dict:
    try:
        st = os.stat(path)
    except OSError as e:
        raise VisaError(f"backbone: {path} not found or unreadable: {e.strerror}") from None
    return {"path": os.path.abspath(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


class RegionMatcherBackbone:
    def __init__(
        self,
        checkpoints: list[str],
        features: str,
        vocab: str,
        device: str = "auto",
        batch_size: int = 100,
        item_chunk: int = 500,
        caption_chunk: int = 16,
    ):
        if not checkpoints:
            raise VisaError("backbone.checkpoints is empty; give the .ckpt of SGR and/or SAF from visa.train")
        self.checkpoints, self.features_path, self.vocab_path = list(checkpoints), features, vocab
        self.device_name, self.batch_size, self.item_chunk = device, batch_size, item_chunk
        self.caption_chunk = caption_chunk
        self._loaded = False

    def identity(self) -> dict:
        return {
            "class": "RegionMatcherBackbone",
            "checkpoints": [_fingerprint(p) for p in self.checkpoints],
            "features": _fingerprint(self.features_path),
            "vocab": _fingerprint(self.vocab_path),
        }

    def _load(self) -> None:
        """The matchers, each rebuilt from its checkpoint's own hyper-parameters and checked against the
        feature file and vocabulary given here."""
        if self._loaded:
            return
        from visa.vsl.module import check_fits, load_matcher
        from visa.vsl.text import Vocabulary

        auto = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(auto if self.device_name == "auto" else self.device_name)
        self.vocab = Vocabulary.load(self.vocab_path)
        self.features = np.load(self.features_path, mmap_mode="r")
        self.matchers = []
        for path in self.checkpoints:
            _fingerprint(path)
            module = load_matcher(path, self.device)
            check_fits(
                module.matcher, f"checkpoint {path}", f"backbone.features {self.features_path}",
                self.features.shape[1:], len(self.vocab),
            )  # fmt: skip
            module.matcher.caption_chunk = self.caption_chunk
            self.matchers.append(module)
        self._loaded = True

    @torch.no_grad()
    def score_pairs(self, texts: list[str], items: list[Item], indices: list[int]) -> torch.Tensor:
        """[len(texts), len(items)]: the (mean) similarity of each query with each image."""
        self._load()
        if indices and max(indices) >= self.features.shape[0]:
            raise VisaError(
                f"backbone.features {self.features_path} has {self.features.shape[0]} images; the gallery "
                f"has more. Use the feature file of the dataset's split, in the same order"
            )
        tokens = [torch.tensor(self.vocab.encode(t)) for t in texts]
        lengths = torch.tensor([len(t) for t in tokens])
        padded = torch.nn.utils.rnn.pad_sequence(tokens, batch_first=True).to(self.device)
        regions = torch.from_numpy(np.asarray(self.features[indices], dtype=np.float32)).to(self.device)
        sims = [
            m.similarity(m.encode_images(regions), m.encode_texts(padded, lengths), lengths).T
            for m in self.matchers
        ]
        return (torch.stack(sims).sum(0) / len(self.matchers)).float().cpu()
