"""CLIP models published with their own modelling code on the Hugging Face hub (`trust_remote_code`), such
as BAAI's EVA-CLIP-18B and EVA-CLIP-8B, loaded the way their model cards load them.

BAAI publishes EVA-CLIP-18B as `BAAI/EVA-CLIP-18B`: a transformers folder whose config maps `AutoModel` to
its own `EvaCLIPModel` (modeling_evaclip.py), with the CLIP BPE tokenizer files and no image processor. The
model card loads it with `AutoModel.from_pretrained(..., trust_remote_code=True)` in float16, tokenises with
`CLIPTokenizer` (padding to the longest text), preprocesses images with the CLIP image processor at 224 px
(shortest side resized bicubically, centre crop, CLIP mean and std; `openai/clip-vit-large-patch14`'s
processor, which `CLIPImageProcessor`'s defaults reproduce, so nothing else is downloaded) and calls
`encode_image` / `encode_text`, L2-normalising both. open_clip does not ship EVA-CLIP-18B.
"""

from __future__ import annotations

import torch
from PIL import Image

from visa.backbones.hf_dual import HFDualEncoder
from visa.backbones.parallel import autocast, weight_dtype
from visa.core.errors import VisaError
from visa.core.loading import load_once, load_pretrained, oom_hint


class RemoteCodeClip(HFDualEncoder):
    """A dual encoder whose hub code exposes `encode_image(pixel_values)` and `encode_text(input_ids)`."""

    def __init__(
        self,
        model: str = "BAAI/EVA-CLIP-18B",
        revision: str | None = None,
        image_size: int = 224,
        image_processor: str | None = None,
        context_length: int | None = None,
        precision: str = "16-true",
        device: str = "auto",
        batch_size: int = 32,
        devices: int = 1,
        strategy: str = "ddp_spawn",
        trust_remote_code: bool = True,
    ):
        super().__init__(
            model=model,
            revision=revision,
            text_padding="longest",
            precision=precision,
            device=device,
            batch_size=batch_size,
            devices=devices,
            strategy=strategy,
            trust_remote_code=trust_remote_code,
        )
        self.image_size = image_size  # CLIP image processor at this size, unless image_processor names one
        self.image_processor = image_processor  # a hub id or folder with a preprocessor_config.json
        self.context_length = context_length  # texts are cut here; None: the model's own (77 for EVA-CLIP)

    def identity(self) -> dict:
        return {
            **super().identity(),
            "backbone": "remote_clip",
            "image_size": self.image_size,
            "image_processor": self.image_processor,
            "context_length": self.context_length,
        }

    @load_once()
    def _build(self, device: torch.device):
        from transformers import AutoModel, AutoTokenizer, CLIPImageProcessor

        if not self.trust_remote_code:
            raise VisaError(
                f"backbone.model={self.model} ships its own model code; set backbone.trust_remote_code=true "
                "after reading that code"
            )
        common = {"revision": self.revision, "trust_remote_code": True}
        net = load_pretrained(AutoModel, self.model, dtype=weight_dtype(self.precision), **common)
        for method in ("encode_image", "encode_text"):
            if not callable(getattr(net, method, None)):
                raise VisaError(
                    f"backbone.model={self.model} ({type(net).__name__}) has no {method}(); "
                    "backbone=eva_clip_18b is for CLIP models whose code provides encode_image/encode_text"
                )
        tokenizer = load_pretrained(AutoTokenizer, self.model, revision=self.revision)
        if self.image_processor:
            processor = load_pretrained(CLIPImageProcessor, self.image_processor)
        else:
            size = self.image_size
            processor = CLIPImageProcessor(
                size={"shortest_edge": size}, crop_size={"height": size, "width": size}
            )
        max_length = self.context_length or net.config.text_config.max_position_embeddings
        return (net.to(device).eval(), processor, tokenizer, max_length)

    @torch.no_grad()
    def encode_text(self, texts: list[str]) -> torch.Tensor:
        net, _, tokenizer, max_length = self._load()
        device = next(net.parameters()).device
        enc = tokenizer(texts, padding="longest", truncation=True, max_length=max_length, return_tensors="pt")
        try:
            with autocast(self.precision, device):
                features = net.encode_text(enc["input_ids"].to(device))
        except torch.OutOfMemoryError as e:
            raise oom_hint(e, self.model, "backbone.batch_size") from e
        return torch.nn.functional.normalize(features.float(), dim=-1).cpu()

    @torch.no_grad()
    def encode_images(self, images: list[Image.Image]) -> torch.Tensor:
        net, processor, _, _ = self._load()
        param = next(net.parameters())
        pixels = processor(images=images, return_tensors="pt")["pixel_values"].to(param.device, param.dtype)
        try:
            with autocast(self.precision, param.device):
                features = net.encode_image(pixels)
        except torch.OutOfMemoryError as e:
            raise oom_hint(e, self.model, "backbone.batch_size") from e
        return torch.nn.functional.normalize(features.float(), dim=-1).cpu()
