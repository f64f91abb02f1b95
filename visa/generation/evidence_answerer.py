"""The demo answerer: answers a question about an item by quoting the part of the item's description that
bears on it, or "Uncertain" when no part does.

A text-only ("Socratic") stand-in for a vision-language model (none ships in a PyPI package). The
description it reads is the demo describer's, measured on the pixels (`pixel_describer.py`), so every
answer is a fact about the pixels; unlike a 135M LLM answering from the same text, it cannot invent one.
Each description is cut into clauses ("A black and white (grayscale) photo", "Colours: red on the left",
...); the answer is the clause whose all-MiniLM-L6-v2 embedding is nearest the question's, if its cosine
similarity reaches `min_similarity`.
"""

from __future__ import annotations

import re
from collections import OrderedDict

import torch

from visa.backbones.text_embedder import embed_sentences, minilm_path
from visa.core.errors import VisaError
from visa.core.prompt import UNCERTAIN, Prompt

_QUESTION = re.compile(r"^Question:\s*(.+)$", re.MULTILINE)  # prompts.answer_prompt: one question
_NUMBERED = re.compile(r"^(\d+)\.\s*(.+)$", re.MULTILINE)  # prompts.all_answers_prompt: numbered questions


def clauses(description: str) -> list[str]:
    """The description's sentences, lists cut into items that keep their heading ("Colours: red on the
    left"), and clauses separated by semicolons."""
    out = []
    for sentence in re.split(r"(?<=[.])\s+(?=[A-Z])", description.strip()):
        sentence = sentence.strip().rstrip(".")
        heading, colon, body = sentence.partition(": ")
        if colon and len(heading.split()) <= 2:  # "Colours: a, b" / "Regions: a; b"
            out += [f"{heading}: {item.strip()}" for item in re.split(r"[;,]\s+", body) if item.strip()]
        else:
            out += [part.strip() for part in sentence.split("; ") if part.strip()]
    return out


def questions_of(prompt: Prompt) -> tuple[list[str], bool]:
    """(the questions a prompt asks, whether it asks for a numbered reply)."""
    single = _QUESTION.findall(prompt.text)
    if single:
        return [single[-1].strip()], False
    numbered = [q.strip() for _, q in _NUMBERED.findall(prompt.text)]
    if numbered:
        return numbered, True
    raise VisaError("answer_mllm=demo: the prompt asks no question it can find ('Question: ...' or '1. ...')")


_KEPT_EMBEDDINGS = 100_000  # sentences (384 floats each: about 150 MB at most)


class EvidenceAnswerer:
    uses_context = True  # reads Prompt.context, the item's description, instead of the pixels

    def __init__(self, min_similarity: float = 0.4, batch_size: int = 64, device: str = "cpu"):
        if not -1.0 <= min_similarity <= 1.0:
            raise VisaError(f"answer_mllm.min_similarity={min_similarity} must be a cosine, in [-1, 1]")
        self.min_similarity, self.batch_size, self.device = min_similarity, batch_size, device
        # Sentence embeddings already computed: the same clauses (one description, many questions about its
        # item) and the same questions (one query, many candidates) recur across a stage's calls.
        self._embeddings: OrderedDict[str, torch.Tensor] = OrderedDict()

    def _embed(self, texts: list[str]) -> torch.Tensor:
        """The embeddings of `texts` (rows in order); each distinct text not seen before is embedded once,
        in batches of texts of similar length (little padding)."""
        new = sorted({t for t in texts if t not in self._embeddings}, key=len)
        for start in range(0, len(new), 256):
            chunk = new[start : start + 256]
            for text, row in zip(chunk, embed_sentences(chunk, minilm_path(), self.device)):
                self._embeddings[text] = row
        rows = []
        for t in texts:
            self._embeddings.move_to_end(t)
            rows.append(self._embeddings[t])
        while len(self._embeddings) > _KEPT_EMBEDDINGS:
            self._embeddings.popitem(last=False)
        return torch.stack(rows)

    def identity(self) -> dict:
        return {
            "generator": "evidence-answerer",
            "model": "all-MiniLM-L6-v2",  # the sentence embedder that matches questions to clauses
            "min_similarity": self.min_similarity,
        }

    def generate(self, prompts: list[Prompt]) -> list[str]:
        asked = []
        for p in prompts:
            if not p.context:
                raise VisaError("answer_mllm=demo answers from item descriptions; this prompt has none")
            asked.append((questions_of(p), clauses(p.context)))
        texts = [q for (qs, _), _ in asked for q in qs] + [c for _, cs in asked for c in cs]
        embedded = self._embed(texts) if texts else torch.empty(0, 0)
        n_questions = sum(len(qs) for (qs, _), _ in asked)
        question_emb, clause_emb = embedded[:n_questions], embedded[n_questions:]
        replies, qi, ci = [], 0, 0
        for (qs, numbered), cs in asked:
            sims = question_emb[qi : qi + len(qs)] @ clause_emb[ci : ci + len(cs)].T
            qi, ci = qi + len(qs), ci + len(cs)
            answers = [self._answer(row, cs) for row in sims] if cs else [UNCERTAIN] * len(qs)
            numbered_reply = "\n".join(f"{i}. {a}" for i, a in enumerate(answers, 1))
            replies.append(numbered_reply if numbered else answers[0])
        return replies

    def _answer(self, similarities: torch.Tensor, candidates: list[str]) -> str:
        best = int(similarities.argmax())
        if similarities[best].item() < self.min_similarity:
            return UNCERTAIN
        return candidates[best] + "."
