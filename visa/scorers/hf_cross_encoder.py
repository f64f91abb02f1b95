"""Any transformers cross-encoder (a sequence-classification model over (query, passage) pairs) by hub id or
local folder; bge-reranker-v2-m3 is one. The score is the raw logit of the first output."""

from __future__ import annotations

import functools
from pathlib import Path

import torch

from visa.devices import resolve_device
from visa.errors import VisaError
from visa.loading import load_pretrained

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@functools.lru_cache(maxsize=2)
def _load(model: str, dtype: str, device: str, trust_remote_code: bool):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = load_pretrained(AutoTokenizer, model, trust_remote_code=trust_remote_code)
    net = load_pretrained(
        AutoModelForSequenceClassification, model, dtype=_DTYPES[dtype], trust_remote_code=trust_remote_code
    )
    return tokenizer, net.to(resolve_device(device)).eval()


class HFCrossEncoder:
    def __init__(
        self,
        model: str,
        max_length: int = 512,
        dtype: str = "float32",
        device: str = "auto",
        batch_size: int = 32,
        trust_remote_code: bool = False,
    ):
        if dtype not in _DTYPES:
            raise VisaError(f"scorer.dtype={dtype!r} is not one of {', '.join(_DTYPES)}")
        self.model, self.max_length, self.dtype, self.device = model, max_length, dtype, device
        self.batch_size, self.trust_remote_code = batch_size, trust_remote_code

    def identity(self) -> dict:
        return {
            "scorer": "hf-cross-encoder",
            "model": Path(self.model).name if Path(self.model).exists() else self.model,
            "max_length": self.max_length,
            "dtype": self.dtype,
        }

    @torch.no_grad()
    def score(self, pairs: list[tuple[str, str]]) -> list[float]:
        tokenizer, net = _load(self.model, self.dtype, self.device, self.trust_remote_code)
        enc = tokenizer(
            [q for q, _ in pairs],
            [p for _, p in pairs],
            padding=True,
            truncation="only_second",
            max_length=self.max_length,
            return_tensors="pt",
        ).to(net.device)
        try:
            logits = net(**enc).logits
        except torch.OutOfMemoryError as e:
            raise VisaError(f"out of memory scoring with {self.model}; lower scorer.batch_size") from e
        return [float(x) for x in logits[:, 0].float().cpu()]
