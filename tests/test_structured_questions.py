"""Structured generation of the question LLM's reply (questions.constrained): the layout's grammar, regex and
JSON schema; a tiny transformers model constrained by xgrammar; an OpenAI-compatible server given the schema
or the regex; the parser's rule on copies and repeats; the fallback questions."""

from __future__ import annotations

import json
from dataclasses import replace

import jsonschema
import pytest
from helpers import tiny_models
from helpers.fake_openai_server import FakeOpenAIServer

from visa.cache import SQLiteStore
from visa.core.layout import QuestionLayout
from visa.core.prompt import Prompt
from visa.data import Dataset, Item, Query
from visa.generation.hf import HFTextGenerator
from visa.generation.openai_api import OpenAIChatGenerator
from visa.method.prompts import fallback_questions, question_prompt
from visa.method.replies import parse_questions
from visa.method.settings import QuestionsSettings, Settings
from visa.method.stages import Run

REPLY = (
    "key phrases:\n- two dogs\n- snowy field\n"
    "questions:\n1. Are there two dogs?\n2. Is it snowy?\n3. Do they run?"
)
QUERIES = ["two dogs run across a snowy field", "a red car on the street", "a man holding a cat"]


def test_the_layouts_forms_agree():
    layout = QuestionLayout(3)
    assert layout.matches(REPLY)
    assert not layout.matches(REPLY + "\n4. Is there more?")  # exactly 3 questions
    assert not layout.matches(REPLY.replace("Do they run?", "Do they run"))  # a question ends in "?"
    assert not layout.matches(REPLY.replace("- snowy field", "- " + "x" * 41))  # lines are bounded
    assert len(REPLY) <= layout.longest()
    asked = ["Are there two dogs?", "Is it snowy?", "Do they run?"]
    as_json = {"key_phrases": ["two dogs"], "questions": asked}
    jsonschema.validate(as_json, layout.json_schema())
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**as_json, "questions": as_json["questions"][:2]}, layout.json_schema())
    assert parse_questions(json.dumps(as_json), 3).questions == as_json["questions"]
    assert 'root ::= "key phrases:\\n"' in layout.ebnf()


def test_the_layout_is_in_the_cache_key_only_when_set():
    free = question_prompt("a dog", 3)
    assert "layout" not in free.as_key() and free.layout is None
    constrained = question_prompt("a dog", 3, constrained=True)
    assert constrained.text == free.text and constrained.as_key()["layout"]["questions"] == 3
    assert "layout" not in Prompt("x").as_key()


def test_copies_of_the_examples_and_repeats_are_left_out_and_counted():
    repeated = REPLY.replace("Is it snowy?", "Are there two dogs?")
    parsed = parse_questions(repeated, 3)
    assert not parsed.parsed and parsed.dropped == 1  # 2 distinct of 3: unparsed (re-asked), counted
    two = parse_questions(repeated, 3, minimum=2)
    assert two.parsed and two.questions == ["Are there two dogs?", "Do they run?"] and two.dropped == 1
    copied = REPLY.replace("Is it snowy?", "Is there a wooden table?")  # the few-shot prompt's example
    assert not parse_questions(copied, 3).parsed
    assert parse_questions(REPLY, 3).parsed and parse_questions(REPLY, 3).dropped == 0


def test_fallback_questions_name_the_items_kind():
    assert all("video" in q for q in fallback_questions("video"))
    assert all("image" in q for q in fallback_questions("image"))
    assert parse_questions("no idea", 3, kind="video").questions == list(fallback_questions("video"))


@pytest.fixture(scope="module")
def bpe_llm(tmp_path_factory):
    return tiny_models.qwen2_text_dir(tmp_path_factory.mktemp("bpe") / "llm", bpe=True)


def test_a_constrained_reply_parses_for_every_seed(bpe_llm):
    """A random-weight model rarely writes the layout by itself; under the grammar it always does."""
    layout = QuestionLayout(3)
    gen = HFTextGenerator(model=str(bpe_llm), device="cpu", max_new_tokens=layout.longest())
    free_parsed = []
    for seed in range(3):
        free = [replace(question_prompt(q, 3), seed=seed, temperature=1.0) for q in QUERIES[:2]]
        constrained = [replace(p, layout=layout) for p in free]
        free_parsed += [parse_questions(r, 3).parsed for r in gen.generate(free)]
        replies = gen.generate(constrained)
        assert all(layout.matches(r) for r in replies), replies
        assert all(parse_questions(r, 3).parsed for r in replies), replies
    assert not any(free_parsed)  # the same seeds unconstrained: none parses


def test_the_server_path_sends_the_schema_and_parses_the_reply(tmp_path):
    images = tiny_models.write_images(tmp_path / "imgs", 1)
    dataset = Dataset("tiny", [Item("i0", str(images[0]))], [Query(q, (0,)) for q in QUERIES])
    for mode in ("json_schema", "regex"):
        with FakeOpenAIServer() as server:
            gen = OpenAIChatGenerator(model="fake-model", url=server.url, structured_output=mode)
            run = Run(dataset, Settings(progress=False), SQLiteStore(tmp_path / f"cache-{mode}"))
            questions = run.ask(gen)
            assert all(q.parsed and len(q.questions) == 3 for q in questions)
            assert server.structured == len(QUERIES)
            body = server.requests[0]
        if mode == "json_schema":
            assert body["response_format"]["json_schema"]["schema"] == QuestionLayout(3).json_schema()
            assert json.loads(questions[0].raw)["key_phrases"]  # the reply is the JSON the server wrote
        else:
            assert body["regex"] == QuestionLayout(3).regex() and "response_format" not in body
    free = OpenAIChatGenerator(model="fake-model", url="http://127.0.0.1:1/v1")
    body = free.request_body(question_prompt("a dog", 3))
    assert "response_format" not in body and "regex" not in body
    # the default mode keeps the identity (and the caches) of existing server configs
    assert "structured_output" not in free.identity()
    assert OpenAIChatGenerator(model="m", url="http://h:1/v1", structured_output="regex").identity() != (
        free.identity()
    )


