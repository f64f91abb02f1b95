"""The layout a reply must have, for structured generation: what a generator hands to its engine so that the
model can only write a reply of that shape (a grammar for transformers models through xgrammar, a JSON schema
or a regular expression for servers).

`QuestionLayout` is the question LLM's reply (the method's layout, visa/method/prompts.py):

    key phrases:
    - <phrase>
    - <phrase>
    questions:
    1. <question ending in "?">
    2. <question ending in "?">
    3. <question ending in "?">

with 1 to `max_phrases` key phrases and exactly `questions` questions, each on one line. Every line is
bounded in length, so a reply always ends (a model cannot write one phrase forever). As a JSON schema the
same reply is `{"key_phrases": [...], "questions": [...]}` (what sglang and vLLM constrain to); the parser
reads both.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

# A character of a phrase or question: printable ASCII but "?" (which ends a question); no line break. (ASCII:
# a character is then one byte, so the longest reply in tokens is bounded by `longest()`.)
_TEXT = "[ ->@-~]"
# The JSON form's field names (the parser in visa/method/replies.py reads them).
PHRASES_FIELD = "key_phrases"
QUESTIONS_FIELD = "questions"


@dataclass(frozen=True)
class QuestionLayout:
    """Key phrases, then exactly `questions` numbered questions, each one line ending in "?"."""

    questions: int
    max_phrases: int = 3
    phrase_chars: int = 40  # longest key phrase
    question_chars: int = 100  # longest question

    def __post_init__(self) -> None:
        if self.questions < 1 or self.max_phrases < 1 or self.phrase_chars < 1 or self.question_chars < 4:
            raise ValueError(f"{self} asks for an empty reply")

    def as_key(self) -> dict[str, Any]:
        """What the cache key records of the layout (all of it changes the replies)."""
        return {
            "layout": "questions",
            "questions": self.questions,
            "max_phrases": self.max_phrases,
            "phrase_chars": self.phrase_chars,
            "question_chars": self.question_chars,
        }

    def longest(self) -> int:
        """The most characters a reply of this layout can have: a generator whose max_new_tokens is at least
        this can never cut a constrained reply short (a token is at least one character here)."""
        phrases = len("key phrases:\n") + self.max_phrases * (len("- \n") + self.phrase_chars)
        questions = len("questions:\n") + self.questions * (len("10. \n") + self.question_chars)
        return phrases + questions

    def ebnf(self) -> str:
        """The layout as an EBNF grammar (xgrammar's dialect: `root` is the start rule)."""
        numbered = ' "\\n" '.join(f'"{i}. " question' for i in range(1, self.questions + 1))
        return "\n".join(
            [
                f'root ::= "key phrases:\\n" phrase{{1,{self.max_phrases}}} "questions:\\n" {numbered}',
                f'phrase ::= "- " {_TEXT}{{1,{self.phrase_chars}}} "\\n"',
                f'question ::= [A-Z] {_TEXT}{{2,{self.question_chars - 2}}} "?"',
            ]
        )

    def regex(self) -> str:
        """The layout as one regular expression over the whole reply (sglang's `regex` request field)."""
        numbered = "\\n".join(
            f"{i}\\. [A-Z]{_TEXT}{{2,{self.question_chars - 2}}}\\?" for i in range(1, self.questions + 1)
        )
        phrase = f"- {_TEXT}{{1,{self.phrase_chars}}}\\n"
        return f"key phrases:\\n(?:{phrase}){{1,{self.max_phrases}}}questions:\\n{numbered}"

    def json_schema(self) -> dict[str, Any]:
        """The layout as a JSON schema: {"key_phrases": [...], "questions": [...]}."""
        return {
            "type": "object",
            "properties": {
                PHRASES_FIELD: {
                    "type": "array",
                    "items": {"type": "string", "minLength": 1, "maxLength": self.phrase_chars},
                    "minItems": 1,
                    "maxItems": self.max_phrases,
                },
                QUESTIONS_FIELD: {
                    "type": "array",
                    "items": {
                        "type": "string",
                        "pattern": f"^[A-Z]{_TEXT}*\\?$",
                        "minLength": 4,
                        "maxLength": self.question_chars,
                    },
                    "minItems": self.questions,
                    "maxItems": self.questions,
                },
            },
            "required": [PHRASES_FIELD, QUESTIONS_FIELD],
            "additionalProperties": False,
        }

    def matches(self, reply: str) -> bool:
        """Whether a text reply has this layout (what a constrained engine guarantees)."""
        return re.fullmatch(self.regex(), reply) is not None
