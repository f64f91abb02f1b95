"""Text LLMs and vision-language models through transformers in this process (chat template, left padding,
batched; greedy or sampled; dtype and device from config). Weights load on first use, so a fully cached run
loads no model."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from visa.core.devices import resolve_device
from visa.core.errors import VisaError
from visa.core.loading import check_dtype, load_once, load_pretrained, torch_dtype
from visa.core.prompt import Prompt
from visa.generation.chat import ChatSettings, MediaSettings
from visa.generation.media import prompt_media


def _pad_left(tokenizer):
    tokenizer.padding_side = "left"  # decoder-only models generate after the prompt
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _placement(device: str) -> dict:
    """from_pretrained kwargs: on "auto" with GPUs the weights are spread over all of them (accelerate's
    device_map), so a 34B model loads on one node without extra settings; else none (moved afterwards)."""
    return {"device_map": "auto"} if device == "auto" and torch.cuda.is_available() else {}


def _load_lm(loader, model: str, dtype: str, device: str, trust_remote_code: bool, **kwargs):
    """The model in eval mode: spread over the GPUs on "auto" with GPUs, else moved to `device`."""
    placement = _placement(device)
    lm = load_pretrained(
        loader, model, dtype=torch_dtype(dtype), trust_remote_code=trust_remote_code, **kwargs, **placement
    )
    return (lm if placement else lm.to(resolve_device(device))).eval()


@load_once(maxsize=4)
def load_text_model(model: str, gguf_file: str | None, dtype: str, device: str, trust_remote_code: bool):
    """(tokenizer, causal LM) of a text chat model, loaded once per process."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = {"gguf_file": gguf_file} if gguf_file else {}
    tokenizer = load_pretrained(AutoTokenizer, model, trust_remote_code=trust_remote_code, **kwargs)
    lm = _load_lm(AutoModelForCausalLM, model, dtype, device, trust_remote_code, **kwargs)
    return _pad_left(tokenizer), lm


@load_once(maxsize=2)
def load_vision_model(model: str, dtype: str, device: str, trust_remote_code: bool):
    """(processor, image-text-to-text model) of a vision-language chat model, loaded once per process."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = load_pretrained(AutoProcessor, model, trust_remote_code=trust_remote_code)
    _pad_left(processor.tokenizer)
    return processor, _load_lm(AutoModelForImageTextToText, model, dtype, device, trust_remote_code)


def _complete(gen: ChatSettings, lm, enc, tokenizer, prompts: list[Prompt]) -> list[str]:
    """Generate after the (left-padded) prompts in `enc`; the new tokens decoded, per prompt.

    Sampling is what the settings say, never the model's generation_config: top_k off, top_p only when
    sampling; the repetition penalty is the model's own unless `repetition_penalty` is set."""
    temperature, seed = gen.sampling_of(prompts)
    sampling = temperature > 0
    if sampling:
        torch.manual_seed(seed)
    penalty = {} if gen.repetition_penalty is None else {"repetition_penalty": gen.repetition_penalty}
    try:
        out = lm.generate(
            **enc,
            max_new_tokens=gen.max_new_tokens,
            do_sample=sampling,
            temperature=temperature if sampling else None,
            top_p=gen.top_p if sampling else None,
            top_k=None,
            pad_token_id=tokenizer.pad_token_id,
            **penalty,
        )
    except torch.OutOfMemoryError as e:
        raise VisaError(
            f"out of memory generating with {gen.model} at batch_size={gen.batch_size}; lower this "
            "generator's batch_size (question_llm.batch_size, answer_mllm.batch_size or describer.batch_size)"
        ) from e
    replies = tokenizer.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    return [t.strip() for t in replies]


@dataclass(kw_only=True, eq=False)
class HFTextGenerator(ChatSettings):
    """A text-only chat LLM (AutoModelForCausalLM, or a GGUF file read by transformers). With
    `uses_context: true` it answers questions about an item from the item's description (a "Socratic"
    answerer), which is how the demo answers without a vision-language model."""

    generator = "hf-text"

    gguf_file: str | None = None  # a GGUF file inside `model` (a folder or hub repo)
    dtype: str = "float32"  # float32 | float16 | bfloat16
    device: str = "auto"  # auto: all visible GPUs (device_map), else CPU
    trust_remote_code: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        check_dtype(self.dtype)

    def identity(self) -> dict:
        return {**super().identity(), "gguf_file": self.gguf_file, "dtype": self.dtype}

    @torch.no_grad()
    def generate(self, prompts: list[Prompt]) -> list[str]:
        for p in prompts:
            if self.sees_media(p):
                raise VisaError(
                    f"{self.model} is a text-only model and cannot see {p.media_kind}s; "
                    "use a vision-language model or set uses_context: true to answer from descriptions"
                )
        tokenizer, lm = load_text_model(
            self.model, self.gguf_file, self.dtype, self.device, self.trust_remote_code
        )
        texts = [
            tokenizer.apply_chat_template(self.messages(p), tokenize=False, add_generation_prompt=True)
            for p in prompts
        ]
        enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(lm.device)
        return _complete(self, lm, enc, tokenizer, prompts)


@dataclass(kw_only=True, eq=False)
class HFVisionGenerator(MediaSettings):
    """A vision-language chat model (Qwen2-VL, Qwen2.5-VL, LLaVA-NeXT, ...) through its own processor and
    chat template (AutoProcessor + AutoModelForImageTextToText): images as images, videos as frames sampled
    at `video_fps`. Media come before the text in each message, so the questions about one item share a
    prefix."""

    generator = "hf-vision"

    batch_size: int = 8
    dtype: str = "float32"  # float32 | float16 | bfloat16
    device: str = "auto"  # auto: all visible GPUs (device_map), else CPU
    trust_remote_code: bool = False
    media_encoded: int = field(default=0, init=False)  # images and videos given to the vision encoder

    def __post_init__(self) -> None:
        super().__post_init__()
        check_dtype(self.dtype)

    def identity(self) -> dict:
        # "gguf_file": None keeps the identities (and so the caches) of the former single generator class.
        return {**super().identity(), "gguf_file": None, "dtype": self.dtype}

    @torch.no_grad()
    def generate(self, prompts: list[Prompt]) -> list[str]:
        processor, lm = load_vision_model(self.model, self.dtype, self.device, self.trust_remote_code)
        texts, images, videos = [], [], []
        for p in prompts:
            item_images: list[Any] = []
            item_videos: list[Any] = []
            if self.sees_media(p):
                item_images, item_videos = prompt_media(p, self)
            parts = [{"type": "image"} for _ in item_images] + [{"type": "video"} for _ in item_videos]
            texts.append(
                processor.apply_chat_template(
                    self.messages(p, parts, typed=True), add_generation_prompt=True, tokenize=False
                )
            )
            images += item_images
            videos += item_videos
        if videos and getattr(processor, "video_processor", None) is None:
            raise VisaError(
                f"{self.model} has no video processor; pick a video-capable model (e.g. Qwen2-VL)"
            )
        media = {"images": images or None, "videos": videos or None}
        enc = processor(
            text=texts, padding=True, return_tensors="pt", **{k: v for k, v in media.items() if v}
        )
        enc = enc.to(lm.device)
        if "pixel_values" in enc and enc["pixel_values"].is_floating_point():
            enc["pixel_values"] = enc["pixel_values"].to(lm.dtype)
        self.media_encoded += len(images) + len(videos)
        return _complete(self, lm, enc, processor.tokenizer, prompts)
