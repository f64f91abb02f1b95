"""`reranker=pointwise`: INQUIRE's re-rank protocol (NeurIPS 2024 D&B). A vision-language model (the run's
`judge`) is asked, for each query and each of its top-K items, whether the item shows the query and to answer
Yes or No; the candidate's score is P(Yes) / (P(Yes) + P(No)) of the reply's first token (transformers: the
first step's logits; a served model: its `top_logprobs`). Images and video frames go to the judge as the
answer stage sends them. A text-only judge with `uses_context: true` reads each item's description instead
(the offline demo's stand-in: SmolLM2-135M over the pixel describer's descriptions)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from visa.core.errors import VisaError
from visa.core.prompt import Prompt
from visa.data import Item
from visa.generation import Generator, YesNoScorer
from visa.method.keys import item_fingerprint
from visa.method.passages import composed_query_text
from visa.method.rerankers import Scored, candidates, scored_pairs
from visa.method.rerankers.visa import describe_candidates
from visa.method.stages import Run

# The question asked of every (query, item); the query goes last so that an item's prompts share a prefix.
PROMPT = 'Does this {kind} show the following? Answer with "Yes" or "No" only.\n{query}'


class PointwiseReranker:
    uses: tuple[str, ...] = ("judge", "describer")
    label = "pointwise P(Yes)"

    def __init__(self, judge: Generator, describer: Generator, positive: str = "Yes", negative: str = "No"):
        if not isinstance(judge, YesNoScorer):
            raise VisaError(
                f"reranker=pointwise: judge {type(judge).__name__} cannot give first-token probabilities "
                "(P(Yes)); choose a transformers or OpenAI-compatible judge (judge=demo offline)"
            )
        self.judge, self.describer, self.yes, self.no = judge, describer, positive, negative
        self.descriptions: dict[str, str] = {}
        self.query_texts: dict[int, str] = {}

    def prepare(self, run: Run, top: torch.Tensor, queries: Sequence[int]) -> None:
        """A judge that reads descriptions gets the candidates described first (as VISA's describe stage,
        under the same keys); one that sees the pixels needs nothing before the blocks."""
        dataset = run.dataset
        if self.judge.uses_context or any(q.reference is not None for q in dataset.queries):
            self.descriptions = describe_candidates(run, self.describer, top)
        self.query_texts = {q: composed_query_text(dataset.queries[q], self.descriptions) for q in queries}

    def score(self, run: Run, queries: Sequence[int], top: torch.Tensor, base: torch.Tensor) -> Scored:
        pairs = candidates(run, queries, top)
        prompts = [self.prompt(q, item) for q, item in pairs]
        fingerprints = [item_fingerprint(item) for _, item in pairs]
        p_yes = run.judge(self.judge, prompts, fingerprints, self.yes, self.no)
        return scored_pairs(p_yes, queries, top, "p_yes")

    def prompt(self, q: int, item: Item) -> Prompt:
        """The judge's question about one candidate: a text item goes as context, media as media (or as its
        description, for a judge that reads descriptions)."""
        text = PROMPT.format(kind=item.kind, query=self.query_texts[q])
        if item.kind == "text":
            return Prompt(text, context=item.text or "")
        context = self.descriptions.get(item.id) if self.judge.uses_context else None
        return Prompt(text, (item.path,), item.kind, context=context)

    def metrics(self) -> dict[str, Any]:
        return {}
