"""Sampling whose noise belongs to one prompt: a reply depends on its prompt and settings, never on the other
prompts of its batch or on the order in which batches were made (one command, one result).

`generate(do_sample=True)` draws every row's token from one random stream shared by the batch, so a prompt's
reply changes with its batch-mates. Here each row has its own generator, seeded from the row's prompt and
seed, and samples by the Gumbel-max trick inside greedy decoding: argmax(logits / T + Gumbel noise) is a draw
from softmax(logits / T) (restricted to the top-p nucleus first). Rows at temperature 0 get no noise."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch


def row_seed(prompt_key: str, seed: int) -> int:
    """A 63-bit seed from a prompt's identity and the request's seed (each retry of a prompt its own)."""
    digest = hashlib.sha256(f"{seed}\x00{prompt_key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & ((1 << 63) - 1)


def nucleus(scores: torch.Tensor, top_p: float) -> torch.Tensor:
    """`scores` with the tokens outside the smallest set of probability >= top_p set to -inf (one row)."""
    if top_p >= 1.0:
        return scores
    ordered, order = torch.sort(scores, descending=True)
    cumulative = torch.softmax(ordered, dim=-1).cumsum(dim=-1)
    drop = cumulative - torch.softmax(ordered, dim=-1) >= top_p  # the mass before a token already reaches p
    drop[..., 0] = False  # the likeliest token always stays
    return scores.masked_fill(drop.scatter(-1, order, drop), float("-inf"))


class PerPromptSampler:
    """A transformers logits processor (last in the list, with greedy decoding) that samples each row with
    its own noise: row i at `temperatures[i]` (0: greedy) and `top_p`, from a generator seeded `seeds[i]`."""

    def __init__(self, temperatures: Sequence[float], seeds: Sequence[int], top_p: float = 1.0):
        if len(temperatures) != len(seeds):
            raise ValueError("one temperature and one seed per row")
        self.temperatures = list(temperatures)
        self.top_p = top_p
        self.generators = [torch.Generator().manual_seed(s) for s in seeds]

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        out = scores.clone()
        for row, (temperature, generator) in enumerate(zip(self.temperatures, self.generators)):
            if temperature <= 0:
                continue
            logits = nucleus(scores[row].float() / temperature, self.top_p)
            # noise drawn on the CPU from the row's own generator: the same on every device and batch
            uniform = torch.rand(logits.shape, generator=generator).clamp_(min=1e-20)
            gumbel = -torch.log(-torch.log(uniform)).to(logits.device)
            out[row] = (logits + gumbel).to(scores.dtype)
        return out
