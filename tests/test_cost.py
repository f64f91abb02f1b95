"""Cost per result, stored with it: a warm rerun reports the cold run's cost; old caches (no cost column, VSR1
log records) are read, their results counted as of unknown cost; tokens come from a tokenizer or a server's
usage."""

from __future__ import annotations

import sqlite3

import pytest
from helpers import tiny_models
from helpers.fake_openai_server import FakeOpenAIServer, fake_usage
from transformers import AutoTokenizer

from visa.cache import SharedFolderStore, SQLiteStore, StageRunner, batched
from visa.cache.cost import Cost
from visa.cache.shared import encode_record, rewrite
from visa.generation.hf import HFTextGenerator
from visa.generation.openai_api import OpenAIChatGenerator
from visa.method.prompts import Prompt


class WordCounter:
    """A part that reports its tokens: one per word in, two out."""

    batch_size = 2

    def __init__(self) -> None:
        self.costs: list[Cost] = []

    def generate(self, texts: list[str]) -> list[str]:
        self.costs = [Cost(tokens_in=len(t.split()), tokens_out=2) for t in texts]
        return [t.upper() for t in texts]

    def last_costs(self) -> list[Cost]:
        return self.costs


def _run(store, texts: list[str]) -> dict:
    runner = StageRunner(store, progress=False)
    part = WordCounter()
    runner.run("ask", texts, texts, batched(part.generate, part.batch_size, part), media=lambda t: 1)
    runner.run("ask", texts[:1], texts[:1], batched(part.generate, 2, part))  # used again: counted once
    return runner.report(["ask", "score"], queries=len(texts))


@pytest.mark.parametrize("layout", ["sqlite", "shared"])
def test_a_warm_rerun_reports_the_cold_runs_cost(tmp_path, layout):
    store_class = SQLiteStore if layout == "sqlite" else SharedFolderStore
    texts = ["a red car", "two dogs", "a beach at night with people"]
    cold = _run(store_class(tmp_path), texts)
    warm = _run(store_class(tmp_path), texts)
    assert cold["calls/ask/computed"] == 3 and warm["calls/ask/computed"] == 0
    costs = {k: v for k, v in cold.items() if k.startswith("cost/")}
    assert costs == {k: v for k, v in warm.items() if k.startswith("cost/")}
    assert cold["cost/ask/calls"] == 3 and cold["cost/ask/tokens_in"] == 3 + 2 + 6
    assert cold["cost/ask/tokens_out"] == 6 and cold["cost/ask/media"] == 3 and cold["cost/ask/unknown"] == 0
    assert cold["cost/ask/seconds"] >= 0 and cold["cost/score/calls"] == 0  # a stage that did not run: 0
    assert cold["cost/per_query/calls"] == 1 and cold["cost/per_query/tokens"] == round(17 / 3, 4)


def test_a_part_without_costs_is_counted_in_calls_and_seconds(tmp_path):
    runner = StageRunner(SQLiteStore(tmp_path), progress=False)
    runner.run("score", ["a", "b"], [1, 2], batched(lambda xs: [x * 2 for x in xs], 8))
    report = runner.report(["score"], queries=2)
    assert report["cost/score/calls"] == 2 and report["cost/score/tokens_in"] == 0
    assert report["cost/score/unknown"] == 0
    stored = SQLiteStore(tmp_path).get_with_costs(["a"])["a"]
    assert stored[0] == 2 and stored[1].calls == 1 and stored[1].media == 0


