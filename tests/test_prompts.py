from visa.method.passages import build_passage
from visa.method.prompts import (
    FALLBACK_QUESTIONS,
    Prompt,
    all_answers_prompt,
    answer_prompt,
    describe_prompt,
    question_prompt,
)
from visa.method.replies import parse_questions

# A reply in the reference's layout: numbered key phrases, then numbered questions under "questions:";
# the reference reads the text after "questions:", splits it at "<number>. " and cuts each entry at its
# first "?".
REFERENCE_STYLE = """key phrases:
1. green and yellow
2. tennis sweater
3. hanging on the back of the sofa
questions:
1. What colors are present on the tennis sweater? Look closely.
2. Where is the tennis sweater located?
3. What type of object is the sweater hanging on
4. Is the sofa made of leather?
"""

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


def test_reference_layout_is_parsed_as_the_reference_does():
    q = parse_questions(REFERENCE_STYLE, 3)
    assert q.parsed
    assert q.key_phrases == ["green and yellow", "tennis sweater", "hanging on the back of the sofa"]
    # first 3 entries; each cut at its first "?", which is put back (also on an entry that had none)
    assert q.questions == [
        "What colors are present on the tennis sweater?",
        "Where is the tennis sweater located?",
        "What type of object is the sweater hanging on?",
    ]


def test_reference_layout_on_one_line_and_with_capitalised_labels():
    one_line = (
        "Key Phrases: 1. red bus 2. city street Questions: 1. Is the bus red? 2. Is it parked? 3. Where?"
    )
    q = parse_questions(one_line, 3)
    assert q.parsed and q.key_phrases == ["red bus", "city street"]
    assert q.questions == ["Is the bus red?", "Is it parked?", "Where?"]


def test_reference_layout_with_too_few_entries_is_a_failure():
    q = parse_questions("key phrases:\n1. a cat\nquestions:\n1. Is there a cat?\n2. Is it black?", 3)
    assert not q.parsed and q.questions == list(FALLBACK_QUESTIONS)


def test_a_reply_in_chinese_is_a_failure():
    assert not parse_questions(REFERENCE_STYLE + "\n4. 这是什么?", 3).parsed


def test_question_prompt_says_video_for_videos():
    assert "video" in question_prompt("a dog runs", 3, "video").text
    assert "video" not in question_prompt("a dog runs", 3, "image").text
    assert "this video" in describe_prompt("video") and "this image" in describe_prompt("image")


def test_answer_prompt_gates_uncertain_and_puts_question_last():
    p = answer_prompt("Is it red?", ["red car", "parked"], ("/x.jpg",), "image")
    assert p.text.rstrip().endswith("Question: Is it red?")
    assert p.media == ("/x.jpg",) and p.media_kind == "image"
    text = p.text
    # the reference's three conditions for "Uncertain", the key phrases as a numbered list, English
    assert "cannot be determined" in text and "are not in it" in text
    assert "unrelated or only loosely related to these phrases: 1. red car 2. parked" in text
    assert "English" in text and '"Uncertain"' in text
    assert "this video" in answer_prompt("Is it red?", [], ("/x.mp4",), "video").text
    every = all_answers_prompt(["Is it red?", "Is it big?"], ["car"], ("/x.jpg",), "image").text
    assert "loosely related to these phrases: 1. car" in every and every.endswith("2. Is it big?")


def test_passage_joins_as_the_reference_unless_a_separator_is_set():
    answers = ["Uncertain", "The car is red.", "Uncertain.", "It is parked."]
    # the reference: answers concatenated, the word removed, the description appended, nothing between
    assert build_passage(answers, "A red car on a road.", True) == (
        "The car is red..It is parked.A red car on a road."
    )
    spaced = build_passage(answers, "A red car on a road.", True, separator=" ")
    assert spaced == "The car is red. It is parked. A red car on a road."
    assert build_passage(["The car is red."], "A red car.", use_answers=False) == "A red car."


def test_sampling_overrides_enter_the_cache_key_only_when_set():
    plain = Prompt("ask")
    assert "sampling" not in plain.as_key()
    assert Prompt("ask", seed=1).as_key() != Prompt("ask", seed=2).as_key()
