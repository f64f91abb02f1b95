"""bge-reranker-v2.5-gemma2-lightweight through FlagEmbedding's light-weight LLM re-ranker, with the
layer-wise options the method uses: the score is read at `cutoff_layers`, the passage tokens are compressed
by `compress_ratio` at `compress_layers`, and the raw logit is the score (no sigmoid).

FlagEmbedding is an optional extra (`pip install 'visa-retrieval[bge]'`); it is imported on first use.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

from visa.devices import resolve_device
from visa.errors import VisaError

INSTALL = "pip install 'visa-retrieval[bge]' (or pip install FlagEmbedding)"


def _reranker_class():
    import transformers

    major = int(transformers.__version__.split(".")[0])
    if major >= 5:
        # FlagEmbedding's CostWiseGemma code targets transformers 4.x (it names 4.46): under 5.x its weights
        # fail to load (tied-weight and config registration changes) and it would silently fall back to a
        # plain causal LM that cannot take the layer-wise options. Refuse instead of scoring wrongly.
        raise VisaError(
            f"scorer=bge_reranker_v2_5_gemma2_lightweight needs FlagEmbedding's CostWiseGemma, which does "
            f"not load with transformers {transformers.__version__}; run the scoring in an environment with "
            "transformers>=4.44,<5 (FlagEmbedding recommends 4.46) and FlagEmbedding, or use "
            "scorer=bge_reranker_v2_m3"
        )
    try:
        # Imported here first: FlagEmbedding exits the interpreter if its Gemma code fails to import.
        from FlagEmbedding.inference.reranker.decoder_only.lightweight import LightweightLLMReranker
        from FlagEmbedding.inference.reranker.decoder_only.models.gemma_model import (  # noqa: F401
            CostWiseGemmaForCausalLM,
        )
    except ImportError as e:
        raise VisaError(f"scorer needs FlagEmbedding's light-weight re-ranker ({e}); {INSTALL}") from e
    return LightweightLLMReranker


@functools.lru_cache(maxsize=1)
def _load(model: str, use_fp16: bool, use_bf16: bool, device: str, batch_size: int, max_length: int):
    cls = _reranker_class()
    if not Path(model).exists():
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(model, "config.json"), str):
            raise VisaError(
                f"scorer model {model!r} is not in the Hugging Face cache and there is no network here; "
                f"download it on a connected machine (`hf download {model}`), point HF_HOME at that cache, "
                "or set scorer.model to a local folder"
            )
    return cls(
        model,
        use_fp16=use_fp16,
        use_bf16=use_bf16,
        devices=[device],
        batch_size=batch_size,
        max_length=max_length,
        normalize=False,
        trust_remote_code=False,
    )


class BGELightweightReranker:
    def __init__(
        self,
        model: str = "BAAI/bge-reranker-v2.5-gemma2-lightweight",
        cutoff_layers: list[int] | None = None,
        compress_ratio: int = 1,
        compress_layers: list[int] | None = None,
        max_length: int = 1024,
        dtype: str = "float16",
        device: str = "auto",
        batch_size: int = 32,
        prompt: str | None = None,
    ):
        if dtype not in ("float32", "float16", "bfloat16"):
            raise VisaError(f"scorer.dtype={dtype!r} is not one of float32, float16, bfloat16")
        if compress_ratio not in (1, 2, 4, 8):
            raise VisaError(f"scorer.compress_ratio={compress_ratio} is not one of 1, 2, 4, 8")
        self.model, self.cutoff_layers, self.compress_ratio = model, cutoff_layers, compress_ratio
        self.compress_layers = compress_layers if compress_layers is not None else [8]
        self.max_length, self.dtype, self.device = max_length, dtype, device
        self.batch_size, self.prompt = batch_size, prompt

    def identity(self) -> dict:
        return {
            "scorer": "bge-lightweight",
            "model": Path(self.model).name if Path(self.model).exists() else self.model,
            "cutoff_layers": self.cutoff_layers,
            "compress_ratio": self.compress_ratio,
            "compress_layers": self.compress_layers,
            "max_length": self.max_length,
            "dtype": self.dtype,
            "prompt": self.prompt,
        }

    def score(self, pairs: list[tuple[str, str]]) -> list[float]:
        device = str(resolve_device(self.device))
        # FlagEmbedding runs fp16 only on GPUs (it falls back to fp32 on CPU by itself)
        reranker = _load(
            self.model,
            self.dtype == "float16",
            self.dtype == "bfloat16",
            device,
            self.batch_size,
            self.max_length,
        )
        try:
            scores = reranker.compute_score(
                [list(p) for p in pairs],
                cutoff_layers=self.cutoff_layers,
                compress_ratio=self.compress_ratio,
                compress_layers=self.compress_layers,
                prompt=self.prompt,
                batch_size=self.batch_size,
                max_length=self.max_length,
                normalize=False,
            )
        except torch.OutOfMemoryError as e:
            raise VisaError(f"out of memory scoring with {self.model}; lower scorer.batch_size") from e
        if isinstance(scores, float):
            scores = [scores]
        # with several cutoff layers FlagEmbedding returns one list per layer: the last one is the deepest
        if scores and isinstance(scores[0], list):
            scores = scores[-1]
        return [float(s) for s in scores]
