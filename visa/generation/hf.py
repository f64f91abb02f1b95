"""Text LLMs and vision-language models through transformers (chat template, left padding, batched; greedy
or sampled; dtype and device from config)."""

from __future__ import annotations

import functools
from pathlib import Path

import torch
from PIL import Image

from visa.devices import resolve_device
from visa.errors import VisaError
from visa.prompts import Prompt

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def load_pretrained(loader, model: str, **kwargs):
    """`loader.from_pretrained(model, ...)` with a one-line error when the weights cannot be had offline."""
    try:
        return loader.from_pretrained(model, **kwargs)
    except (OSError, ValueError) as e:
        where = "local path" if Path(model).exists() else "model id"
        raise VisaError(
            f"cannot load {where} {model!r} ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
            "download it on a connected machine (`hf download {model}`), point HF_HOME at that cache, "
            "or pass a local folder"
        ) from e


def _oom(model: str, batch_size: int) -> VisaError:
    return VisaError(
        f"out of memory generating with {model} at batch_size={batch_size}; lower this generator's "
        "batch_size (question_llm.batch_size, answer_mllm.batch_size or describer.batch_size)"
    )


def _pad_left(tokenizer):
    tokenizer.padding_side = "left"  # decoder-only models generate after the prompt
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _load_lm(loader, model: str, dtype: str, device: str, trust_remote_code: bool, **kwargs):
    """The model in eval mode: spread over the GPUs on "auto" with GPUs, else moved to `device`."""
    placement, _ = _load_device_map(device)
    lm = load_pretrained(
        loader, model, dtype=_DTYPES[dtype], trust_remote_code=trust_remote_code, **kwargs, **placement
    )
    return (lm if placement else lm.to(resolve_device(device))).eval()


@functools.lru_cache(maxsize=4)
def _load_causal_lm(model: str, gguf_file: str | None, dtype: str, device: str, trust_remote_code: bool):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = {"gguf_file": gguf_file} if gguf_file else {}
    tokenizer = load_pretrained(AutoTokenizer, model, trust_remote_code=trust_remote_code, **kwargs)
    lm = _load_lm(AutoModelForCausalLM, model, dtype, device, trust_remote_code, **kwargs)
    return _pad_left(tokenizer), lm


class HFTextGenerator:
    """A text-only chat LLM. With `uses_context: true` it answers questions about an item from the item's
    description (a "Socratic" answerer), which is how the demo answers without a vision-language model."""

    def __init__(
        self,
        model: str,
        gguf_file: str | None = None,
        dtype: str = "float32",
        device: str = "auto",
        batch_size: int = 16,
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        top_p: float = 1.0,
        system_prompt: str | None = None,
        uses_context: bool = False,
        trust_remote_code: bool = False,
        seed: int = 0,
    ):
        if dtype not in _DTYPES:
            raise VisaError(f"dtype={dtype!r} is not one of {', '.join(_DTYPES)}")
        self.model, self.gguf_file, self.dtype, self.device = model, gguf_file, dtype, device
        self.batch_size, self.max_new_tokens = batch_size, max_new_tokens
        self.temperature, self.top_p, self.seed = temperature, top_p, seed
        self.system_prompt, self.uses_context = system_prompt, uses_context
        self.trust_remote_code = trust_remote_code

    def identity(self) -> dict:
        return {
            "generator": "hf-text",
            "model": Path(self.model).name if Path(self.model).exists() else self.model,
            "gguf_file": self.gguf_file,
            "dtype": self.dtype,
            "max_new_tokens": self.max_new_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "system_prompt": self.system_prompt,
            "uses_context": self.uses_context,
            "seed": self.seed if self.temperature > 0 else None,
        }

    def _messages(self, prompt: Prompt) -> list[dict]:
        text = prompt.text
        if prompt.media:
            if not (self.uses_context and prompt.context):
                raise VisaError(
                    f"{self.model} is a text-only model and cannot see {prompt.media_kind}s; "
                    "use a vision-language model or set uses_context: true to answer from descriptions"
                )
            text = f"Description of the {prompt.media_kind}: {prompt.context}\n\n{text}"
        system = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        return [*system, {"role": "user", "content": text}]

    @torch.no_grad()
    def generate(self, prompts: list[Prompt]) -> list[str]:
        tokenizer, lm = _load_causal_lm(
            self.model, self.gguf_file, self.dtype, self.device, self.trust_remote_code
        )
        texts = [
            tokenizer.apply_chat_template(self._messages(p), tokenize=False, add_generation_prompt=True)
            for p in prompts
        ]
        enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(lm.device)
        return self._complete(lm, enc, tokenizer)

    def _complete(self, lm, enc, tokenizer) -> list[str]:
        """Generate after the (left-padded) prompts in `enc`; the new tokens decoded, per prompt."""
        sampling = self.temperature > 0
        if sampling:
            torch.manual_seed(self.seed)
        try:
            out = lm.generate(
                **enc,
                max_new_tokens=self.max_new_tokens,
                do_sample=sampling,
                temperature=self.temperature if sampling else None,
                top_p=self.top_p if sampling else None,
                top_k=None,
                pad_token_id=tokenizer.pad_token_id,
            )
        except torch.OutOfMemoryError as e:
            raise _oom(self.model, self.batch_size) from e
        replies = tokenizer.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
        return [t.strip() for t in replies]


