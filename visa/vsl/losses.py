"""The losses: the hardest-negative triplet ranking loss (VSE++, as SCAN and SGRAF train) and the Visual
Semantic Loss (VSL, Zhang et al., ICME 2023), written anew from their papers and public code."""

from __future__ import annotations

import torch


def triplet_ranking_loss(
    scores: torch.Tensor, margin: float = 0.2, max_violation: bool = True
) -> torch.Tensor:
    """scores [n, n], image i x caption j, positives on the diagonal. Hinge on each negative of each
    positive pair, in both directions; with `max_violation` only the hardest negative counts (sum over
    the batch, not the mean, as SGRAF)."""
    positive = scores.diag()
    eye = torch.eye(scores.shape[0], dtype=torch.bool, device=scores.device)
    cost_caption = (margin + scores - positive[:, None]).clamp(min=0).masked_fill(eye, 0)  # per image row
    cost_image = (margin + scores - positive[None, :]).clamp(min=0).masked_fill(eye, 0)  # per caption column
    if max_violation:
        return cost_caption.max(1).values.sum() + cost_image.max(0).values.sum()
    return cost_caption.sum() + cost_image.sum()


def steep_sigmoid(x: torch.Tensor, temperature: float) -> torch.Tensor:
    """1 / (1 + exp(-x / T)) with the exponent clamped to +-50, as VSL computes it."""
    return 1.0 / (1.0 + torch.exp((-x / temperature).clamp(-50, 50)))


def soft_rank(sim: torch.Tensor, temperature: float = 0.001, convention: str = "paper") -> torch.Tensor:
    """Differentiable rank of each entry within its row: rank[j, k] = 1 + sum over i != k of
    sigmoid((sim[j, i] - sim[j, k]) / T), i.e. 1 + how many entries of row j score above entry k.

    `convention="code"` reproduces VSL's public code, which reads the first operand transposed:
    rank[j, k] = 1 + sum over i != k of sigmoid((sim[i, j] - sim[j, k]) / T). The two agree on symmetric
    matrices (the image-image TF-IDF matrix) and differ on the image x caption score matrix.
    """
    n = sim.shape[0]
    first = sim.T if convention == "code" else sim
    if convention not in ("paper", "code"):
        raise ValueError(f"convention={convention!r}: expected paper or code")
    diff = first.unsqueeze(2) - sim.unsqueeze(1)  # [j, i, k] = first[j, i] - sim[j, k]
    not_self = ~torch.eye(n, dtype=torch.bool, device=sim.device)  # i != k
    return (steep_sigmoid(diff, temperature) * not_self.unsqueeze(0)).sum(1) + 1


def visual_semantic_loss(
    scores: torch.Tensor,
    image_semantics: torch.Tensor,
    weight: float = 10.0,
    temperature: float = 0.001,
    convention: str = "paper",
) -> torch.Tensor:
    """VSL: for each image j of the batch, the captions k should be ranked by the model (scores[j, k])
    as the images k are ranked by their semantic (TF-IDF of the ground-truth captions) similarity to image j
    (image_semantics[j, k]). Agreement of the two soft ranks is mean(min / max); the loss is
    weight * (1 - agreement), weight 10 in VSL's code."""
    score_rank = soft_rank(scores, temperature, convention)
    semantic_rank = soft_rank(image_semantics, temperature, convention)
    agreement = (torch.minimum(score_rank, semantic_rank) / torch.maximum(score_rank, semantic_rank)).mean()
    return weight * (1 - agreement)