def test_a_cache_from_before_costs_is_read_and_its_results_are_of_unknown_cost(tmp_path):
    """The first release's table (no model, no cost column): opened, upgraded in place, its results used."""
    db = sqlite3.connect(tmp_path / "visa-cache.sqlite")
    db.execute("CREATE TABLE results (key TEXT PRIMARY KEY, stage TEXT, value BLOB, created REAL)")
    db.execute("INSERT INTO results VALUES ('old', 'ask', ?, 0)", (b'J"OLD"',))
    db.commit()
    db.close()
    store = SQLiteStore(tmp_path)
    columns = {row[1] for row in store._db.execute("PRAGMA table_info(results)")}
    assert {"model", "cost"} <= columns
    assert store.get_with_costs(["old"]) == {"old": ("OLD", None)}
    runner = StageRunner(store, progress=False)
    part = WordCounter()
    out = runner.run("ask", ["old", "new"], ["old", "one two"], batched(part.generate, 2, part))
    assert out == ["OLD", "ONE TWO"]
    report = runner.report(["ask"], queries=2)
    assert report["cost/ask/unknown"] == 1 and report["cost/ask/calls"] == 1
    assert report["cost/ask/tokens_in"] == 2  # the old result's tokens are not known, not zero-filled
    assert SQLiteStore(tmp_path).get_with_costs(["new"])["new"][1].tokens_in == 2


def test_shared_logs_without_costs_are_read_and_merging_keeps_costs(tmp_path):
    store = SharedFolderStore(tmp_path)
    store.put_many("ask", {"new": "x"}, costs={"new": Cost(tokens_in=5, tokens_out=1, media=1, seconds=0.5)})
    store.close()
    (tmp_path / "writers" / "old-host-1-abcd.vlog").write_bytes(encode_record("old", "ask", "m", b'J"y"'))
    found = SharedFolderStore(tmp_path).get_with_costs(["new", "old"])
    assert found["old"] == ("y", None)
    assert found["new"] == ("x", Cost(1, 5, 1, 1, 0.5))
    rewrite(tmp_path, force=True)
    assert SharedFolderStore(tmp_path).get_with_costs(["new", "old"]) == found


def test_served_tokens_come_from_the_servers_usage(tmp_path):
    prompts = [Prompt("is it red ?"), Prompt("how many dogs are there in the picture ?")]
    with FakeOpenAIServer() as server:
        gen = OpenAIChatGenerator(model="fake-model", url=server.url, max_concurrency=2)
        runner = StageRunner(SQLiteStore(tmp_path), progress=False)
        replies = runner.run("answer", ["k0", "k1"], prompts, gen.stream)
        expected = [fake_usage(body, reply) for body, reply in zip(server.requests, replies)]
    report = runner.report(["answer"], queries=2)
    assert report["cost/answer/tokens_in"] == sum(u["prompt_tokens"] for u in expected) > 0
    assert report["cost/answer/tokens_out"] == sum(u["completion_tokens"] for u in expected) > 0
    assert report["cost/answer/calls"] == 2
    again = StageRunner(SQLiteStore(tmp_path), progress=False)
    again.run("answer", ["k0", "k1"], prompts, lambda _: iter(()))  # all cached: the server is not asked
    assert {k: v for k, v in again.report(["answer"], 2).items() if k.startswith("cost/")} == {
        k: v for k, v in report.items() if k.startswith("cost/")
    }


def test_transformers_tokens_come_from_the_tokenizer(tmp_path):
    llm = tiny_models.qwen2_text_dir(tmp_path / "llm")
    gen = HFTextGenerator(model=str(llm), device="cpu", max_new_tokens=5, batch_size=2)
    prompts = [Prompt("describe the dog"), Prompt("describe the red car on the street at night")]
    runner = StageRunner(None, progress=False)
    runner.run("ask", ["a", "b"], prompts, batched(gen.generate, gen.batch_size, gen))
    tokenizer = AutoTokenizer.from_pretrained(str(llm))
    texts = [
        tokenizer.apply_chat_template(gen.messages(p), tokenize=False, add_generation_prompt=True)
        for p in prompts
    ]
    lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    assert lengths[0] < lengths[1]
    report = runner.report(["ask"], queries=2)
    assert report["cost/ask/tokens_in"] == sum(lengths)
    assert 0 < report["cost/ask/tokens_out"] <= 2 * 5
    assert [c.tokens_in for c in gen.last_costs()] == lengths
