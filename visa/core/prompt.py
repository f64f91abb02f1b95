"""The request every generator takes (`Prompt`), at the bottom of the house so that the generators and the
method both import it without either reaching into the other."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from visa.core.layout import QuestionLayout

# The answerer's word for "cannot tell from the item" (the method's convention; the re-ranker's passage
# leaves such answers out).
UNCERTAIN = "Uncertain"


@dataclass(frozen=True)
class Prompt:
    """One generation request: media first (for prefix caching), then the text.

    `seed` and `temperature`, when set, override the generator's own for this request (a question retry
    re-samples with a new seed); they are part of the cache key only when set, so ordinary requests keep
    their keys. `layout`, when set, is the layout the reply must have (structured generation: the generator
    constrains its model to it); it too is part of the cache key only when set."""

    text: str
    media: tuple[str, ...] = ()  # image paths, or a single video path
    media_kind: str | None = None  # "image" | "video" | None
    context: str | None = None  # a text stand-in for the media, for text-only ("Socratic") answerers
    seed: int | None = None
    temperature: float | None = None
    layout: QuestionLayout | None = None

    def as_key(self) -> dict[str, Any]:
        key: dict[str, Any] = {
            "text": self.text,
            "media": list(self.media),
            "media_kind": self.media_kind,
            "context": self.context,
        }
        if self.seed is not None or self.temperature is not None:
            key["sampling"] = {"seed": self.seed, "temperature": self.temperature}
            if self.temperature:  # sampled with noise of its own (replies of the batch-shared stream differ)
                key["sampling"]["noise"] = "per_prompt"
        if self.layout is not None:
            key["layout"] = self.layout.as_key()
        return key
