"""P(Yes): how likely a chat model's reply starts with given words, read from its first decoding step.

This is INQUIRE's re-rank protocol (Vendrow et al., NeurIPS 2024 D&B, `src/lmm_utils.py` of its repository):
ask a vision-language model whether the picture shows the query, answer "Yes" or "No", and score
P(Yes) / (P(Yes) + P(No)) from the probabilities of the first generated token. Nothing is sampled:

- transformers models (`visa.generation.hf`): one forward pass per prompt (a padded batch rounds differently
  from one prompt, and a score must not depend on its batch-mates), the first step's raw logits (before any
  logits processor), softmax over the vocabulary;
- OpenAI-compatible servers (`visa.generation.openai_api`): `max_tokens: 1, logprobs: true,
  top_logprobs: N`, the first token's `top_logprobs` (sglang and vLLM return them; `transformers serve`
  does not). A word that is not among the N listed tokens counts as probability 0, as INQUIRE reads GPT-4o.

A word's probability is the sum over the tokens that spell it up to case and a leading space ("Yes", " Yes",
"yes", " YES", ...): tokenizers differ in which of them a model emits first, and a server names each listed
token by its text. The ratio ignores every other token, so P(Yes) + P(No) (the mass the two words hold) is
returned alongside for a caller that wants to flag prompts the model answers otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from visa.core.errors import VisaError

# Markers some tokenizers put before a word to say it follows a space (byte-level BPE, SentencePiece); a
# server may name a listed token by these raw pieces instead of its decoded text.
_SPACE_MARKERS = ("Ġ", "▁")


def normal(token: str) -> str:
    """A token's text as compared with a word: without surrounding spaces or a space marker, lower case."""
    text = token.strip()
    for marker in _SPACE_MARKERS:
        text = text.removeprefix(marker)
    return text.strip().lower()


def spellings(word: str) -> list[str]:
    """The spellings of `word` looked up in a vocabulary: as given, lower, capitalised and upper case, each
    alone and after a space."""
    forms = dict.fromkeys([word, word.lower(), word.capitalize(), word.upper()])
    return [f"{space}{form}" for form in forms for space in ("", " ")]


def word_token_ids(tokenizer, word: str, model: str) -> list[int]:
    """The ids of the single tokens that spell `word` (`spellings`), each once. A spelling the tokenizer
    splits into several tokens, or maps to its unknown token, is not one of them."""
    ids: list[int] = []
    for text in spellings(word):
        encoded = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(encoded) == 1 and encoded[0] not in ids and normal(tokenizer.decode(encoded)) == normal(word):
            ids.append(encoded[0])
    if not ids:
        raise VisaError(
            f"{word!r} is not a single token of {model}'s tokenizer in any case, with or without a leading "
            "space; pick answer words that are (e.g. yes=Yes no=No)"
        )
    return ids


def probs_from_logprobs(
    logprobs: torch.Tensor, tokenizer, words: Sequence[str], model: str
) -> list[list[float]]:
    """Per row of `logprobs` [rows, vocab] (log-softmax of the first step), each word's probability."""
    columns = []
    for word in words:
        ids = torch.tensor(word_token_ids(tokenizer, word, model), device=logprobs.device)
        columns.append(logprobs.index_select(-1, ids).exp().sum(-1))
    return torch.stack(columns, dim=-1).double().cpu().tolist()


def probs_from_top_logprobs(top: Sequence[dict], words: Sequence[str]) -> list[float]:
    """Each word's probability from one token's `top_logprobs` list ({"token": str, "logprob": float}, as
    the OpenAI chat API returns it): the sum over the listed tokens that spell the word, 0 when none does."""
    out = []
    for word in words:
        wanted = normal(word)
        out.append(sum(math.exp(entry["logprob"]) for entry in top if normal(entry["token"]) == wanted))
    return out


def yes_ratio(p_yes: float, p_no: float) -> float:
    """P(Yes) / (P(Yes) + P(No)); 0 when neither word has any probability (INQUIRE scores a reply whose
    listed tokens hold no "Yes" as 0)."""
    total = p_yes + p_no
    return p_yes / total if total > 0 else 0.0


def yes_ratios(probs: Sequence[Sequence[float]]) -> list[float]:
    """`yes_ratio` of each row of (P(yes), P(no)) pairs."""
    return [yes_ratio(row[0], row[1]) for row in probs]


@torch.no_grad()
def first_step_logprobs(lm, enc: dict, pad_token_id: int | None) -> torch.Tensor:
    """Log-softmax of the first decoding step's raw logits [rows, vocab], float32.

    `generate` with one new token and no sampling builds positions (rotary and M-RoPE alike) and the media
    inputs exactly as a reply's first step sees them; `output_logits` are the model's logits before any
    logits processor (the models' suppressed tokens, repetition penalty), as a server's logprobs are."""
    out = lm.generate(
        **enc,
        max_new_tokens=1,
        do_sample=False,
        temperature=None,
        top_p=None,
        top_k=None,
        output_logits=True,
        return_dict_in_generate=True,
        pad_token_id=pad_token_id,
    )
    return torch.log_softmax(out.logits[0].float(), dim=-1)


# Identity keys that change how a reply is sampled but not its first step's probabilities.
_SAMPLING_KEYS = ("max_new_tokens", "temperature", "top_p", "seed", "repetition_penalty", "noise")


def scoring_identity(identity: dict, yes: str, no: str, **extra) -> dict:
    """A generator's identity as a P(Yes) scorer: without its sampling settings, with the answer words and
    what else changes the probabilities (`extra`, e.g. a server's top_logprobs)."""
    kept = {k: v for k, v in identity.items() if k not in _SAMPLING_KEYS}
    return {**kept, "score": "first_token_yes_no", "yes": yes, "no": no, **extra}
