"""What VISA's text stages read: the re-ranker's passage about a candidate (`build_passage`: its answers,
then its own text and description), and, on hybrid-modal data, what they see when a query carries a
reference item or a gallery item carries text (see docs/composed.md).

- A composed query's target is "the reference, changed as the text says". The text-only stages (question
  LLM, re-ranker) cannot see the reference image, so they get its general description (the describe
  stage's, the same one candidates get) with the modification text: `composed_query_text`.
- A gallery item's own text (a caption, a passage) is part of what the re-ranker reads about it: it goes
  ahead of the item's description in the passage. A text-only item's description is its text.
"""

from __future__ import annotations

import re

from visa.core.prompt import UNCERTAIN
from visa.data import Item, Query


def composed_query_text(query: Query, descriptions: dict[str, str]) -> str:
    """The query as the question LLM and the re-ranker read it: the query text alone, or for a composed
    query the reference's description followed by the requested change."""
    if query.reference is None:
        return query.text
    reference = " ".join(descriptions[query.reference.id].split()).rstrip(".")
    change = query.text.strip().rstrip(".")
    return f"{reference}, but changed as follows: {change}."


def query_item(query: Query) -> Item:
    """A composed query as the item the backbone embeds: the reference's media with the query's text."""
    assert query.reference is not None
    ref = query.reference
    return Item(id=ref.id, path=ref.path, kind=ref.kind, text=query.text)


def item_passage_text(item: Item, description: str) -> str:
    """What the re-ranker reads about an item after the answers: its own text, then its description."""
    if item.kind == "text" or not item.text:
        return description
    return f"{item.text.strip()} {description.strip()}"


def build_passage(answers: list[str], description: str, use_answers: bool, separator: str = "") -> str:
    """The re-ranker's passage: the answers with the word "Uncertain" removed, then the description.

    With `separator=""` (the reference) the answers, each with the literal word "Uncertain" deleted, and the
    description are concatenated as they are: "A dog.It is brown.A park.". With any other separator the word
    is removed with the punctuation that follows it (in any case), and the non-empty pieces, each stripped,
    are joined by the separator. A query whose questions fell back (`use_answers=False`) gets the
    description alone, as in the reference."""
    if separator == "":
        kept = [a.replace(UNCERTAIN, "") for a in answers] if use_answers else []
        return "".join([*kept, description])
    pieces = (
        [re.sub(rf"\b{UNCERTAIN}\b[.!]?", "", a, flags=re.IGNORECASE) for a in answers] if use_answers else []
    )
    pieces = [p.strip() for p in [*pieces, description]]
    return separator.join(p for p in pieces if p)
