"""The prompts of the method (written for this project) and the parsing of the models' replies."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

UNCERTAIN = "Uncertain"

# Used when a question LLM's reply cannot be parsed; such a query's answers are left out at scoring time.
FALLBACK_QUESTIONS = (
    "What is the main subject of this image?",
    "What actions are taking place in this image?",
    "How do the objects in this image interact with each other?",
)

DESCRIBE_PROMPT = (
    "Describe this image in detail. Cover the main objects and people, their attributes (colour, size, "
    "number), what they are doing, how they relate to each other, and the place and setting."
)

_QUESTION_PROMPT = """\
We want to check whether a picture matches a search query.
First list the key phrases of the query: its objects, attributes, actions, places and interactions.
Then write {n} short questions about those key phrases. Each question must be answerable by looking at \
the picture: the thing asked about is either visible or clearly missing. Ask "how many" only if the query \
states a number. Do not simply turn the query into a question.
Reply in this format and nothing else:
key phrases:
- <phrase>
questions:
1. <question>

Example query: "Two dogs run across a snowy field."
key phrases:
- two dogs
- running
- snowy field
questions:
1. How many dogs are in the picture?
2. Are the animals running?
3. Is the ground covered with snow?

Query: "{query}"
"""

_ANSWER_PROMPT = """\
Answer the question about this {kind} in one full sentence, not just yes or no. \
If the {kind} does not let you tell, or shows nothing related to {phrases}, answer with the single word \
"{uncertain}".
Question: {question}"""


@dataclass(frozen=True)
class Prompt:
    """One generation request: media first (for prefix caching), then the text."""

    text: str
    media: tuple[str, ...] = ()  # image paths, or a single video path
    media_kind: str | None = None  # "image" | "video" | None
    context: str | None = None  # a text stand-in for the media, for text-only ("Socratic") answerers

    def as_key(self) -> dict:
        return {
            "text": self.text,
            "media": list(self.media),
            "media_kind": self.media_kind,
            "context": self.context,
        }


@dataclass
class Questions:
    key_phrases: list[str]
    questions: list[str]
    parsed: bool  # False: the generic fallback questions are used and the answers are ignored
    raw: str = field(default="", repr=False)


# A prompt that a very small model (the demo's SmolLM2-135M) can follow: short instructions, then worked
# examples in exactly the reply format, so the model continues the pattern. Its examples are generic scenes,
# written for this prompt (not taken from any dataset's captions).
_FEWSHOT_QUESTION_PROMPT = """\
List the key phrases of the query, then write {n} short yes/no questions that check them in a picture.

Query: "A man in a yellow raincoat walks a brown dog along a sandy beach."
key phrases:
- man in a yellow raincoat
- brown dog
- sandy beach
questions:
1. Is there a man in a yellow raincoat?
2. Is there a brown dog?
3. Is the place a sandy beach?

Query: "Black and white photo of an old stone bridge over a river."
key phrases:
- black and white photo
- old stone bridge
- river
questions:
1. Is the photo black and white?
2. Is there an old stone bridge?
3. Is there a river?

Query: "Three red apples in a bowl on a wooden table."
key phrases:
- red apples
- bowl
- wooden table
questions:
1. Are there red apples?
2. Is there a bowl?
3. Is there a wooden table?

