"""Text LLMs through transformers (chat template, left padding, batched; greedy or sampled)."""

from __future__ import annotations

import functools
from pathlib import Path

import torch

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


@functools.lru_cache(maxsize=4)
def _load_causal_lm(model: str, gguf_file: str | None, dtype: str, device: str, trust_remote_code: bool):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = {"gguf_file": gguf_file} if gguf_file else {}
    tokenizer = load_pretrained(AutoTokenizer, model, trust_remote_code=trust_remote_code, **kwargs)
    tokenizer.padding_side = "left"  # decoder-only models generate after the prompt
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    lm = load_pretrained(
        AutoModelForCausalLM, model, dtype=_DTYPES[dtype], trust_remote_code=trust_remote_code, **kwargs
    )
    return tokenizer, lm.eval().to(device)


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
        device = str(resolve_device(self.device))
        tokenizer, lm = _load_causal_lm(self.model, self.gguf_file, self.dtype, device, self.trust_remote_code)
        texts = [
            tokenizer.apply_chat_template(self._messages(p), tokenize=False, add_generation_prompt=True)
            for p in prompts
        ]
        enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
        sampling = self.temperature > 0
        if sampling:
            torch.manual_seed(self.seed)
        out = lm.generate(
            **enc,
            max_new_tokens=self.max_new_tokens,
            do_sample=sampling,
            temperature=self.temperature if sampling else None,
            top_p=self.top_p if sampling else None,
            top_k=None,
            pad_token_id=tokenizer.pad_token_id,
        )
        return [t.strip() for t in tokenizer.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)]
