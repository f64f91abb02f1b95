"""Any open_clip model: a built-in name with a pretrained tag (`ViT-SO400M-14-SigLIP-384` + `webli`), an
`hf-hub:org/repo` id, or a `local-dir:/path` folder holding `open_clip_config.json` and the weights.

Image preprocessing and the tokenizer are open_clip's own for that model; the text context length is the
model's (long-text models such as LoTLIP use more than CLIP's 77 tokens) unless `context_length` is set.
"""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from visa.backbones.parallel import FabricEncoding, autocast, check_precision, weight_dtype
from visa.core.errors import VisaError
from visa.core.loading import load_once, oom_hint
from visa.data import Item
from visa.data.media import load_image


def _short_name(model: str) -> str:
    """A local folder is named by its last component, so cache keys survive moving the folder."""
    if model.startswith("local-dir:"):
        return "local-dir:" + Path(model.removeprefix("local-dir:")).name
    return model


def load_images(items: list[Item], backbone: str) -> list[Image.Image]:
    images = []
    for item in items:
        if item.kind != "image":
            raise VisaError(
                f"backbone={backbone} encodes images; for videos wrap it in backbone=frame_pooled "
                f"(item {item.id!r} is a {item.kind})"
            )
        images.append(load_image(item.path))  # a damaged or oversized file: one line naming it
    return images


class OpenClipBackbone(FabricEncoding):
    def __init__(
        self,
        model: str,
        pretrained: str | None = None,
        context_length: int | None = None,
        precision: str = "32-true",
        device: str = "auto",
        batch_size: int = 64,
        devices: int = 1,
        num_nodes: int = 1,
        strategy: str = "ddp_spawn",
        cache_dir: str | None = None,
    ):
        check_precision(precision, "backbone")
        self.model, self.pretrained, self.context_length = model, pretrained, context_length
        self.precision, self.device, self.batch_size = precision, device, batch_size
        self.devices, self.strategy, self.cache_dir = devices, strategy, cache_dir
        self.num_nodes = num_nodes  # > 1: one process per device on every node, started by srun
        self.check_parallel("backbone")

    def identity(self) -> dict:
        pretrained = self.pretrained
        if pretrained and Path(pretrained).exists():
            pretrained = Path(pretrained).name
        return {
            "backbone": "open_clip",
            "model": _short_name(self.model),
            "pretrained": pretrained,
            "context_length": self.context_length,
            "precision": self.precision,
        }

    @load_once()
    def _build(self, device: torch.device):
        """(model, preprocess, tokenizer) on `device`."""
        import open_clip

        try:
            net, _, preprocess = open_clip.create_model_and_transforms(
                self.model,
                pretrained=self.pretrained,
                device=device,
                cache_dir=self.cache_dir,
                force_context_length=self.context_length,
            )
            tokenizer = open_clip.get_tokenizer(
                self.model, context_length=self.context_length, cache_dir=self.cache_dir
            )
        except (RuntimeError, OSError, ValueError) as e:
            if isinstance(e, torch.OutOfMemoryError):
                raise oom_hint(e, self.model, "backbone.batch_size") from e
            first = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
            raise VisaError(
                f"cannot load open_clip model {self.model!r} (pretrained={self.pretrained!r}): {first}; "
                "download it on a connected machine (the same name and tag fill the Hugging Face cache), "
                "point HF_HOME at that cache, or give a local checkpoint (pretrained=/path/file.bin or "
                "model=local-dir:/path)"
            ) from e
        net = net.to(dtype=weight_dtype(self.precision)).eval()
        return (net, preprocess, tokenizer)

    @torch.no_grad()
    def encode_text(self, texts: list[str]) -> torch.Tensor:
        net, _, tokenizer = self._load()
        device = next(net.parameters()).device
        try:
            with autocast(self.precision, device):
                features = net.encode_text(tokenizer(texts).to(device))
        except torch.OutOfMemoryError as e:
            raise oom_hint(e, self.model, "backbone.batch_size") from e
        return torch.nn.functional.normalize(features.float(), dim=-1).cpu()

    @torch.no_grad()
    def encode_images(self, images: list[Image.Image]) -> torch.Tensor:
        net, preprocess, _ = self._load()
        param = next(net.parameters())
        pixels = torch.stack([preprocess(img) for img in images]).to(param.device, param.dtype)
        try:
            with autocast(self.precision, param.device):
                features = net.encode_image(pixels)
        except torch.OutOfMemoryError as e:
            raise oom_hint(e, self.model, "backbone.batch_size") from e
        return torch.nn.functional.normalize(features.float(), dim=-1).cpu()

    def encode_visual(self, items: list[Item]) -> torch.Tensor:
        return self.encode_images(load_images(items, "open_clip"))