Query: "{query}"
"""

# questions.prompt: "paper" (the method's instructions with one example) or "fewshot" (for small models)
QUESTION_PROMPTS = {"paper": _QUESTION_PROMPT, "fewshot": _FEWSHOT_QUESTION_PROMPT}


def question_prompt(query: str, n: int, template: str = "paper") -> Prompt:
    return Prompt(text=QUESTION_PROMPTS[template].format(n=n, query=query.replace('"', "'")))


_PREFIX = re.compile(r"^\s*(?:[-*\u2022]\s*|\d+[.):]\s*|q(?:uestion)?\s*\d*\s*[:.)]\s*)+", re.IGNORECASE)
_EXAMPLE_QUESTIONS = {  # questions of the prompts' worked examples: a reply that copies them did not parse
    line.split(". ", 1)[1]
    for template in QUESTION_PROMPTS.values()
    for line in template.splitlines()
    if re.match(r"^\d\. \S.*\?$", line)
}


def _items(block: str) -> list[str]:
    """The entries of a list, with bullets, numbers, "Question:" labels and quotes stripped."""
    return [_PREFIX.sub("", line).strip().strip("\"'").strip() for line in block.splitlines()]


def _split(reply: str) -> tuple[str, str]:
    """(key phrase block, question block) of a reply; the question block is the whole reply if unlabelled."""
    heading = re.search(r"questions?\s*:\s*$", reply, re.IGNORECASE | re.MULTILINE)
    phrases = re.search(r"key\s*phrases\s*:", reply, re.IGNORECASE)
    if heading is None:
        return (reply[phrases.end() :] if phrases else ""), reply
    start = phrases.end() if phrases and phrases.end() <= heading.start() else heading.start()
    return reply[start : heading.start()], reply[heading.end() :]


def parse_questions(reply: str, n: int) -> Questions:
    """Key phrases and the first n distinct questions of a reply; the generic fallback if fewer than n.

    Questions copied from the prompt's worked example do not count.
    """
    phrase_block, question_block = _split(reply)
    phrases = [p for p in _items(phrase_block) if p and not p.endswith("?") and len(p.split()) <= 8]
    questions = [
        q
        for q in _items(question_block)
        if q.endswith("?") and len(q.split()) >= 3 and q not in _EXAMPLE_QUESTIONS
    ]
    questions = list(dict.fromkeys(questions))  # drop repeats, keep order
    if len(questions) < n:
        return Questions(key_phrases=phrases, questions=list(FALLBACK_QUESTIONS[:n]), parsed=False, raw=reply)
    return Questions(key_phrases=phrases, questions=questions[:n], parsed=True, raw=reply)


def answer_prompt(question: str, key_phrases: list[str], media: tuple[str, ...], kind: str) -> Prompt:
    phrases = ", ".join(f'"{p}"' for p in key_phrases) if key_phrases else "the question"
    text = _ANSWER_PROMPT.format(kind=kind, phrases=phrases, uncertain=UNCERTAIN, question=question)
    return Prompt(text=text, media=media, media_kind=kind)


_ALL_ANSWERS_PROMPT = """\
Answer each question about this {kind} in one full sentence, not just yes or no. \
If the {kind} does not let you tell, or shows nothing related to {phrases}, answer that question with the \
single word "{uncertain}".
Reply with one numbered line per question, in order, and nothing else:
{numbered}"""


def all_answers_prompt(
    questions: list[str], key_phrases: list[str], media: tuple[str, ...], kind: str
) -> Prompt:
    """One request for all of a query's questions about one item (answers.mode=per_candidate): the model
    sees the item once instead of once per question."""
    phrases = ", ".join(f'"{p}"' for p in key_phrases) if key_phrases else "the questions"
    numbered = "\n".join(f"{i}. {q}" for i, q in enumerate(questions, 1))
    text = _ALL_ANSWERS_PROMPT.format(kind=kind, phrases=phrases, uncertain=UNCERTAIN, numbered=numbered)
    return Prompt(text=text, media=media, media_kind=kind)


_NUMBERED = re.compile(r"^\s*(?:answer\s*)?(\d+)\s*[.):]\s*(.*)$", re.IGNORECASE)


def parse_all_answers(reply: str, n: int) -> list[str]:
    """The n answers of a numbered reply to `all_answers_prompt`; a missing number reads "Uncertain".

    Lines without a number continue the answer above them; an unnumbered single-answer reply to a single
    question is taken whole."""
    answers: dict[int, list[str]] = {}
    current = None
    for line in reply.splitlines():
        match = _NUMBERED.match(line)
        if match and 1 <= int(match.group(1)) <= n and int(match.group(1)) not in answers:
            current = int(match.group(1))
            answers[current] = [match.group(2).strip()]
        elif current is not None and line.strip():
            answers[current].append(line.strip())
    if not answers and n == 1 and reply.strip():
        return [reply.strip()]
    return [" ".join(answers.get(i, [])).strip() or UNCERTAIN for i in range(1, n + 1)]


def build_passage(answers: list[str], description: str, use_answers: bool) -> str:
    """The re-ranker's passage: the answers joined, the word "Uncertain" removed, then the description."""
    kept = []
    if use_answers:
        for answer in answers:
            answer = re.sub(rf"\b{UNCERTAIN}\b[.!]?", "", answer, flags=re.IGNORECASE).strip()
            if answer:
                kept.append(answer)
    return " ".join([*kept, description.strip()]).strip()
