"""The Lightning module of the region matchers (SGR, SAF), with or without the Visual Semantic Loss."""

from __future__ import annotations

import lightning as L
import numpy as np
import torch

from visa.vsl.data import CAPTIONS_PER_IMAGE, Batch
from visa.vsl.evaluate import Encoded, recalls, shard_similarities
from visa.vsl.losses import triplet_ranking_loss, visual_semantic_loss
from visa.vsl.models import RegionMatcher


class RegionMatcherModule(L.LightningModule):
    """Trains SGR or SAF as SGRAF does (Adam, lr x 0.1 every `lr_update` epochs, hardest-negative triplet
    loss), plus VSL when `vsl_weight` > 0; validates by rsum (R@1+5+10, both directions) on the dev split."""

    def __init__(
        self,
        vocab_size: int,
        module: str = "SGR",
        img_dim: int = 2048,
        num_regions: int = 36,
        word_dim: int = 300,
        embed_size: int = 1024,
        sim_dim: int = 256,
        num_layers: int = 1,
        bi_gru: bool = True,
        sgr_step: int = 3,
        caption_chunk: int = 16,
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
        self.matcher = RegionMatcher(
            vocab_size,
            module,
            img_dim,
            num_regions,
            word_dim,
            embed_size,
            sim_dim,
            num_layers,
            bi_gru,
            sgr_step,
            caption_chunk=caption_chunk,
        )
        self._val: dict[str, list[torch.Tensor]] = {}

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
        hp = self.hparams
        out = {"triplet": triplet_ranking_loss(scores, hp.margin, hp.max_violation)}
        if hp.vsl_weight > 0:
            if batch.image_semantics is None:
                raise ValueError("VSL needs the batch's image semantics: set data.semantics=true")
            out["vsl"] = visual_semantic_loss(
                scores, batch.image_semantics, hp.vsl_weight, hp.vsl_temperature, hp.vsl_convention
            )
        out["loss"] = sum(out.values())
        return out

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        losses = self.losses(batch)
        size = batch.images.shape[0]
        self.log("train/loss", losses["loss"], prog_bar=True, batch_size=size)
        for name in ("triplet", "vsl"):
            if name in losses:
                self.log(f"train/{name}", losses[name], batch_size=size)
        return losses["loss"]

    def configure_optimizers(self):
        optimizer = torch.optim.Adam(self.parameters(), lr=self.hparams.lr)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, self.hparams.lr_update, self.hparams.lr_decay)
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
        state = getattr(self, "_resume_rng", None)
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
        data = self.trainer.val_dataloaders.dataset
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
        sims = shard_similarities(self.similarity, enc, self.hparams.shard_size, self.device)
        metrics = recalls(np.asarray(sims))
        for key, value in metrics.items():
            self.log(f"val/{key}", value, prog_bar=key in ("rsum", "t2i/R@1"), sync_dist=False)
        self._val = {}
