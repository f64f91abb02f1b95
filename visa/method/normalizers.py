"""Normalisers of the base similarity (hubness reduction), the config group `normalizer`: training-free
corrections of the backbone's query x gallery similarity, applied before the top-K is taken, so that any
re-ranker then works on the corrected candidates (`normalizer=nnn reranker=visa`).

Each reads a reference bank (`visa.data.banks`: queries that are not the test queries, embedded by the
run's backbone) and the gallery's embeddings, and returns a `Correction`, which the retrieve step applies
block by block, without the full similarity matrix:

    score'(q, g) = (q - query_shift) . (g - gallery_shift) + bias[g]     (bias only where the gate lets it)

- `none`: no correction (the default; the run is exactly what it was before normalisers existed).
- `nnn`: Nearest Neighbor Normalization (Chowdhury et al., EMNLP 2024): bias[g] = -weight x the mean of
  g's k highest similarities to the bank. The bias is computed by the authors' package `nnn-retrieval`
  (`NNNRetriever.compute_alignment_means`), gallery block by gallery block.
- `qb_norm`: Querybank Normalisation with the dynamic inverted softmax (Bogolin et al., CVPR 2022): the
  inverted softmax exp(beta s(q,g)) / sum over bank queries b of exp(beta s(b,g)), used only for a query
  whose top-1 item (before normalising) is among the items that some bank query ranks in its top k (the
  "activation set"); other queries keep their scores. Written here in log space divided by beta,
  s(q,g) - logsumexp_b(beta s(b,g)) / beta, which orders every query's items exactly as the published
  ratio does and keeps scores in the backbone's units for fusion.
- `dn`: Distribution Normalization (Zhou et al., NeurIPS 2023): (q - w mu_q) . (g - w mu_g) with mu_q the
  mean of the bank's query embeddings and mu_g the mean of the gallery's embeddings, w = 1/2 in the paper.
  (mu_g only adds a constant to each query's scores: it changes no ranking.)
"""

from __future__ import annotations

import contextlib
import io
import math
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

from visa.core.devices import resolve_device
from visa.core.errors import VisaError


@dataclass
class Correction:
    """What a normaliser changes (None: nothing): shifts of the query and gallery embeddings, a bias per
    gallery item, and a gate per gallery item (QB-Norm: the bias applies to a query only when its top-1
    item before the bias is in the gate)."""

    query_shift: torch.Tensor | None = None  # [dim]
    gallery_shift: torch.Tensor | None = None  # [dim]
    bias: torch.Tensor | None = None  # [gallery]
    gate: torch.Tensor | None = None  # [gallery], bool

    def shift_queries(self, queries: torch.Tensor) -> torch.Tensor:
        """The query embeddings with query_shift subtracted (the same tensor when there is none)."""
        if self.query_shift is None:
            return queries
        return (queries.float() - self.query_shift.to(queries.device)).to(queries.dtype)

    def offsets(self, shifted_queries: torch.Tensor) -> torch.Tensor | None:
        """What the gallery shift adds to each query's scores: (q' . (g - c)) = q' . g - q' . c, a constant
        per query [queries], so the gallery is never copied; None without a gallery shift."""
        if self.gallery_shift is None:
            return None
        return -(shifted_queries.float() @ self.gallery_shift.to(shifted_queries.device))


@dataclass(frozen=True)
class Blocks:
    """How a normaliser blocks its bank x gallery work: the retrieval's block sizes and device."""

    chunk_size: int = 1024  # bank queries per block
    gallery_chunk_size: int = 16384  # gallery items per block
    device: str = "cpu"
    progress: bool = False


@runtime_checkable
class Normalizer(Protocol):
    """A normaliser: `bank` names its reference bank (None: it needs none), `bank_limit` its first N
    entries; `correction` turns the bank's and the gallery's embeddings into a Correction."""

    bank: str | None
    bank_limit: int | None

    def correction(self, bank: torch.Tensor, gallery: torch.Tensor, blocks: Blocks) -> Correction: ...


def _check_bank_setting(name: str, bank: str | None, bank_limit: int | None) -> None:
    if not isinstance(bank, str) or not bank.strip():
        raise VisaError(
            f"normalizer={name} needs a reference bank: normalizer.bank=auto (the dataset's own), "
            "split:NAME, a captions file, or demo"
        )
    if bank_limit is not None and bank_limit < 1:
        raise VisaError(f"normalizer.bank_limit={bank_limit} must be at least 1, or null for the whole bank")


class NoNormalizer:
    """normalizer=none: the backbone's similarity as it is."""

    bank: str | None = None
    bank_limit: int | None = None

    def correction(self, bank: torch.Tensor, gallery: torch.Tensor, blocks: Blocks) -> Correction:
        return Correction()


def _nnn_retriever():
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # nnn prints a line when faiss is not installed
            from nnn import NNNRetriever
    except ImportError as e:
        raise VisaError("normalizer=nnn needs the nnn-retrieval package: pip install nnn-retrieval") from e
    return NNNRetriever


