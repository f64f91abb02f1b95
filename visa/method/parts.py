"""The parts of a run, typed by the Protocols that their packages declare. The pipeline reaches a part only
through these types; an optional ability (a server to close, counters to report, a pairwise matcher instead
of a dual encoder) is a Protocol of its own, checked with `isinstance`."""

from __future__ import annotations

from dataclasses import dataclass, field

from visa.backbones import Backbone
from visa.data.banks import Bank
from visa.generation import Closable, Counting
from visa.method.fusion import Fusion
from visa.method.normalizers import NoNormalizer, Normalizer
from visa.method.pairwise import PairwiseBackbone
from visa.method.rerankers import Reranker


@dataclass
class Components:
    """The models of a run: the backbone that retrieves, the re-ranker of each query's top-K and the fusion
    of their scores, each a class that satisfies its Protocol."""

    backbone: Backbone | PairwiseBackbone
    reranker: Reranker
    fusion: Fusion
    # the base similarity's normaliser and its reference bank (None: normalizer=none)
    normalizer: Normalizer = field(default_factory=NoNormalizer)
    bank: Bank | None = None

    def close(self) -> None:
        """Let every part that started something (a launched server) stop it."""
        for part in (self.backbone, self.reranker):
            if isinstance(part, Closable):
                part.close()

    def counters(self) -> dict[str, int]:
        """The parts' own counters as metrics (the re-ranker's: its models')."""
        return self.reranker.counters() if isinstance(self.reranker, Counting) else {}
