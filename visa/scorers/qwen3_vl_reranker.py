"""Qwen3-VL-Reranker (Qwen/Qwen3-VL-Reranker-2B, -8B; Apache-2.0) through transformers: a multimodal
cross-encoder over (query text, item image).

The protocol of its model card and reference code (`Qwen3VLReranker` in the Qwen3-VL-Embedding repository),
written here on the model's own processor and chat template:
- a system turn: Judge whether the Document meets the requirements based on the Query and the Instruct
  provided. Note that the answer can only be "yes" or "no".
- one user turn: "<Instruct>: {instruction}", "<Query>:", the query text, "\\n<Document>:", the image;
- the chat template with the generation prompt; the score is sigmoid(logit("yes") - logit("no")) at the last
  position, i.e. P(yes) / (P(yes) + P(no)) over the exact vocabulary tokens "yes" and "no" (the reference
  code folds the two rows of the output layer into one linear head; the value is the same).
Images are resized by the processor to between `min_pixels` and `max_pixels` (the reference's 4 and 1800
tokens of 32x32 pixels). Each pair runs alone: a vision encoder's products over several items' patches
round differently from one item's, and a score must not depend on its batch-mates.
"""

from __future__ import annotations

import torch

from visa.core.errors import VisaError
from visa.core.loading import check_dtype, oom_hint, short_name
from visa.core.prompt import Prompt
from visa.generation.hf_loading import load_vision_model
from visa.generation.media import read_image

SYSTEM = (
    "Judge whether the Document meets the requirements based on the Query and the Instruct provided. "
    'Note that the answer can only be "yes" or "no".'
)
INSTRUCTION = "Given a search query, retrieve relevant candidates that answer the query."
MIN_PIXELS = 4 * 32 * 32
MAX_PIXELS = 1800 * 32 * 32


class Qwen3VLReranker:
    """See the module docstring. `score_media` takes `Prompt`s whose text is the query and whose media is the
    item's image (`visa.scorers.MediaScorer`)."""

    def __init__(
        self,
        model: str,
        instruction: str = INSTRUCTION,
        min_pixels: int = MIN_PIXELS,
        max_pixels: int = MAX_PIXELS,
        max_length: int = 10240,
        dtype: str = "bfloat16",
        device: str = "auto",
        batch_size: int = 8,
        trust_remote_code: bool = False,
    ):
        check_dtype(dtype, "scorer.dtype")
        if not 0 < min_pixels <= max_pixels or max_length < 1 or batch_size < 1:
            raise VisaError(
                f"min_pixels={min_pixels} must be > 0 and <= max_pixels={max_pixels}; "
                f"max_length={max_length} "
                f"and batch_size={batch_size} at least 1"
            )
        self.model, self.instruction = model, instruction
        self.min_pixels, self.max_pixels, self.max_length = min_pixels, max_pixels, max_length
        self.dtype, self.device, self.batch_size = dtype, device, batch_size
        self.trust_remote_code = trust_remote_code
        self.media_encoded = 0

    def identity(self) -> dict:
        return {
            "scorer": "qwen3-vl-reranker",
            "model": short_name(self.model),
            "instruction": self.instruction,
            "min_pixels": self.min_pixels,
            "max_pixels": self.max_pixels,
            "dtype": self.dtype,
        }

    def counters(self) -> dict[str, int]:
        return {"media_encoded": self.media_encoded}

    def messages(self, pair: Prompt) -> list[dict]:
        """The reference's chat: the judging system turn, then instruction, query and the item's image."""
        if pair.media_kind != "image" or not pair.media:
            raise VisaError(
                f"the Qwen3-VL reranker scores (query, image) pairs; got media_kind={pair.media_kind!r} "
                f"for {pair.media[:1]}; use a pointwise re-ranker for videos"
            )
        document = [{"type": "image"} for _ in pair.media]
        user = [
            {"type": "text", "text": f"<Instruct>: {self.instruction}"},
            {"type": "text", "text": "<Query>:"},
            {"type": "text", "text": pair.text},
            {"type": "text", "text": "\n<Document>:"},
            *document,
        ]
        return [
            {"role": "system", "content": [{"type": "text", "text": SYSTEM}]},
            {"role": "user", "content": user},
        ]

    @torch.no_grad()
    def score_media(self, pairs: list[Prompt]) -> list[float]:
        """P(yes) / (P(yes) + P(no)) of each (query, image) pair, in (0, 1), higher is more relevant."""
        # the vision-language loader the judge and answerer use (one pair at a time: padding plays no part)
        processor, lm = load_vision_model(self.model, self.dtype, self.device, self.trust_remote_code)
        vocab = processor.tokenizer.get_vocab()
        if "yes" not in vocab or "no" not in vocab:
            raise VisaError(
                f"{self.model}'s vocabulary has no 'yes' and 'no' tokens; it is not a Qwen3-VL reranker"
            )
        yes, no = vocab["yes"], vocab["no"]
        size = {"shortest_edge": self.min_pixels, "longest_edge": self.max_pixels}
        out = []
        for pair in pairs:
            text = processor.apply_chat_template(
                self.messages(pair), tokenize=False, add_generation_prompt=True
            )
            images = [read_image(path, None) for path in pair.media]
            enc = processor(text=[text], images=images, size=size, return_tensors="pt").to(lm.device)
            if enc["input_ids"].shape[1] > self.max_length:
                raise VisaError(
                    f"a (query, image) pair for {pair.media[0]} is {enc['input_ids'].shape[1]} tokens, over "
                    f"scorer.max_length={self.max_length}; lower scorer.max_pixels or raise max_length"
                )
            enc["pixel_values"] = enc["pixel_values"].to(lm.dtype)
            self.media_encoded += len(images)
            try:
                logits = lm(**enc, logits_to_keep=1).logits[0, -1].float()
            except torch.OutOfMemoryError as e:
                raise oom_hint(e, self.model, "scorer.max_pixels") from e
            out.append(float(torch.sigmoid(logits[yes] - logits[no])))
        return out