class NNN:
    """normalizer=nnn: bias[g] = -weight x mean of g's `k` highest similarities to the bank (k is capped at
    the bank's size). `batch_size` gallery items are scored against the whole bank at a time (memory:
    batch_size x bank size floats)."""

    def __init__(
        self,
        bank: str | None = "auto",
        k: int = 128,
        weight: float = 0.75,
        batch_size: int = 256,
        bank_limit: int | None = None,
    ):
        _check_bank_setting("nnn", bank, bank_limit)
        if k < 1 or batch_size < 1:
            raise VisaError(f"normalizer.k={k} and normalizer.batch_size={batch_size} must be at least 1")
        if not math.isfinite(weight) or weight < 0:
            raise VisaError(f"normalizer.weight={weight} must be a finite number >= 0 (NNN's alpha; 0.75)")
        self.bank, self.bank_limit = bank, bank_limit
        self.k, self.weight, self.batch_size = k, weight, batch_size

    @torch.no_grad()
    def correction(self, bank: torch.Tensor, gallery: torch.Tensor, blocks: Blocks) -> Correction:
        retriever = _nnn_retriever()(gallery.shape[1])
        device = resolve_device(blocks.device)
        quiet = contextlib.nullcontext() if blocks.progress else contextlib.redirect_stderr(io.StringIO())
        with quiet:  # its progress bar
            means = retriever.compute_alignment_means(
                gallery.to(device).float(),
                bank.to(device).float(),
                min(self.k, bank.shape[0]),
                self.batch_size,
            )
        return Correction(bias=-self.weight * torch.as_tensor(means, dtype=torch.float32).reshape(-1))


class QBNorm:
    """normalizer=qb_norm: the dynamic inverted softmax with inverse temperature `beta` (20 in the paper's
    code); the activation set is the union of every bank query's top `k` items (1 in the paper)."""

    def __init__(
        self, bank: str | None = "auto", beta: float = 20.0, k: int = 1, bank_limit: int | None = None
    ):
        _check_bank_setting("qb_norm", bank, bank_limit)
        if not math.isfinite(beta) or beta <= 0 or k < 1:
            raise VisaError(f"normalizer.beta={beta} must be > 0 and normalizer.k={k} at least 1")
        self.bank, self.bank_limit, self.beta, self.k = bank, bank_limit, beta, k

    @torch.no_grad()
    def correction(self, bank: torch.Tensor, gallery: torch.Tensor, blocks: Blocks) -> Correction:
        log_z, active = querybank_statistics(bank, gallery, self.beta, self.k, blocks)
        return Correction(bias=-log_z / self.beta, gate=active)


@torch.no_grad()
def querybank_statistics(
    bank: torch.Tensor, gallery: torch.Tensor, beta: float, k: int, blocks: Blocks
) -> tuple[torch.Tensor, torch.Tensor]:
    """(log of sum over bank queries b of exp(beta s(b, g)) per gallery item [gallery], the activation set:
    True for the items some bank query ranks in its top k [gallery]), in one blocked pass over bank x gallery
    (memory: one block of chunk_size x gallery_chunk_size scores plus the bank's running top k)."""
    device = resolve_device(blocks.device)
    n_bank, n_items = bank.shape[0], gallery.shape[0]
    k = min(k, n_items)
    log_z = torch.empty(n_items, dtype=torch.float32)
    best_scores = torch.full((n_bank, k), float("-inf"), dtype=torch.float32, device=device)
    best_items = torch.zeros((n_bank, k), dtype=torch.long, device=device)
    for g0 in range(0, n_items, blocks.gallery_chunk_size):
        items = gallery[g0 : g0 + blocks.gallery_chunk_size].to(device).float()
        running = torch.full((items.shape[0],), float("-inf"), dtype=torch.float32, device=device)
        for b0 in range(0, n_bank, blocks.chunk_size):
            block = bank[b0 : b0 + blocks.chunk_size].to(device).float() @ items.T
            running = torch.logaddexp(running, torch.logsumexp(beta * block, dim=0))
            s, i = block.topk(min(k, block.shape[1]), dim=1)
            merged_s = torch.cat([best_scores[b0 : b0 + block.shape[0]], s], dim=1)
            merged_i = torch.cat([best_items[b0 : b0 + block.shape[0]], i + g0], dim=1)
            top_s, order = merged_s.topk(k, dim=1)
            best_scores[b0 : b0 + block.shape[0]] = top_s
            best_items[b0 : b0 + block.shape[0]] = merged_i.gather(1, order)
        log_z[g0 : g0 + items.shape[0]] = running.cpu()
    active = torch.zeros(n_items, dtype=torch.bool)
    active[best_items.flatten().cpu()] = True
    return log_z, active


class DN:
    """normalizer=dn: subtract `weight` (the paper's 1/2) x the mean of the bank's query embeddings from
    every query and `weight` x the gallery's mean embedding from every item."""

    def __init__(self, bank: str | None = "auto", weight: float = 0.5, bank_limit: int | None = None):
        _check_bank_setting("dn", bank, bank_limit)
        if not math.isfinite(weight):
            raise VisaError(f"normalizer.weight={weight} must be a finite number (DN's lambda; 0.5)")
        self.bank, self.bank_limit, self.weight = bank, bank_limit, weight

    @torch.no_grad()
    def correction(self, bank: torch.Tensor, gallery: torch.Tensor, blocks: Blocks) -> Correction:
        return Correction(
            query_shift=self.weight * bank.float().mean(0),
            gallery_shift=self.weight * gallery.float().mean(0),
        )
