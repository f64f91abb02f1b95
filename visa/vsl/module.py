"""The Lightning module of the region matchers (SGR, SAF), with or without the Visual Semantic Loss."""

from __future__ import annotations

import inspect
import pickle
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from visa.core.errors import VisaError
from visa.vsl.data import CAPTIONS_PER_IMAGE, Batch, PrecompSplit
from visa.vsl.evaluate import Encoded, recalls, shard_similarities
from visa.vsl.losses import triplet_ranking_loss, visual_semantic_loss
from visa.vsl.models import RegionMatcher

# The settings a checkpoint's `matcher` may hold: RegionMatcher's keyword parameters, in order.
MATCHER_SETTINGS = tuple(p for p in inspect.signature(RegionMatcher).parameters if p != "vocab_size")


class RegionMatcherModule(L.LightningModule):
    """Trains SGR or SAF as SGRAF does (Adam, lr x 0.1 every `lr_update` epochs, hardest-negative triplet
    loss), plus VSL when `vsl_weight` > 0; validates by rsum (R@1+5+10, both directions) on the dev split.
    `matcher` holds `RegionMatcher`'s settings (module, img_dim, num_regions, ...; its defaults otherwise);
    all of this is saved in the checkpoint, from which `load_matcher` rebuilds the module."""

    def __init__(
        self,
        vocab_size: int,
        matcher: dict[str, Any] | None = None,
        lr: float = 2e-4,
        lr_update: int = 15,
        lr_decay: float = 0.1,
        margin: float = 0.2,
        max_violation: bool = True,
        vsl_weight: float = 0.0,
        vsl_temperature: float = 0.001,
        vsl_convention: str = "code",
        shard_size: int = 100,
    ):
        super().__init__()
        self.save_hyperparameters()
        settings = dict(matcher or {})
        unknown = sorted(set(settings) - set(MATCHER_SETTINGS))
        if unknown:
            raise VisaError(
                f"matcher.{unknown[0]} is not a setting of visa.vsl.models.RegionMatcher; valid keys: "
                f"{', '.join(MATCHER_SETTINGS)}"
            )
        self.matcher = RegionMatcher(vocab_size, **settings)
        self.lr, self.lr_update, self.lr_decay = lr, lr_update, lr_decay
        self.margin, self.max_violation = margin, max_violation
        self.vsl_weight, self.vsl_temperature = vsl_weight, vsl_temperature
        self.vsl_convention = vsl_convention
        self.shard_size = shard_size
        self._val: dict[str, list[torch.Tensor]] = {}
        self._resume_rng: dict[str, Any] | None = None

    # --- the matcher's interface, used by evaluation and the VISA backbone ---
    def encode_images(self, regions: torch.Tensor) -> torch.Tensor:
        return self.matcher.encode_images(regions)

    def encode_texts(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.matcher.encode_texts(tokens, lengths)

    def similarity(self, images: torch.Tensor, captions: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.matcher.similarity(images, captions, lengths)

    # --- training ---
    def losses(self, batch: Batch) -> dict[str, torch.Tensor]:
        scores = self.matcher(batch.images, batch.captions, batch.lengths)
        out = {"triplet": triplet_ranking_loss(scores, self.margin, self.max_violation)}
        loss = out["triplet"]
        if self.vsl_weight > 0:
            if batch.image_semantics is None:
                raise ValueError("VSL needs the batch's image semantics: set datamodule.semantics=true")
            out["vsl"] = visual_semantic_loss(
                scores, batch.image_semantics, self.vsl_weight, self.vsl_temperature, self.vsl_convention
            )
            loss = loss + out["vsl"]
        out["loss"] = loss
        return out

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        losses = self.losses(batch)
        size = batch.images.shape[0]
        self.log("train/loss", losses["loss"], prog_bar=True, batch_size=size)
        for name in ("triplet", "vsl"):
            if name in losses:
                self.log(f"train/{name}", losses[name], batch_size=size)
        return losses["loss"]

    def configure_optimizers(self) -> Any:  # an optimizer and its scheduler, as Lightning takes them
        optimizer = torch.optim.Adam(self.parameters(), lr=self.lr)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, self.lr_update, self.lr_decay)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}

    # --- exact resumption: the random state (dropout) continues where the checkpoint left it ---
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["rng_state"] = {"torch": torch.get_rng_state()}  # tensors only: weights_only loading
        if torch.cuda.is_available():
            checkpoint["rng_state"]["cuda"] = torch.cuda.get_rng_state_all()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self._resume_rng = checkpoint.get("rng_state")

    def on_train_epoch_start(self) -> None:
        # Before the epoch's data iterator is made (it draws a seed from the same generator).
        state = self._resume_rng
        if state is not None:
            torch.set_rng_state(state["torch"])
            if "cuda" in state and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(state["cuda"])
            self._resume_rng = None

    # --- validation: rsum on the dev split, computed once all of it is encoded ---
    def on_validation_epoch_start(self) -> None:
        self._val = {"images": [], "image_ids": [], "captions": [], "caption_ids": [], "lengths": []}

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        first = batch.caption_ids % CAPTIONS_PER_IMAGE == 0
        self._val["images"].append(self.encode_images(batch.images[first]))
        self._val["image_ids"].append(batch.image_ids[first])
        self._val["captions"].append(self.encode_texts(batch.captions, batch.lengths))
        self._val["caption_ids"].append(batch.caption_ids)
        self._val["lengths"].append(batch.lengths)

    def _gather_validation(self) -> Encoded:
        """The whole dev split's embeddings on every process (summed over processes, so that each
        DDP rank's share lands in place; DistributedSampler's repeated items are divided out)."""
        loader = self.trainer.val_dataloaders
        data = loader.dataset if isinstance(loader, DataLoader) else None
        if not isinstance(data, PrecompSplit):
            raise TypeError(f"validation expects one DataLoader over a PrecompSplit, not {loader!r}")
        n_img, n_cap, max_len = data.num_images, len(data), max(len(t) for t in data.tokens)
        v = self._val
        dim_r, dim_e = v["images"][0].shape[1], v["images"][0].shape[2]
        images = torch.zeros(n_img, dim_r, dim_e, device=self.device)
        captions = torch.zeros(n_cap, max_len, dim_e, device=self.device)
        lengths = torch.zeros(n_cap, device=self.device)
        seen_img = torch.zeros(n_img, device=self.device)
        seen_cap = torch.zeros(n_cap, device=self.device)
        for img, ids in zip(v["images"], v["image_ids"]):
            images[ids] += img
            seen_img[ids] += 1
        for cap, ids, lens in zip(v["captions"], v["caption_ids"], v["lengths"]):
            captions[ids, : cap.shape[1]] += cap
            lengths[ids] += lens.to(lengths.dtype)
            seen_cap[ids] += 1
        if self.trainer.world_size > 1:
            images, captions, lengths, seen_img, seen_cap = (
                self.trainer.strategy.reduce(t, reduce_op="sum")
                for t in (images, captions, lengths, seen_img, seen_cap)
            )
        images /= seen_img.clamp(min=1)[:, None, None]
        captions /= seen_cap.clamp(min=1)[:, None, None]
        lengths = (lengths / seen_cap.clamp(min=1)).round().long()
        return Encoded(images, captions, lengths)

    def on_validation_epoch_end(self) -> None:
        if not self._val.get("images"):
            return
        enc = self._gather_validation()
        sims = shard_similarities(self.similarity, enc, self.shard_size, self.device)
        metrics = recalls(np.asarray(sims))
        for key, value in metrics.items():
            self.log(f"val/{key}", value, prog_bar=key in ("rsum", "t2i/R@1"), sync_dist=False)
        self._val = {}


