"""CLIP / SigLIP style dual encoders through transformers (`AutoModel` + the model's image processor and
tokenizer), from a hub id or a local folder.

Text is tokenised the way each family was trained: SigLIP pads to the model's full length ("max_length"),
CLIP pads to the longest text in the batch; both truncate at the model's maximum text length.
"""

from __future__ import annotations

import torch
from PIL import Image

from visa.backbones.open_clip import load_images
from visa.backbones.parallel import FabricEncoding, autocast, check_precision, weight_dtype
from visa.cache.cost import Cost, token_costs
from visa.core.loading import load_once, load_pretrained, oom_hint, short_name
from visa.data import Item


def _features(output) -> torch.Tensor:
    """get_*_features gives a tensor in older transformers, a model output (projected pooler) in newer."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


class HFDualEncoder(FabricEncoding):
    def __init__(
        self,
        model: str,
        revision: str | None = None,
        text_padding: str = "auto",
        precision: str = "32-true",
        device: str = "auto",
        batch_size: int = 64,
        devices: int = 1,
        num_nodes: int = 1,
        strategy: str = "ddp_spawn",
        trust_remote_code: bool = False,
    ):
        check_precision(precision, "backbone")
        self.model, self.revision, self.text_padding = model, revision, text_padding
        self.precision, self.device, self.batch_size = precision, device, batch_size
        self.devices, self.strategy, self.trust_remote_code = devices, strategy, trust_remote_code
        self.num_nodes = num_nodes  # > 1: one process per device on every node, started by srun
        self.check_parallel("backbone")
        self.text_costs: list[Cost] = []  # tokens of each text of the last encode_text

    def last_costs(self) -> list[Cost]:
        """Tokens of each text of the last encode_text (`visa.cache.cost.CostReporting`)."""
        return self.text_costs

    def identity(self) -> dict:
        return {
            "backbone": "hf_dual",
            "model": short_name(self.model),
            "revision": self.revision,
            "text_padding": self.text_padding,
            "precision": self.precision,
        }

    @load_once()
    def _build(self, device: torch.device):
        from transformers import AutoImageProcessor, AutoModel, AutoTokenizer

        common = {"revision": self.revision, "trust_remote_code": self.trust_remote_code}
        net = load_pretrained(AutoModel, self.model, dtype=weight_dtype(self.precision), **common)
        image_processor = load_pretrained(AutoImageProcessor, self.model, **common)
        tokenizer = load_pretrained(AutoTokenizer, self.model, **common)
        padding = self.text_padding
        if padding == "auto":  # SigLIP was trained on texts padded to the full length
            padding = "max_length" if "siglip" in net.config.model_type else "longest"
        max_length = net.config.text_config.max_position_embeddings
        return (net.to(device).eval(), image_processor, tokenizer, padding, max_length)

    @torch.no_grad()
    def encode_text(self, texts: list[str]) -> torch.Tensor:
        net, _, tokenizer, padding, max_length = self._load()
        device = next(net.parameters()).device
        enc = tokenizer(texts, padding=padding, truncation=True, max_length=max_length, return_tensors="pt")
        self.text_costs = token_costs(enc, tokenizer.pad_token_id)
        # SigLIP's text tower takes no attention mask (it was trained on padded text)
        inputs = {k: v.to(device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}
        if "siglip" in net.config.model_type:
            inputs.pop("attention_mask", None)
        try:
            with autocast(self.precision, device):
                features = _features(net.get_text_features(**inputs))
        except torch.OutOfMemoryError as e:
            raise oom_hint(e, self.model, "backbone.batch_size") from e
        return torch.nn.functional.normalize(features.float(), dim=-1).cpu()

    @torch.no_grad()
    def encode_images(self, images: list[Image.Image]) -> torch.Tensor:
        net, image_processor, _, _, _ = self._load()
        param = next(net.parameters())
        pixels = image_processor(images=images, return_tensors="pt")["pixel_values"]
        pixels = pixels.to(param.device, param.dtype)
        try:
            with autocast(self.precision, param.device):
                features = _features(net.get_image_features(pixel_values=pixels))
        except torch.OutOfMemoryError as e:
            raise oom_hint(e, self.model, "backbone.batch_size") from e
        return torch.nn.functional.normalize(features.float(), dim=-1).cpu()

    def encode_visual(self, items: list[Item]) -> torch.Tensor:
        return self.encode_images(load_images(items, "hf_dual"))