VIDEO_MAX_PIXELS = 360 * 420  # per frame when max_pixels is not set: the method's video setting


def _load_device_map(device: str) -> tuple[dict, str]:
    """(from_pretrained kwargs, device of the inputs). On "auto" with GPUs the weights are spread over all of
    them (accelerate's device_map), so a 34B model loads on one node without extra settings."""
    if device == "auto" and torch.cuda.is_available():
        return {"device_map": "auto"}, "cuda"
    return {}, str(resolve_device(device))


@functools.lru_cache(maxsize=2)
def _load_vision_lm(model: str, dtype: str, device: str, trust_remote_code: bool):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = load_pretrained(AutoProcessor, model, trust_remote_code=trust_remote_code)
    _pad_left(processor.tokenizer)
    return processor, _load_lm(AutoModelForImageTextToText, model, dtype, device, trust_remote_code)


class HFVisionGenerator(HFTextGenerator):
    """A vision-language chat model (Qwen2-VL, Qwen2.5-VL, LLaVA-NeXT, ...) through its own processor and chat
    template: images as images, videos as frames sampled at `video_fps` (`visa.data.video.sample_fps`).
    Media come before the text in each message, so the questions about one item share a prefix."""

    def __init__(
        self,
        model: str,
        dtype: str = "float32",
        device: str = "auto",
        batch_size: int = 8,
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        top_p: float = 1.0,
        system_prompt: str | None = None,
        trust_remote_code: bool = False,
        seed: int = 0,
        video_fps: float = 3.0,
        max_frames: int = 64,
        max_pixels: int | None = None,
    ):
        super().__init__(
            model=model,
            dtype=dtype,
            device=device,
            batch_size=batch_size,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            system_prompt=system_prompt,
            uses_context=False,
            trust_remote_code=trust_remote_code,
            seed=seed,
        )
        self.video_fps, self.max_frames, self.max_pixels = video_fps, max_frames, max_pixels
        self.media_encoded = 0  # images and videos given to the vision encoder (benchmarks read it)

    def identity(self) -> dict:
        return {
            **super().identity(),
            "generator": "hf-vision",
            "video": {"fps": self.video_fps, "max_frames": self.max_frames},
            "max_pixels": self.max_pixels,
        }

    def _media(self, prompt: Prompt) -> tuple[list, list]:
        """(images, videos) of one prompt; a video is a list of frames."""
        from visa.data.video import fit_pixels

        if prompt.media_kind == "video":
            from visa.data.video import sample_fps  # only video runs need the video reader

            pixels = self.max_pixels or VIDEO_MAX_PIXELS
            return [], [sample_fps(path, self.video_fps, pixels, self.max_frames) for path in prompt.media]
        images = []
        for path in prompt.media:
            try:
                with Image.open(path) as img:
                    image = img.convert("RGB")
            except OSError as e:
                raise VisaError(f"cannot read image {path}: {e}") from e
            images.append(fit_pixels(image, self.max_pixels) if self.max_pixels else image)
        return images, []

    def _vision_messages(self, prompt: Prompt) -> list[dict]:
        kind = "video" if prompt.media_kind == "video" else "image"
        content = [{"type": kind} for _ in prompt.media] + [{"type": "text", "text": prompt.text}]
        system = [{"role": "system", "content": [{"type": "text", "text": self.system_prompt}]}]
        return [*(system if self.system_prompt else []), {"role": "user", "content": content}]

    @torch.no_grad()
    def generate(self, prompts: list[Prompt]) -> list[str]:
        processor, lm = _load_vision_lm(self.model, self.dtype, self.device, self.trust_remote_code)
        texts, images, videos = [], [], []
        for p in prompts:
            texts.append(
                processor.apply_chat_template(
                    self._vision_messages(p), add_generation_prompt=True, tokenize=False
                )
            )
            item_images, item_videos = self._media(p)
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
        return self._complete(lm, enc, processor.tokenizer)
