"""results.jsonl as a stream: the answer, score and record steps run a block of queries at a time (so a run's
memory does not grow with its answers), the records go to the results file as each block is scored, and
`results_file=results.jsonl.gz` writes them compressed. A run in blocks gives what one block gives."""

from __future__ import annotations

import gzip
import json

import pytest
from helpers import tiny_models
from helpers.fake_openai_server import FakeOpenAIServer

from visa.backbones.open_clip import OpenClipBackbone
from visa.cache import SQLiteStore
from visa.core.errors import VisaError
from visa.data import Dataset, Item, Query
from visa.generation.openai_api import OpenAIChatGenerator
from visa.method import pipeline
from visa.method.fusion import MinMaxFusion
from visa.method.parts import Components
from visa.method.records import ResultsFile, read_results
from visa.method.rerankers.visa import VisaReranker
from visa.method.settings import QuestionsSettings, RetrievalSettings, Settings
from visa.scorers.hf_cross_encoder import HFCrossEncoder

CAPTIONS = [
    "a dog on the grass",
    "two cats in the snow",
    "a red car in the street",
    "a man riding a bus",
    "people on the beach",
    "a child holding a dog",
    "a white tree in a field",
]


@pytest.fixture(scope="module")
def parts_and_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("stream")
    paths = tiny_models.write_images(root / "images", 6)
    gallery = [Item(f"img{i}", str(p)) for i, p in enumerate(paths)]
    queries = [Query(text, (i % 6,)) for i, text in enumerate(CAPTIONS)]
    dataset = Dataset("tiny", gallery, queries)
    clip = tiny_models.open_clip_dir(root / "clip")
    scorer = tiny_models.cross_encoder_dir(root / "ce")
    with FakeOpenAIServer() as server:

        def parts() -> Components:
            def generator() -> OpenAIChatGenerator:
                return OpenAIChatGenerator(model="fake-model", url=server.url, max_concurrency=4)

            return Components(
                backbone=OpenClipBackbone(model=f"local-dir:{clip}", device="cpu"),
                reranker=VisaReranker(
                    question_llm=generator(),
                    answer_mllm=generator(),
                    describer=generator(),
                    scorer=HFCrossEncoder(model=str(scorer), device="cpu"),
                ),
                fusion=MinMaxFusion(0.5),
            )

        yield parts, dataset


SETTINGS = Settings(
    retrieval=RetrievalSettings(top_k=3),
    questions=QuestionsSettings(num=2, max=2),
    recall_at=[1, 5],
    progress=False,
)


def test_a_run_in_blocks_gives_what_one_block_gives(parts_and_data, tmp_path, monkeypatch):
    parts, dataset = parts_and_data
    whole_metrics, whole = pipeline.run_visa(dataset, parts(), SETTINGS, SQLiteStore(tmp_path / "one"))
    assert [r["index"] for r in whole] == list(range(len(CAPTIONS)))

    monkeypatch.setattr(pipeline, "QUERY_BLOCK", 3)  # blocks of 3, 3 and 1 queries
    streamed: list[dict] = []
    metrics, kept = pipeline.run_visa(
        dataset, parts(), SETTINGS, SQLiteStore(tmp_path / "blocks"), sink=streamed.append
    )
    assert kept == [] and streamed == whole  # the same records, in query order, handed over as they came

    def timeless(m: dict) -> dict:  # wall-clock figures: time/<stage> and the seconds a cost recorded
        return {k: v for k, v in m.items() if not k.startswith("time/") and not k.endswith("/seconds")}

    assert timeless(metrics) == timeless(whole_metrics)
    assert metrics["calls/answer/computed"] == len(CAPTIONS) * 3 * 2  # K = 3 candidates x 2 questions


def test_the_results_file_is_plain_or_gzip_and_named_when_complete(tmp_path):
    records = [{"index": i, "query": f"q{i}", "rerank_top": [{"id": "a", "fused": 0.5}]} for i in range(3)]
    for name, opener in (("results.jsonl", open), ("results.jsonl.gz", gzip.open)):
        out = ResultsFile(tmp_path / name)
        for record in records:
            out.write(record)
        assert not (tmp_path / name).exists() and (tmp_path / f"{name}.part").exists()  # not yet complete
        out.close()
        assert not (tmp_path / f"{name}.part").exists()
        with opener(tmp_path / name, "rt", encoding="utf-8") as f:
            assert [json.loads(line) for line in f] == records
        assert list(read_results(tmp_path / name)) == records


def test_a_non_finite_value_names_the_query(tmp_path):
    out = ResultsFile(tmp_path / "results.jsonl")
    with pytest.raises(VisaError, match=r"results\.jsonl: query 4 has a non-finite value"):
        out.write({"index": 4, "score": float("nan")})


@pytest.mark.parametrize("name", ["results.txt", "out/results.jsonl", ".jsonl"])
def test_results_file_must_be_a_jsonl_name(name):
    with pytest.raises(VisaError, match=r"results_file=.* must be a file name ending in \.jsonl"):
        Settings(results_file=name)
