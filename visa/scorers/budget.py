"""Token budgets of a cross-encoder pair: the query is cut to its own budget first, then the passage to what
is left of the pair's, so that a long query (long-caption datasets have queries of several hundred tokens)
never leaves the passage no room, and never makes the tokenizer refuse the pair."""

from __future__ import annotations

from typing import Any

from visa.core.errors import VisaError


def default_query_budget(max_length: int) -> int:
    """Three quarters of the pair's budget, as FlagEmbedding's re-rankers default to."""
    return max_length * 3 // 4


def check_budgets(query_max_length: int, max_length: int) -> None:
    # room for the special tokens of a pair (at most 4 in the usual formats) and some passage
    if not 0 < query_max_length <= max_length - 8:
        raise VisaError(
            f"scorer.query_max_length={query_max_length} must be between 1 and scorer.max_length - 8 "
            f"({max_length - 8}) so that a passage still fits"
        )


class PairBudget:
    """Base of the cross-encoder scorers: cuts queries to `query_max_length` tokens and counts what is cut.
    `truncated_queries` and `truncated_passages` are numbers of pairs scored by the object."""

    def __init__(self, query_max_length: int | None, max_length: int):
        self.query_max_length = query_max_length or default_query_budget(max_length)
        self.max_length = max_length
        check_budgets(self.query_max_length, max_length)
        self.truncated_queries = 0
        self.truncated_passages = 0

    def counters(self) -> dict[str, int]:
        return {"truncated_queries": self.truncated_queries, "truncated_passages": self.truncated_passages}

    def cut_queries(self, tokenizer, pairs: list[tuple[str, str]]) -> tuple[list[str], list[str]]:
        """(queries, passages) ready for `tokenizer(queries, passages, truncation="only_second",
        max_length=max_length)`: queries over budget end at the end of their last kept token."""
        queries, passages = [q for q, _ in pairs], [p for _, p in pairs]
        enc = tokenizer(queries, add_special_tokens=False, return_offsets_mapping=True)
        kept = []
        for text, ids, offsets in zip(queries, enc["input_ids"], enc["offset_mapping"]):
            if len(ids) > self.query_max_length:
                self.truncated_queries += 1
                text = text[: offsets[self.query_max_length - 1][1]]
            kept.append((text, min(len(ids), self.query_max_length)))
        passage_lengths = [len(ids) for ids in tokenizer(passages, add_special_tokens=False)["input_ids"]]
        specials = tokenizer.num_special_tokens_to_add(pair=True)
        self.truncated_passages += sum(
            q_len + p_len + specials > self.max_length for (_, q_len), p_len in zip(kept, passage_lengths)
        )
        return [text for text, _ in kept], passages

    def encode_pairs(self, tokenizer, pairs: list[tuple[str, str]], return_tensors: str) -> Any:
        """The tokenizer's batch of `pairs`: queries cut to their budget, passages to what is left."""
        queries, passages = self.cut_queries(tokenizer, pairs)
        return tokenizer(
            queries,
            passages,
            padding=True,
            truncation="only_second",
            max_length=self.max_length,
            return_tensors=return_tensors,
        )
