"""`reranker=none`: the backbone's order (after the normaliser, if one is chosen). No model is loaded and
nothing is cached; the run's records and metrics have the same shape as every re-ranker's, so a `none` row
sits beside the others in a comparison."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from visa.method.rerankers import Scored
from visa.method.stages import Run


class NoReranker:
    uses: tuple[str, ...] = ()
    label = "none (backbone order)"

    def prepare(self, run: Run, top: torch.Tensor, queries: Sequence[int]) -> None:
        return None

    def score(self, run: Run, queries: Sequence[int], top: torch.Tensor, base: torch.Tensor) -> Scored:
        """The backbone's own scores: fused with themselves, they keep its order."""
        return Scored(base.clone().float(), [{} for _ in queries])

    def metrics(self) -> dict[str, Any]:
        return {}
