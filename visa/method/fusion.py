"""Fusing the backbone's similarity with the text re-ranker's score inside each query's top-K."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

from visa.core.errors import VisaError


def minmax(x: torch.Tensor) -> torch.Tensor:
    """Min-max normalise each row to [0, 1]; a row whose values are all equal becomes 0."""
    low = x.min(dim=-1, keepdim=True).values
    span = x.max(dim=-1, keepdim=True).values - low
    return torch.where(span > 0, (x - low) / span.clamp_min(1e-12), torch.zeros_like(x))


@runtime_checkable
class Fusion(Protocol):
    """What the pipeline needs of a fusion: the fused score [queries, K] of base and re-ranker scores, each
    query's row from its own row alone (the pipeline fuses a block of queries at a time)."""

    def __call__(self, base: torch.Tensor, text: torch.Tensor) -> torch.Tensor: ...


class MinMaxFusion:
    """final = (1 - alpha) * minmax(base) + alpha * minmax(text), per query over its top-K.

    alpha = 0.5 is the paper's equal weighting; alpha = 0 keeps the backbone's order.
    """

    def __init__(self, alpha: float = 0.5):
        if not 0.0 <= alpha <= 1.0:
            raise VisaError(f"fusion.alpha={alpha} is outside [0, 1]")
        self.alpha = alpha

    def __call__(self, base: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        return (1 - self.alpha) * minmax(base.float()) + self.alpha * minmax(text.float())


def rerank(candidates: torch.Tensor, fused: torch.Tensor) -> torch.Tensor:
    """Reorder the first fused.shape[1] columns of `candidates` by fused score (ties keep base order);
    the columns after them (retrieved beyond K) keep their base order."""
    k = fused.shape[1]
    order = torch.sort(fused, dim=1, descending=True, stable=True).indices
    return torch.cat([candidates[:, :k].gather(1, order), candidates[:, k:]], dim=1)
