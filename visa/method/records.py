"""results.jsonl: one record per query with its base and re-ranked top-K, its questions and, when the
model stages ran, each candidate's answers and passage."""

from __future__ import annotations

from typing import Any

import torch

from visa.data import Dataset
from visa.method.prompts import Questions


def result_records(
    dataset: Dataset,
    candidates: torch.Tensor,
    base_scores: torch.Tensor,
    visa_order: torch.Tensor,
    fused: torch.Tensor,
    text_scores: torch.Tensor,
    questions: list[Questions],
    answers: list[list[list[str]]] | None,
    passages: list[list[str]] | None,
) -> list[dict[str, Any]]:
    k = fused.shape[1]
    gallery = dataset.gallery
    records = []
    for qi, query in enumerate(dataset.queries):
        top_ids = [gallery[g].id for g in candidates[qi, :k].tolist()]
        by_id = {
            top_ids[r]: {
                "base": round(base_scores[qi, r].item(), 6),
                "text": round(text_scores[qi, r].item(), 6),
                "fused": round(fused[qi, r].item(), 6),
            }
            for r in range(k)
        }
        record: dict[str, Any] = {
            "index": qi,
            "query": query.text,
            **({"reference": query.reference.id} if query.reference is not None else {}),
            "ground_truth": [gallery[g].id for g in query.relevant],
            "key_phrases": questions[qi].key_phrases,
            "questions": questions[qi].questions,
            "questions_parsed": questions[qi].parsed,
            "question_tries": questions[qi].tries,  # 1 + the retries this query's reply needed
            "question_reply": questions[qi].raw,  # the question LLM's reply as written (its last try)
            "base_top": [{"id": i, "score": by_id[i]["base"]} for i in top_ids],
            "visa_top": [{"id": gallery[g].id, **by_id[gallery[g].id]} for g in visa_order[qi, :k].tolist()],
        }
        if answers is not None and passages is not None:
            record["candidates"] = [
                {"id": top_ids[r], "answers": answers[qi][r], "passage": passages[qi][r]} for r in range(k)
            ]
        records.append(record)
    return records
