"""Text and vision-language generation: the question LLM, the answering MLLM and the describer.

One class per backend, selected by `_target_` in the yaml (`conf/question_llm/`, `conf/answer_mllm/`,
`conf/describer/`); each class's keys are checked against its own signature at start-up:

- `visa.generation.hf.HFTextGenerator`: a text chat LLM through transformers (also GGUF files);
- `visa.generation.hf.HFVisionGenerator`: a vision-language chat model through transformers;
- `visa.generation.openai_api.OpenAIChatGenerator`: any OpenAI-compatible server (sglang, vLLM,
  `transformers serve`), attached by `url` or launched from `server` (`visa.generation.sglang.SGLangServer`);
- `visa.generation.pixel_describer.PixelDescriber`: the demo's describer (facts measured on the pixels);
  `visa.generation.label_describer.LabelDescriber`: the earlier labels-only one (an ImageNet classifier's);
- `visa.generation.evidence_answerer.EvidenceAnswerer`: the demo's answerer (quotes the description).

`HFTextGenerator`, `HFVisionGenerator` and `OpenAIChatGenerator` are also `YesNoScorer`s: the probability
that a reply starts with "Yes" or "No" (INQUIRE's pointwise re-rank score; `visa.generation.yes_no`).

The chat backends share their sampling and media settings, `identity()` and message building through
`visa.generation.chat.ChatSettings`. Constructors only store settings; weights load (or servers start) on
first use, so a fully cached run loads no model.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol, runtime_checkable

from visa.core.abilities import Closable, Counting
from visa.core.prompt import Prompt


@runtime_checkable
class Generator(Protocol):
    """What the pipeline needs of a generator."""

    batch_size: int  # prompts per generate() call
    uses_context: bool  # True: reads Prompt.context (the item's description) instead of the pixels

    def identity(self) -> dict:
        """Model id, dtype, generation parameters: all that changes the replies (the cache key)."""
        ...

    def generate(self, prompts: list[Prompt]) -> list[str]:
        """One reply per prompt, same order."""
        ...


@runtime_checkable
class StreamingGenerator(Generator, Protocol):
    """Optional ability (servers): replies as they complete, which the stage cache stores as they arrive;
    each (index, reply) or (index, reply, Cost) with the reply's tokens (`visa.cache.cost`)."""

    def stream(self, prompts: list[Prompt]) -> Iterator[tuple]: ...


@runtime_checkable
class YesNoScorer(Protocol):
    """Optional ability (transformers models, OpenAI-compatible servers that return logprobs): how likely a
    reply starts with given words, read from the first decoding step without sampling (INQUIRE's P(Yes)
    re-rank protocol; `visa.generation.yes_no`). A pointwise re-ranker checks a generator for it."""

    batch_size: int
    uses_context: bool

    def yes_no_identity(self, yes: str, no: str) -> dict:
        """All that changes the probabilities (the cache key): the model and what it is shown, not how it
        samples."""
        ...

    def first_token_probs(self, prompts: list[Prompt], words: Sequence[str]) -> list[list[float]]:
        """Per prompt, each word's probability as the reply's first token (any case, with or without a
        leading space; 0 for a served word outside top_logprobs)."""
        ...

    def yes_no(self, prompts: list[Prompt], yes: str = "Yes", no: str = "No") -> list[float]:
        """Per prompt, P(yes) / (P(yes) + P(no)) of the first token (0 when both are 0)."""
        ...


# A generator may also report the tokens of its last generate() (`visa.cache.cost.CostReporting`), and be
# `Closable` (a launched server stops at the end of the run) and `Counting` (its
# counters go to metrics.json as generation/<part>/<name>).
__all__ = ["Closable", "Counting", "Generator", "StreamingGenerator", "YesNoScorer"]
