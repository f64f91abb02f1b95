"""Structured generation for transformers models: a reply layout (`visa.core.layout.QuestionLayout`) as an
xgrammar grammar, applied by xgrammar's logits processor inside `generate`, so the model can only write
replies of that layout (the tokens that would leave it are masked at every step).

xgrammar compiles the grammar once per tokenizer and layout (milliseconds); the per-step mask costs about as
much as one small matrix product, far below a forward pass (experiments/questions.md has the figures).
"""

from __future__ import annotations

from typing import Any

from visa.core.errors import VisaError
from visa.core.layout import QuestionLayout
from visa.core.prompt import Prompt


def batch_layout(prompts: list[Prompt]) -> QuestionLayout | None:
    """The layout every prompt of a batch asks for, or None; a batch must agree (the ask stage sends only
    question prompts, all with one layout)."""
    layouts = {p.layout for p in prompts}
    if len(layouts) > 1:
        raise VisaError(f"one batch asks for different reply layouts {sorted(map(str, layouts))}")
    return layouts.pop() if layouts else None


def _stop_ids(lm: Any, tokenizer: Any) -> list[int]:
    """The token ids that end a reply for `generate`: the model's generation eos ids, else the tokenizer's."""
    eos = lm.generation_config.eos_token_id
    ids = eos if isinstance(eos, list) else [] if eos is None else [eos]
    if not ids and tokenizer.eos_token_id is not None:
        ids = [tokenizer.eos_token_id]
    return [int(i) for i in ids]


class GrammarCache:
    """Compiled grammars of one (tokenizer, model), per layout; built on first use."""

    def __init__(self) -> None:
        self._compiler: Any = None
        self._owner: tuple[int, int] | None = None
        self._compiled: dict[QuestionLayout, Any] = {}

    def processor(self, layout: QuestionLayout, tokenizer: Any, lm: Any) -> Any:
        """A fresh xgrammar logits processor for one `generate` call (it keeps per-row state)."""
        try:
            import xgrammar
            from xgrammar.contrib.hf import LogitsProcessor
        except ImportError as e:  # a dependency of the package; a broken install
            raise VisaError(
                "questions.constrained=true needs xgrammar: pip install xgrammar "
                "(or set questions.constrained=false)"
            ) from e
        owner = (id(tokenizer), id(lm))
        if self._owner != owner:
            vocab = lm.get_output_embeddings().weight.shape[0]  # can exceed the tokenizer's (padding rows)
            info = xgrammar.TokenizerInfo.from_huggingface(
                tokenizer, vocab_size=vocab, stop_token_ids=_stop_ids(lm, tokenizer)
            )
            self._compiler, self._owner, self._compiled = xgrammar.GrammarCompiler(info), owner, {}
        if layout not in self._compiled:
            self._compiled[layout] = self._compiler.compile_grammar(layout.ebnf())
        return LogitsProcessor(self._compiled[layout])
