"""Any transformers cross-encoder (a sequence-classification model over (query, passage) pairs) by hub id or
local folder; bge-reranker-v2-m3 is one. The score is the raw logit of the first output. The query is cut to
`query_max_length` tokens (default 3/4 of `max_length`), then the passage to what is left of `max_length`."""

from __future__ import annotations

import torch

from visa.cache.cost import Cost, token_costs
from visa.core.devices import resolve_device
from visa.core.loading import DTYPES, check_dtype, load_once, load_pretrained, oom_hint, short_name
from visa.scorers.budget import PairBudget


@load_once(maxsize=2)
def _load(model: str, dtype: str, device: str, trust_remote_code: bool):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = load_pretrained(AutoTokenizer, model, trust_remote_code=trust_remote_code)
    net = load_pretrained(
        AutoModelForSequenceClassification, model, dtype=DTYPES[dtype], trust_remote_code=trust_remote_code
    )
    return tokenizer, net.to(resolve_device(device)).eval()


class HFCrossEncoder(PairBudget):
    def __init__(
        self,
        model: str,
        max_length: int = 512,
        query_max_length: int | None = None,
        dtype: str = "float32",
        device: str = "auto",
        batch_size: int = 32,
        trust_remote_code: bool = False,
    ):
        check_dtype(dtype, "scorer.dtype")
        super().__init__(query_max_length, max_length)
        self.model, self.dtype, self.device = model, dtype, device
        self.batch_size, self.trust_remote_code = batch_size, trust_remote_code
        self.costs: list[Cost] = []  # tokens of each pair of the last score()

    def last_costs(self) -> list[Cost]:
        """Tokens of each pair of the last score() (`visa.cache.cost.CostReporting`)."""
        return self.costs

    def identity(self) -> dict:
        return {
            "scorer": "hf-cross-encoder",
            "model": short_name(self.model),
            "max_length": self.max_length,
            "query_max_length": self.query_max_length,
            "dtype": self.dtype,
        }

    @torch.no_grad()
    def score(self, pairs: list[tuple[str, str]]) -> list[float]:
        tokenizer, net = _load(self.model, self.dtype, self.device, self.trust_remote_code)
        enc = self.encode_pairs(tokenizer, pairs, return_tensors="pt").to(net.device)
        self.costs = token_costs(enc, tokenizer.pad_token_id)
        try:
            logits = net(**enc).logits
        except torch.OutOfMemoryError as e:
            raise oom_hint(e, self.model, "scorer.batch_size") from e
        return [float(x) for x in logits[:, 0].float().cpu()]