def load_matcher(path: str | Path, device: torch.device | str = "cpu") -> RegionMatcherModule:
    """A trained matcher, in eval mode on `device`, rebuilt from the hyper-parameters its checkpoint holds
    (so evaluating it needs none of the training's settings). Checkpoints written before the matcher's
    settings were nested under `matcher` (0.1.0) are read too."""
    path = Path(path)
    if not path.is_file():
        raise VisaError(f"checkpoint {path} not found; give a .ckpt written by visa.train")
    try:
        checkpoint = torch.load(path, map_location=device, weights_only=True)
        hparams, state = dict(checkpoint["hyper_parameters"]), checkpoint["state_dict"]
    except (OSError, RuntimeError, EOFError, KeyError, TypeError, pickle.UnpicklingError) as e:
        first = (str(e).splitlines() or [""])[0]
        raise VisaError(
            f"{path} is not a checkpoint written by visa.train ({type(e).__name__}: {first})"
        ) from None
    flat = {key: hparams.pop(key) for key in list(hparams) if key in MATCHER_SETTINGS}
    if flat:
        hparams["matcher"] = {**flat, **(hparams.get("matcher") or {})}
    module = RegionMatcherModule(**hparams)
    module.load_state_dict(state)
    return module.to(device).eval()


def check_fits(
    matcher: RegionMatcher, source: str, data: str, shape: tuple[int, ...], vocab_size: int
) -> None:
    """Stops with one line when `data`'s features (`shape` of one image: regions, dim) or vocabulary size
    are not the ones the matcher takes (as `source` set it: its config, or the checkpoint it was saved in)."""
    if tuple(shape) != (matcher.num_regions, matcher.img_dim):
        size = f"{shape[0]} regions x {shape[1]} dims" if len(shape) == 2 else f"of shape {tuple(shape)}"
        raise VisaError(
            f"{data}: features are {size}, but {source} has num_regions={matcher.num_regions} "
            f"img_dim={matcher.img_dim}; give features of that size"
        )
    if matcher.vocab_size != vocab_size:
        raise VisaError(
            f"{data}: the vocabulary has {vocab_size} words, but {source} has {matcher.vocab_size}; use the "
            "vocabulary it was trained with"
        )
