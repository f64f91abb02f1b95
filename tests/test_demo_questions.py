"""The few-shot question prompt of the demo (questions.prompt=fewshot) and the evidence answerer."""

import re

import pytest

from visa.core.errors import VisaError
from visa.generation.evidence_answerer import EvidenceAnswerer, clauses, questions_of
from visa.method.prompts import (
    QUESTION_PROMPTS,
    UNCERTAIN,
    Prompt,
    all_answers_prompt,
    answer_prompt,
    question_prompt,
)
from visa.method.replies import parse_questions
from visa.method.settings import QuestionsSettings, Settings

DESCRIPTION = (
    "A black and white (grayscale) photo. It most likely shows a tripod (94% sure); it could also show "
    "a harmonica or a pair of binoculars. Regions: a cowboy hat in the top left. "
    "Colours: mostly grey, black on the left. The image is dark overall; low contrast."
)


def test_fewshot_prompt_names_the_query_and_ends_with_it():
    text = question_prompt('A "red" bus', 3, template="fewshot").text
    assert text.rstrip().endswith("Query: \"A 'red' bus\"")
    assert "3 short yes/no questions" in text
    assert question_prompt("a bus", 3).text == question_prompt("a bus", 3, template="paper").text


def test_a_reply_in_the_fewshot_format_parses():
    # the reply format is the examples' own: key phrases, then numbered questions
    examples = QUESTION_PROMPTS["fewshot"].split('Query: "')[1:-1]
    layout = "key phrases:" + examples[0].split("key phrases:", 1)[1]
    reply = re.sub(r"raincoat|dog|beach", "bus", layout)  # same layout, other content
    parsed = parse_questions(reply, 3)
    assert parsed.parsed and len(set(parsed.questions)) == 3
    assert all(q.endswith("?") for q in parsed.questions)


def test_copying_the_fewshot_examples_does_not_parse():
    example = QUESTION_PROMPTS["fewshot"].split('Query: "')[1]
    reply = "key phrases:" + example.split("key phrases:", 1)[1]
    assert not parse_questions(reply, 3).parsed


def test_unknown_question_prompt_is_one_clear_error():
    with pytest.raises(VisaError, match="questions.prompt='tiny'"):
        Settings(questions=QuestionsSettings(prompt="tiny"))


def test_description_is_cut_into_clauses_that_keep_their_heading():
    parts = clauses(DESCRIPTION)
    assert parts[0] == "A black and white (grayscale) photo"
    assert "Colours: black on the left" in parts and "Regions: a cowboy hat in the top left" in parts
    assert "low contrast" in parts


@pytest.mark.slow  # loads the packaged all-MiniLM-L6-v2
def test_evidence_answerer_quotes_the_nearest_clause_or_is_uncertain():
    answerer = EvidenceAnswerer(min_similarity=0.4)
    asked = ["Is the photo black and white?", "Is there a giraffe eating leaves?"]
    one_by_one = [
        Prompt(p.text, p.media, p.media_kind, context=DESCRIPTION)
        for p in (answer_prompt(q, ["x"], ("a.png",), "image") for q in asked)
    ]
    assert questions_of(one_by_one[0]) == (["Is the photo black and white?"], False)
    bw, giraffe = answerer.generate(one_by_one)
    assert bw == "A black and white (grayscale) photo." and giraffe == UNCERTAIN
    together = all_answers_prompt(asked, ["x"], ("a.png",), "image")
    (numbered,) = answerer.generate([Prompt(together.text, context=DESCRIPTION)])
    assert numbered.splitlines() == [f"1. {bw}", f"2. {UNCERTAIN}"]
    assert answerer.identity() != EvidenceAnswerer(min_similarity=0.5).identity()


def test_evidence_answerer_needs_a_description():
    with pytest.raises(VisaError, match="descriptions"):
        EvidenceAnswerer().generate([answer_prompt("Is it red?", [], ("a.png",), "image")])
