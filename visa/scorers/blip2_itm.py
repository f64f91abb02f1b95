"""BLIP-2's image-text matching head (Salesforce/blip2-itm-vit-g, and -coco fine-tuned for COCO retrieval)
through transformers: a multimodal cross-encoder over (query text, item image).

The protocol of LAVIS (BLIP-2's retrieval re-ranks the image-text contrastive top-k with ITM) and of
transformers' `Blip2ForImageTextRetrieval`: the Q-Former attends over the text and the ViT's patches, its ITM
head gives two logits per pair (no match, match), averaged over the query tokens; the score is the softmax's
match probability. Texts are cut to `max_length` tokens (LAVIS's max_txt_len: 32).
"""

from __future__ import annotations

import torch

from visa.core.devices import resolve_device
from visa.core.errors import VisaError
from visa.core.loading import DTYPES, check_dtype, load_once, load_pretrained, oom_hint, short_name
from visa.core.prompt import Prompt
from visa.generation.media import read_image


@load_once(maxsize=1)
def _load(model: str, dtype: str, device: str):
    from transformers import AutoProcessor, Blip2ForImageTextRetrieval

    processor = load_pretrained(AutoProcessor, model)
    net = load_pretrained(Blip2ForImageTextRetrieval, model, dtype=DTYPES[dtype])
    return processor, net.to(resolve_device(device)).eval()


class Blip2ITMScorer:
    """See the module docstring. `score_media` takes `Prompt`s whose text is the query and whose media is the
    item's image (`visa.scorers.MediaScorer`). Each pair runs alone, so that its score does not depend on
    its batch-mates; `batch_size` is the pairs a caller hands over per call."""

    def __init__(
        self,
        model: str,
        max_length: int = 32,
        dtype: str = "float32",
        device: str = "auto",
        batch_size: int = 32,
    ):
        check_dtype(dtype, "scorer.dtype")
        if max_length < 1 or batch_size < 1:
            raise VisaError(f"max_length={max_length} and batch_size={batch_size} must be at least 1")
        self.model, self.max_length = model, max_length
        self.dtype, self.device, self.batch_size = dtype, device, batch_size
        self.media_encoded = 0

    def identity(self) -> dict:
        return {
            "scorer": "blip2-itm",
            "model": short_name(self.model),
            "max_length": self.max_length,
            "dtype": self.dtype,
        }

    def counters(self) -> dict[str, int]:
        return {"media_encoded": self.media_encoded}

    @torch.no_grad()
    def score_media(self, pairs: list[Prompt]) -> list[float]:
        """The ITM head's match probability of each (query, image) pair, in (0, 1)."""
        for pair in pairs:
            if pair.media_kind != "image" or len(pair.media) != 1:
                raise VisaError(
                    f"BLIP-2 ITM scores (query, one image) pairs; got media_kind={pair.media_kind!r} with "
                    f"{len(pair.media)} file(s) {pair.media[:1]}; use a pointwise re-ranker for videos"
                )
        processor, net = _load(self.model, self.dtype, self.device)
        out: list[float] = []
        for (
            pair
        ) in pairs:  # alone: a padded batch rounds differently (3e-8), and a score must not depend on it
            block = [pair]
            images = [read_image(p.media[0], None) for p in block]
            texts = [p.text for p in block]
            cut = {"padding": True, "truncation": True, "return_tensors": "pt"}
            if getattr(processor, "num_query_tokens", None):
                # a processor that puts the image's query tokens before the text (the model drops them)
                cut["max_length"] = self.max_length + processor.num_query_tokens
                enc = processor(images=images, text=texts, **cut)
            else:  # text and pixels apart (the processor cannot cut a text without query tokens)
                enc = processor.tokenizer(texts, max_length=self.max_length, **cut)
                enc["pixel_values"] = processor.image_processor(images, return_tensors="pt")["pixel_values"]
            enc = enc.to(net.device)
            enc["pixel_values"] = enc["pixel_values"].to(net.dtype)
            self.media_encoded += len(block)
            try:
                logits = net(**enc, use_image_text_matching_head=True).logits_per_image
            except torch.OutOfMemoryError as e:
                raise oom_hint(e, self.model, "scorer.batch_size") from e
            out += torch.softmax(logits.float(), dim=-1)[:, 1].cpu().tolist()
        return out
