"""The prompts of the method (written for this project): the describe, question and answer requests, and
the generic questions of a query whose reply did not parse. Reading the replies is `visa.method.replies`,
the re-ranker's passage `visa.method.passages`.

The reference implementation (XLearning-SCU/2025-ICML-VISA) fixes what these prompts must mean: the
question LLM lists key phrases and then numbered questions under "questions:"; the answer MLLM answers in
English in a full sentence, or with the single word "Uncertain" when the answer cannot be determined, the
objects asked about are absent, or the item is unrelated or only loosely related to the key phrases; the
re-ranker's passage is the answers joined with nothing between them, "Uncertain" removed, then the
description. The wording here is our own; docs/models.md lists what differs from the reference and why.
"""

from __future__ import annotations

from visa.core.layout import QuestionLayout
from visa.core.prompt import UNCERTAIN, Prompt

# Used when a question LLM's reply cannot be parsed; such a query's answers are left out at scoring time.
_FALLBACK = (
    "What is the main subject of this {kind}?",
    "What actions are taking place in this {kind}?",
    "How do the objects in this {kind} interact with each other?",
)


def fallback_questions(kind: str = "image") -> tuple[str, ...]:
    """The generic questions of a query whose reply did not parse, naming the item's kind (image, video)."""
    return tuple(q.format(kind="video" if kind == "video" else "image") for q in _FALLBACK)


FALLBACK_QUESTIONS = fallback_questions("image")

_DESCRIBE_PROMPT = (
    "Describe this {kind} in detail. Cover the main objects and people, their attributes (colour, size, "
    "number), what they are doing, how they relate to each other, and the place and setting."
)


def describe_prompt(kind: str = "image") -> str:
    """The general-description request for an item of `kind` ("image" or "video")."""
    return _DESCRIBE_PROMPT.format(kind="video" if kind == "video" else "image")


_QUESTION_INSTRUCTIONS = """\
We want to check whether {a_picture} matches a search query.
First list the key phrases of the query: its objects, attributes, actions, places and interactions.
Then write {n} short questions about those key phrases. Each question must be answerable by looking at \
the {picture}: the thing asked about is either visible or clearly missing. Ask "how many" only if the query \
states a number. Do not simply turn the query into a question.
Reply in this format and nothing else:
key phrases:
- <phrase>
questions:
1. <question>

"""

_QUESTION_EXAMPLE = """\
Example query: "Two dogs run across a snowy field."
key phrases:
- two dogs
- running
- snowy field
questions:
1. How many dogs are in the {picture}?
2. Are the animals running?
3. Is the ground covered with snow?

"""

_QUESTION_PROMPT = _QUESTION_INSTRUCTIONS + _QUESTION_EXAMPLE + 'Query: "{query}"\n'
# The paper's instructions without the worked example: with questions.constrained the layout comes from the
# grammar, and a small model no longer copies the example's questions.
_INSTRUCTIONS_PROMPT = _QUESTION_INSTRUCTIONS + 'Query: "{query}"\n'

_ANSWER_PROMPT = """\
Answer the question about this {kind} in English, in one complete sentence rather than just "yes", "no" \
or a single word. If the answer cannot be determined from the {kind}, or the things the question asks about \
are not in it, reply with the single word "{uncertain}" instead. Also reply with just "{uncertain}" if the \
{kind} is unrelated or only loosely related to these phrases: {phrases}.
Question: {question}"""


# A prompt that a very small model (the demo's SmolLM2-135M) can follow: short instructions, then worked
# examples in exactly the reply format, so the model continues the pattern. Its examples are generic scenes,
# written for this prompt (not taken from any dataset's captions).
_FEWSHOT_QUESTION_PROMPT = """\
List the key phrases of the query, then write {n} short yes/no questions that check them in {a_picture}.

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

# questions.prompt: "paper" (the method's instructions with one example), "instructions" (the same without
# the example) or "fewshot" (worked examples, for small models sampled without constraint)
QUESTION_PROMPTS = {
    "paper": _QUESTION_PROMPT,
    "instructions": _INSTRUCTIONS_PROMPT,
    "fewshot": _FEWSHOT_QUESTION_PROMPT,
}


def _picture(kind: str) -> str:
    return "video" if kind == "video" else "picture"


def question_prompt(
    query: str, n: int, kind: str = "image", template: str = "paper", constrained: bool = False
) -> Prompt:
    """The key-phrase and question request for `query`; `kind` is what the gallery holds; `template` one of
    QUESTION_PROMPTS. `constrained`: the reply must have the method's layout with exactly n questions
    (`QuestionLayout`; the generator constrains its model to it)."""
    picture = _picture(kind)
    text = QUESTION_PROMPTS[template].format(
        n=n, query=query.replace('"', "'"), picture=picture, a_picture=f"a {picture}"
    )
    return Prompt(text=text, layout=QuestionLayout(n) if constrained else None)


def _phrase_list(key_phrases: list[str], default: str) -> str:
    """Key phrases as one numbered line ("1. red bus 2. parked"), as the reference shows them."""
    return " ".join(f"{i}. {p}" for i, p in enumerate(key_phrases, 1)) if key_phrases else default


def answer_prompt(question: str, key_phrases: list[str], media: tuple[str, ...], kind: str) -> Prompt:
    phrases = _phrase_list(key_phrases, "the question")
    text = _ANSWER_PROMPT.format(kind=kind, phrases=phrases, uncertain=UNCERTAIN, question=question)
    return Prompt(text=text, media=media, media_kind=kind)


_ALL_ANSWERS_PROMPT = """\
Answer each question about this {kind} in English, in one complete sentence rather than just "yes", "no" \
or a single word. If an answer cannot be determined from the {kind}, or the things a question asks about are \
not in it, answer that question with the single word "{uncertain}". If the {kind} is unrelated or only \
loosely related to these phrases: {phrases}, answer every question with "{uncertain}".
Reply with one numbered line per question, in order, and nothing else:
{numbered}"""


def all_answers_prompt(
    questions: list[str], key_phrases: list[str], media: tuple[str, ...], kind: str
) -> Prompt:
    """One request for all of a query's questions about one item (answers.mode=per_candidate): the model
    sees the item once instead of once per question."""
    phrases = _phrase_list(key_phrases, "the questions")
    numbered = "\n".join(f"{i}. {q}" for i, q in enumerate(questions, 1))
    text = _ALL_ANSWERS_PROMPT.format(kind=kind, phrases=phrases, uncertain=UNCERTAIN, numbered=numbered)
    return Prompt(text=text, media=media, media_kind=kind)
