"""Reading the models' replies: a question LLM's key phrases and questions (`parse_questions`, in the
reference's layout, JSON, or looser ones; `top_up` across retries) and the numbered answers of one request
for all of a candidate's questions (`parse_all_answers`). The prompts they answer are `visa.method.prompts`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace

from visa.core.layout import PHRASES_FIELD, QUESTIONS_FIELD
from visa.core.prompt import UNCERTAIN
from visa.method.prompts import QUESTION_PROMPTS, fallback_questions, question_prompt

# Han ideographs: a reply that drifts into Chinese is re-sampled by the reference (it asserts there are none).
_HAN = re.compile(r"[\u4e00-\u9fff]")


@dataclass
class Questions:
    key_phrases: list[str]
    questions: list[str]
    parsed: bool  # False: the generic fallback questions are used and the answers are ignored
    raw: str = field(default="", repr=False)
    tries: int = 1  # question LLM calls made for this query (1 + retries)
    dropped: int = 0  # questions left out as copies of the prompt's examples or repeats
    # an unparsed reply's distinct questions and key phrases (too few), for topping up from a later try
    found: list[str] = field(default_factory=list, repr=False)
    found_phrases: list[str] = field(default_factory=list, repr=False)
    topped_up: bool = False  # its questions come from more than one try


_PREFIX = re.compile(r"^\s*(?:[-*\u2022]\s*|\d+[.):]\s*|q(?:uestion)?\s*\d*\s*[:.)]\s*)+", re.IGNORECASE)
_EXAMPLE_QUESTIONS = {  # questions of the prompts' worked examples: a reply that copies them did not parse
    line.split(". ", 1)[1]
    for template in QUESTION_PROMPTS
    for kind in ("image", "video")
    for line in question_prompt("", 3, kind, template).text.splitlines()
    if re.match(r"^\d\. \S.*\?$", line)
}
# The reference's list item: a number, a dot and white space ("1. "); its text runs to the next one.
_NUMBER = re.compile(r"\d+\.\s")
_QUESTIONS_LABEL = re.compile(r"questions\s*:", re.IGNORECASE)
_PHRASES_LABEL = re.compile(r"key\s*phrases\s*:", re.IGNORECASE)


def _items(block: str) -> list[str]:
    """The entries of a list, with bullets, numbers, "Question:" labels and quotes stripped."""
    return [_PREFIX.sub("", line).strip().strip("\"'").strip() for line in block.splitlines()]


def _split(reply: str) -> tuple[str, str]:
    """(key phrase block, question block) of a reply; the question block is the whole reply if unlabelled."""
    heading = re.search(r"questions?\s*:\s*$", reply, re.IGNORECASE | re.MULTILINE)
    phrases = _PHRASES_LABEL.search(reply)
    if heading is None:
        return (reply[phrases.end() :] if phrases else ""), reply
    start = phrases.end() if phrases and phrases.end() <= heading.start() else heading.start()
    return reply[start : heading.start()], reply[heading.end() :]


def _reference_parse(reply: str, n: int) -> tuple[list[str], list[str]] | None:
    """(key phrases, up to n questions) read the way the reference reads a reply, or None.

    The reply's line breaks become spaces; the questions are the numbered entries ("1. ", "2. ", ...) of the
    text after the "questions:" label, the first n of them, each cut at its first "?" (which is put back);
    the key phrases are the numbered entries between "key phrases:" and "questions:". The labels are matched
    regardless of case (the reference wants them lower-case; a capitalised label is the model's slip, not a
    different answer)."""
    text = reply.replace("\n", " ")
    label = _QUESTIONS_LABEL.search(text)
    if label is None:
        return None
    following = _QUESTIONS_LABEL.split(text[label.end() :], maxsplit=1)[0]
    entries = _NUMBER.split(following)[1 : n + 1]
    questions = [e.split("?")[0].strip() + "?" for e in entries]
    # (replacing "\n" by " " keeps every position, so the blocks can be cut from the reply itself)
    phrases_label = _PHRASES_LABEL.search(text[: label.start()])
    start = phrases_label.end() if phrases_label else label.start()
    phrases = [p.strip() for p in _NUMBER.split(text[start : label.start()])[1:] if p.strip()]
    if not phrases:  # bulleted rather than numbered
        phrases = [p for p in _items(reply[start : label.start()]) if p]
    return phrases, questions


def _json_parse(reply: str) -> tuple[list[str], list[str]] | None:
    """(key phrases, questions) of a JSON reply (a server constrained to `QuestionLayout.json_schema`)."""
    if not reply.lstrip().startswith("{"):
        return None
    try:
        data = json.loads(reply)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    phrases, questions = data.get(PHRASES_FIELD), data.get(QUESTIONS_FIELD)
    if not isinstance(phrases, list) or not isinstance(questions, list):
        return None
    return [str(p).strip() for p in phrases if str(p).strip()], [" ".join(str(q).split()) for q in questions]


def _loose_parse(reply: str) -> tuple[list[str], list[str]]:
    """(key phrases, questions) from looser layouts: bullets, "Q1:", "1)", no labels at all."""
    phrase_block, question_block = _split(reply)
    phrases = [p for p in _items(phrase_block) if p and not p.endswith("?") and len(p.split()) <= 8]
    questions = [q for q in _items(question_block) if q.endswith("?") and len(q.split()) >= 3]
    return phrases, questions


def _distinct(questions: list[str]) -> list[str]:
    """The questions without copies of the prompts' worked examples, repeats (ignoring case and spacing) and
    empty ones, in order."""
    kept, seen = [], set()
    for q in questions:
        norm = " ".join(q.lower().split())
        if q == "?" or not norm.rstrip("?").strip() or q in _EXAMPLE_QUESTIONS or norm in seen:
            continue
        seen.add(norm)
        kept.append(q)
    return kept


def parse_questions(reply: str, n: int, minimum: int | None = None, kind: str = "image") -> Questions:
    """Key phrases and up to n questions of a reply; parsed when at least `minimum` (default n) remain.

    A JSON reply (`{"key_phrases": [...], "questions": [...]}`, a server's structured output) is read as
    it is; a text reply the reference's way first (`_reference_parse`), then in looser layouts. Questions
    copied from a prompt's worked examples and repeated questions are left out (counted in `dropped`):
    a reply left with fewer than `minimum` distinct questions counts as unparsed, and so does a reply with
    Chinese characters (the reference re-samples it); an unparsed reply gets the generic fallback questions
    of `kind`."""
    minimum = n if minimum is None else minimum
    fallback = Questions([], list(fallback_questions(kind)[:n]), parsed=False, raw=reply)
    if _HAN.search(reply):
        return fallback
    for found in (_json_parse(reply), _reference_parse(reply, n), _loose_parse(reply)):
        if found is None:
            continue
        phrases, questions = found
        distinct = _distinct(questions)
        left_out = len(questions) - len(distinct)
        if len(distinct) >= max(minimum, 1):
            return Questions(phrases, distinct[:n], parsed=True, raw=reply, dropped=left_out)
        if len(distinct) > len(fallback.found):  # the reading that kept the most questions
            fallback.found, fallback.found_phrases, fallback.dropped = distinct, phrases, left_out
        elif not fallback.found:
            fallback.dropped = max(fallback.dropped, left_out)
    return fallback


def top_up(earlier: Questions, later: Questions, n: int, minimum: int | None = None) -> Questions:
    """`later` (a retry's reply) completed with the distinct questions of `earlier` (the tries before it):
    the questions of both, earlier ones first, copies of the examples and repeats left out; parsed when at
    least `minimum` (default n) remain. A constrained reply always has the layout, so its good questions are
    kept rather than thrown away with the repeat that made the reply too short."""
    minimum = n if minimum is None else minimum
    if later.parsed:
        return later
    before = earlier.questions if earlier.parsed else earlier.found
    merged = _distinct([*before, *later.found])
    dropped = earlier.dropped + later.dropped + len(before) + len(later.found) - len(merged)
    phrases = (earlier.key_phrases if earlier.parsed else earlier.found_phrases) or later.found_phrases
    if len(merged) >= max(minimum, 1):
        return Questions(phrases, merged[:n], parsed=True, raw=later.raw, dropped=dropped, topped_up=True)
    return replace(later, found=merged, found_phrases=phrases, dropped=dropped)


def first_questions(questions: Questions, num: int, kind: str = "image") -> Questions:
    """The first `num` of a query's questions. A list that never reached questions.max distinct questions
    still serves when it has `num` (its questions are the same whatever `num` is); one with fewer falls back
    to the generic questions of `kind`, whose answers are left out."""
    if questions.parsed:
        return replace(questions, questions=questions.questions[:num])
    if len(questions.found) >= max(num, 1):
        return replace(
            questions, key_phrases=questions.found_phrases, questions=questions.found[:num], parsed=True
        )
    return replace(questions, questions=list(fallback_questions(kind)[:num]))


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
