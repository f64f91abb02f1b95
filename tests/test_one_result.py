"""One config, one result: a generated reply depends on its prompt and settings only (never on its
batch-mates or the batch size), a query's questions on the query alone (not on questions.num, on the other
queries or on what the cache holds), and a sweep over questions.num costs one run at questions.max."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from conftest import REPO
from helpers import tiny_models
from helpers.runs import run_in_one_process

from visa.core.prompt import Prompt
from visa.generation.hf import HFTextGenerator
from visa.generation.sampling import PerPromptSampler, nucleus, row_seed


def test_per_prompt_noise_draws_from_the_softmax():
    """Gumbel-max over a row's own noise is a draw from softmax(logits / T): frequencies over 4,000 prompts
    (each its own seed) match the probabilities."""
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0])
    temperature = 0.7
    counts = torch.zeros(4)
    for i in range(4000):
        sampler = PerPromptSampler([temperature], [row_seed(f"prompt {i}", 0)])
        counts[int(sampler(torch.zeros(1, 1, dtype=torch.long), logits[None].clone()).argmax())] += 1
    expected = torch.softmax(logits / temperature, dim=0)
    assert torch.allclose(counts / counts.sum(), expected, atol=0.03), (counts / counts.sum(), expected)


def test_nucleus_keeps_the_smallest_set_reaching_top_p():
    scores = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    kept = torch.isfinite(nucleus(scores, 0.8))
    assert kept.tolist() == [True, True, False, False]
    assert torch.isfinite(nucleus(scores, 0.1)).tolist() == [True, False, False, False]
    assert torch.equal(nucleus(scores, 1.0), scores)


def test_a_greedy_row_gets_no_noise_and_a_sampled_row_noise_of_its_own():
    scores = torch.randn(1, 10).repeat(3, 1)
    out = PerPromptSampler([0.0, 1.0, 1.0], [1, 2, 2])(torch.zeros(3, 1, dtype=torch.long), scores.clone())
    assert torch.equal(out[0], scores[0])
    assert torch.equal(out[1], out[2])  # same seed, same noise, whatever the row
    again = PerPromptSampler([1.0], [2])(torch.zeros(1, 1, dtype=torch.long), scores[1:2].clone())
    assert torch.equal(again[0], out[1])


def test_a_reply_does_not_depend_on_its_batch(tmp_path):
    """A real (tiny, random-weight) Qwen2 chat model: each prompt's reply, greedy or sampled, is the same
    alone, in a batch of four and in another batch of other prompts."""
    model = tiny_models.qwen2_text_dir(tmp_path / "qwen")
    gen = HFTextGenerator(model=str(model), device="cpu", max_new_tokens=12, temperature=0.0, batch_size=8)
    texts = ["describe the dog", "a cat on a red sofa", "two boats", "snow on the mountain at night"]
    prompts = [Prompt(t) for t in texts] + [Prompt(t, seed=3, temperature=0.9) for t in texts]
    alone = [gen.generate([p])[0] for p in prompts]
    assert gen.generate(prompts[:4]) == alone[:4]
    assert gen.generate(prompts[4:]) == alone[4:]
    mixed = [prompts[5], Prompt("something else entirely"), prompts[0], prompts[7]]
    assert [gen.generate(mixed)[i] for i in (0, 2, 3)] == [alone[5], alone[0], alone[7]]
    assert len(set(alone[4:])) > 1  # sampled replies do differ between prompts


def _questions(run_dir: Path) -> dict[str, list[str]]:
    rows = [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]
    return {r["query"]: r["questions"] for r in rows}


def _metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


@pytest.mark.slow
def test_questions_depend_on_the_query_only_and_a_num_sweep_costs_one_run(tmp_path):
    """The demo's real models: the questions of the first queries are the same in a run of 5 photos, a run
    of 12, a run of 12 at questions.num=0 then at 3 in one cache, and with question_llm.batch_size=1; the
    re-ranked orders of equal runs are equal (results/digest); questions.num=0 asks nothing; a sweep over
    questions.num=1,2,3 computes exactly the ask and answer calls of one run at 3."""
    common = ["retrieval.top_k=2", "progress=false"]
    runs = {
        "few": ["dataset.limit=5", f"cache_dir={tmp_path / 'c-few'}"],
        "more": ["dataset.limit=12", f"cache_dir={tmp_path / 'c-more'}"],
        "num0": ["dataset.limit=12", "questions.num=0", f"cache_dir={tmp_path / 'c-hist'}"],
        "after": ["dataset.limit=12", f"cache_dir={tmp_path / 'c-hist'}"],
        "one_per_batch": ["dataset.limit=5", "question_llm.batch_size=1", f"cache_dir={tmp_path / 'c-one'}"],
        "sweep1": ["dataset.limit=5", "questions.num=1", f"cache_dir={tmp_path / 'c-sweep'}"],
        "sweep2": ["dataset.limit=5", "questions.num=2", f"cache_dir={tmp_path / 'c-sweep'}"],
        "sweep3": ["dataset.limit=5", "questions.num=3", f"cache_dir={tmp_path / 'c-sweep'}"],
    }
    argvs = [[*args, *common, f"hydra.run.dir={tmp_path / name}"] for name, args in runs.items()]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    outputs, _ = run_in_one_process(argvs, REPO, env, timeout=1500)
    for name, out in zip(runs, outputs):
        assert out["code"] in (0, None), (name, out["stderr"][-3000:])

    few = _questions(tmp_path / "few")
    assert len(few) >= 5
    for name in ("more", "after", "one_per_batch"):
        other = _questions(tmp_path / name)
        assert {q: other[q] for q in few} == few, name
    digest = {name: _metrics(tmp_path / name)["results/digest"] for name in runs}
    assert digest["more"] == digest["after"]
    assert digest["few"] == digest["one_per_batch"]

    num0 = _metrics(tmp_path / "num0")
    assert num0["calls/ask/computed"] == num0["calls/ask/cached"] == 0  # nothing asked
    assert all(qs == [] for qs in _questions(tmp_path / "num0").values())

    cold = _metrics(tmp_path / "few")  # one cold run at questions.num=3 (= questions.max)
    sweep = [_metrics(tmp_path / f"sweep{n}") for n in (1, 2, 3)]
    for stage in ("ask", "answer"):
        assert sum(m[f"calls/{stage}/computed"] for m in sweep) == cold[f"calls/{stage}/computed"], stage
    swept = [_questions(tmp_path / f"sweep{n}") for n in (1, 2, 3)]
    for query, questions in few.items():  # nested: num=k is the first k of the list
        assert [s[query] for s in swept] == [questions[:1], questions[:2], questions[:3]] or not questions
