"""The parts of a run, typed by the Protocols that their packages declare. The pipeline reaches a part only
through these types; an optional ability (a server to close, counters to report, a pairwise matcher instead
of a dual encoder) is a Protocol of its own, checked with `isinstance`."""

from __future__ import annotations

from dataclasses import dataclass, field

from visa.backbones import Backbone
from visa.data.banks import Bank
from visa.generation import Closable, Counting, Generator
from visa.method.fusion import Fusion
from visa.method.normalizers import NoNormalizer, Normalizer
from visa.method.pairwise import PairwiseBackbone
from visa.scorers import Scorer


@dataclass
class Components:
    """The models of a run, each a class that satisfies its group's Protocol."""

    backbone: Backbone | PairwiseBackbone
    question_llm: Generator
    answer_mllm: Generator
    describer: Generator
    scorer: Scorer
    fusion: Fusion
    # the base similarity's normaliser and its reference bank (None: normalizer=none)
    normalizer: Normalizer = field(default_factory=NoNormalizer)
    bank: Bank | None = None

    def generators(self) -> dict[str, Generator]:
        return {
            "question_llm": self.question_llm,
            "answer_mllm": self.answer_mllm,
            "describer": self.describer,
        }

    def close(self) -> None:
        """Let every part that started something (a launched server) stop it."""
        for part in (self.backbone, *self.generators().values(), self.scorer):
            if isinstance(part, Closable):
                part.close()

    def counters(self) -> dict[str, int]:
        """The parts' own counters as metrics: the generators' (e.g. malformed replies, retried requests),
        the scorer's (pairs cut to its token budgets)."""
        out = {}
        named = [(f"generation/{group}", part) for group, part in self.generators().items()]
        for prefix, part in [*named, ("score", self.scorer)]:
            if isinstance(part, Counting):
                for name, value in part.counters().items():
                    out[f"{prefix}/{name}"] = value
        return out
