from visa.prompts import (
    FALLBACK_QUESTIONS,
    answer_prompt,
    build_passage,
    parse_questions,
    question_prompt,
)

WELL_FORMED = """key phrases:
- red bus
- parked
- city street
questions:
1. What colour is the bus?
2. Is the bus parked or moving?
3. Is the scene a city street?
"""


def test_parses_the_requested_format():
    q = parse_questions(WELL_FORMED, 3)
    assert q.parsed
    assert q.key_phrases == ["red bus", "parked", "city street"]
    assert q.questions == [
        "What colour is the bus?",
        "Is the bus parked or moving?",
        "Is the scene a city street?",
    ]


def test_parses_loose_formats_and_keeps_first_n_distinct():
    reply = 'Question: "Is there a dog here?"\nQ2: Is there a dog here?\n'
    reply += "- Is the dog brown or black?\n3) Where is it?"
    q = parse_questions(reply, 2)
    assert q.parsed and q.questions == ["Is there a dog here?", "Is the dog brown or black?"]


def test_too_few_questions_fall_back_to_generic_ones():
    q = parse_questions("key phrases:\n- a cat\nquestions:\n1. Is there a cat?", 3)
    assert not q.parsed and q.questions == list(FALLBACK_QUESTIONS)


def test_questions_copied_from_the_prompt_example_do_not_count():
    reply = "questions:\n1. How many dogs are in the picture?\n2. Are the animals running?\n3. Is it a cat?"
    assert not parse_questions(reply, 2).parsed


def test_question_prompt_names_query_and_count():
    p = question_prompt('A "big" dog', 3)
    assert "A 'big' dog" in p.text and "3 short questions" in p.text and p.media == ()


def test_answer_prompt_puts_question_last_and_media_first():
    p = answer_prompt("Is it red?", ["red car"], ("/x.jpg",), "image")
    assert p.text.rstrip().endswith("Question: Is it red?")
    assert p.media == ("/x.jpg",) and p.media_kind == "image" and '"red car"' in p.text


def test_passage_drops_uncertain_and_ends_with_description():
    passage = build_passage(["Uncertain", "The car is red.", "uncertain."], "A red car on a road.", True)
    assert passage == "The car is red. A red car on a road."
    assert build_passage(["The car is red."], "A red car.", use_answers=False) == "A red car."
