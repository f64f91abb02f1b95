"""Loading transformers chat models once per process: a text LLM (also from a local GGUF file, kept as a
transformers folder after its first read: `visa.generation.gguf`) and a vision-language model, left-padded
for batched generation and placed on the configured device (spread over the GPUs on "auto")."""

from __future__ import annotations

import torch

from visa.core.devices import resolve_device
from visa.core.loading import load_once, load_pretrained, torch_dtype
from visa.generation.gguf import converted_folder, keep_converted


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
    """(tokenizer, causal LM) of a text chat model, loaded once per process.

    A local GGUF file is read by transformers (de-quantised to float32, its tokenizer rebuilt from the file's
    vocabulary: about 30 s for SmolLM2-135M on 2 cores, most of it parsing the file) once, then kept as a
    transformers folder under `visa.generation.gguf.converted_models_dir()` and loaded from there (about a
    second)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = converted_folder(model, gguf_file) if gguf_file else None
    if folder is not None and (folder / "config.json").is_file():
        model, gguf_file = str(folder), None
    kwargs = {"gguf_file": gguf_file} if gguf_file else {}
    tokenizer = load_pretrained(AutoTokenizer, model, trust_remote_code=trust_remote_code, **kwargs)
    lm = _load_lm(AutoModelForCausalLM, model, dtype, device, trust_remote_code, **kwargs)
    if gguf_file and folder is not None and dtype == "float32":  # the file's values, unrounded
        keep_converted(folder, tokenizer, lm)
    return _pad_left(tokenizer), lm


@load_once(maxsize=2)
def load_vision_model(model: str, dtype: str, device: str, trust_remote_code: bool):
    """(processor, image-text-to-text model) of a vision-language chat model, loaded once per process."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = load_pretrained(AutoProcessor, model, trust_remote_code=trust_remote_code)
    _pad_left(processor.tokenizer)
    return processor, _load_lm(AutoModelForImageTextToText, model, dtype, device, trust_remote_code)