class _UnreadableSchema(QuestionLayout):
    def json_schema(self) -> dict:
        schema = super().json_schema()
        schema["properties"]["questions"]["minItems"] = "three"  # not a JSON schema
        return schema


def test_a_server_that_rejects_the_schema_stops_with_one_line():
    from visa.core.errors import VisaError

    with FakeOpenAIServer() as server:
        gen = OpenAIChatGenerator(model="fake-model", url=server.url, max_retries=0)
        prompt = replace(question_prompt("a dog", 3), layout=_UnreadableSchema(3))
        with pytest.raises(VisaError, match="HTTP 400.*invalid JSON schema"):
            gen.generate([prompt])


def test_the_ask_stage_constrains_by_default_and_counts(tmp_path):
    images = tiny_models.write_images(tmp_path / "imgs", 1)
    dataset = Dataset("tiny", [Item("i0", str(images[0]), "video")], [Query(q, (0,)) for q in QUERIES])
    assert QuestionsSettings().constrained is True
    with FakeOpenAIServer(reply=lambda body: "I cannot help.") as server:
        gen = OpenAIChatGenerator(model="fake-model", url=server.url)
        settings = Settings(questions=QuestionsSettings(constrained=False, retries=1), progress=False)
        run = Run(dataset, settings, SQLiteStore(tmp_path / "c"))
        questions = run.ask(gen)
        assert not any(q.parsed for q in questions) and server.structured == 0
        assert all("video" in q.questions[0] for q in questions)  # the fallback names the kind
        assert run.question_tries == [(3, 0), (3, 0)]


def test_the_summary_says_how_the_questions_did():
    from visa.method.replies import Questions
    from visa.method.rerankers.visa import question_metrics
    from visa.run import format_questions

    questions = [Questions(["a"], ["Is it?"], True), Questions([], ["x"], False, tries=3, dropped=2)]
    metrics = question_metrics(questions, [(2, 1), (1, 0), (1, 0)], Settings(progress=False))
    assert metrics["questions/fallback"] == 1 and metrics["questions/fallback_share"] == 50.0
    assert metrics["questions/retries"] == 2 and metrics["questions/dropped"] == 2
    assert metrics["questions/constrained"] is True and metrics["questions/try_2/asked"] == 1
    line = format_questions(metrics)
    assert line.startswith("questions (constrained): 1 of 2 queries fell back") and "2 re-asked" in line
    assert "hint:" in line and "question_reply" in line  # half the queries: the method did not run as meant
    few = {**metrics, "questions/fallback": 1, "questions/fallback_share": 2.0, "questions/try_0/asked": 50}
    assert "hint" not in format_questions(few)
    assert format_questions({"base/R@1": 1.0}) is None  # a run without questions (the release)


def test_a_retry_tops_up_the_distinct_questions_of_the_tries_before():
    from visa.method.replies import top_up

    first = parse_questions(REPLY.replace("Is it snowy?", "Are there two dogs?"), 3)  # 2 distinct
    again = parse_questions(REPLY.replace("Do they run?", "Are there two dogs?"), 3)  # 2 distinct, 1 new
    assert not first.parsed and first.found == ["Are there two dogs?", "Do they run?"]
    merged = top_up(first, again, 3)
    assert merged.parsed and merged.topped_up and merged.raw == again.raw
    assert merged.questions == ["Are there two dogs?", "Do they run?", "Is it snowy?"]
    assert merged.key_phrases == ["two dogs", "snowy field"]
    same = top_up(first, first, 3)  # nothing new: still short, re-asked or fallen back
    assert not same.parsed and same.found == first.found


class _Repeater:
    """A constrained question LLM that repeats one question per try (the retry's seed picks which)."""

    uses_context = False
    batch_size = 8

    def identity(self) -> dict:
        return {"generator": "repeater", "seed": 0}

    def generate(self, prompts: list[Prompt]) -> list[str]:
        out = []
        for p in prompts:
            extra = f"Is detail {p.seed or 0} there?"
            out.append(f"key phrases:\n- x\nquestions:\n1. Is it red?\n2. Is it red?\n3. {extra}")
        return out


def test_constrained_retries_top_up_and_free_ones_stand_alone(tmp_path):
    images = tiny_models.write_images(tmp_path / "imgs", 1)
    dataset = Dataset("tiny", [Item("i0", str(images[0]))], [Query(QUERIES[0], (0,))])
    for constrained, parsed in ((True, True), (False, False)):
        settings = Settings(questions=QuestionsSettings(constrained=constrained), progress=False)
        run = Run(dataset, settings, SQLiteStore(tmp_path / f"c{constrained}"))
        (q,) = run.ask(_Repeater())
        assert q.parsed is parsed and q.tries == (2 if parsed else 3)
        if parsed:  # try 0: "Is it red?", "Is detail 0 there?"; try 1 adds "Is detail 1 there?"
            assert q.questions == ["Is it red?", "Is detail 0 there?", "Is detail 1 there?"] and q.topped_up
