"""Captions as SCAN and SGRAF read them: Penn-Treebank-style word tokens of the lower-cased caption, ids from
SCAN's vocabulary json, and (for VSL) TF-IDF vectors of the captions.

SCAN tokenises with nltk's `word_tokenize`, which needs the punkt model downloaded at run time. Captions are
single sentences, so the sentence splitter does nothing for them; `tokenize` below re-implements the
word-level Treebank rules that matter for captions (punctuation split off, the final period split off,
clitics such as n't / 's / 're split off, numbers with commas kept whole) with no download.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from visa.core.errors import VisaError

SPECIAL_TOKENS = ("<pad>", "<start>", "<end>", "<unk>")

# Punctuation that always stands alone (Treebank), and ':' / ',' unless inside a number (1,000 or 10:30).
_ALWAYS_SPLIT = re.compile(r"([;@#$%&?!\[\](){}<>]|--|\.\.\.)")
_COMMA_COLON = re.compile(r"([:,])(?!\d)|(?<!\d)([:,])")
_FINAL_PERIOD = re.compile(r"([^.])(\.)([\])}>\"']*)\s*$")
_CLITICS = re.compile(r"(?i)([^' ])('[sSmMdD]|'ll|'re|'ve|n't)\b")
_SPLIT_WORDS = {
    "cannot": ("can", "not"),
    "gonna": ("gon", "na"),
    "wanna": ("wan", "na"),
    "gotta": ("got", "ta"),
}


def tokenize(text: str) -> list[str]:
    """Treebank-style word tokens of one caption (the caller lower-cases, as SCAN does)."""
    text = text.strip()
    text = re.sub(r'^"', "`` ", text)  # opening and closing double quotes, as the Treebank writes them
    text = re.sub(r'(\s)"', r"\1`` ", text)
    text = text.replace('"', " '' ")
    text = _ALWAYS_SPLIT.sub(r" \1 ", text)
    text = _COMMA_COLON.sub(lambda m: f" {m.group(1) or m.group(2)} ", text)
    text = _FINAL_PERIOD.sub(r"\1 \2\3 ", text)
    text = _CLITICS.sub(r"\1 \2 ", text)
    text = re.sub(r"(\w)' ", r"\1 ' ", text + " ")  # plural possessive: dogs' -> dogs '
    tokens: list[str] = []
    for token in text.split():
        tokens.extend(_SPLIT_WORDS.get(token, (token,)))
    return tokens


class Vocabulary:
    """SCAN's vocabulary: word -> id with `<pad>`=0, `<start>`, `<end>`, `<unk>` for unknown words."""

    def __init__(self, word2idx: dict[str, int]):
        if "<unk>" not in word2idx:
            raise VisaError("vocabulary has no '<unk>' entry; SCAN's vocabulary json always has one")
        self.word2idx = dict(word2idx)
        self.unk = self.word2idx["<unk>"]

    def __len__(self) -> int:
        return max(self.word2idx.values()) + 1

    def __call__(self, word: str) -> int:
        return self.word2idx.get(word, self.unk)

    def encode(self, caption: str) -> list[int]:
        """<start> tokens <end>, as SCAN and SGRAF feed a caption to the text encoder."""
        return [self("<start>"), *(self(t) for t in tokenize(caption.lower())), self("<end>")]

    @classmethod
    def load(cls, path: str | Path) -> Vocabulary:
        """Read SCAN's json (`word2idx`, `idx2word`, `idx`), e.g. vocab/f30k_precomp_vocab.json."""
        path = Path(path)
        if not path.is_file():
            here = sorted(p.name for p in path.parent.glob("*.json")) if path.parent.is_dir() else []
            hint = f"; that folder holds {', '.join(here)}" if here else ""
            raise VisaError(
                f"vocabulary file {path} not found{hint}; give data.vocab_path, or build one with "
                f"`python -m visa.vsl.text ROOT NAME` (SCAN's layout: ROOT/vocab/NAME_vocab.json)"
            )
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            word2idx = {str(w): int(i) for w, i in data["word2idx"].items()}
        except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as e:
            raise VisaError(
                f"vocabulary file {path} is not SCAN's format (a json object with word2idx, idx2word, "
                f"idx): {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            ) from None
        return cls(word2idx)

    def save(self, path: str | Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        idx2word = {str(i): w for w, i in self.word2idx.items()}
        path.write_text(json.dumps({"word2idx": self.word2idx, "idx2word": idx2word, "idx": len(self)}))


def build_vocabulary(captions: Iterable[str], min_count: int = 4) -> Vocabulary:
    """SCAN's recipe: the words seen at least `min_count` times (SCAN: 4 over train + dev), after the four
    special tokens, in order of first appearance."""
    counts = Counter(t for caption in captions for t in tokenize(caption.lower()))
    words = [*SPECIAL_TOKENS, *(w for w, c in counts.items() if c >= min_count and w not in SPECIAL_TOKENS)]
    return Vocabulary({w: i for i, w in enumerate(words)})


def read_captions(path: str | Path) -> list[str]:
    """One caption per line, as SCAN's {split}_caps.txt (read as utf-8, undecodable bytes replaced)."""
    with open(path, encoding="utf-8", errors="replace") as f:
        return [line.strip() for line in f]


# --- VSL's semantics: TF-IDF of the captions -------------------------------------------------------------

_TFIDF_TOKEN = re.compile(r"(?u)\b\w\w+\b")  # VSL uses scikit-learn's CountVectorizer defaults


def caption_tfidf(captions: list[str]) -> sp.csr_matrix:
    """L2-normalised TF-IDF rows, one per caption, fitted on these captions, with the settings VSL uses
    (scikit-learn defaults: lower-cased words of 2+ characters, raw counts, smooth idf ln((1+n)/(1+df))+1)."""
    vocab: dict[str, int] = {}
    rows, cols, vals = [], [], []
    for r, caption in enumerate(captions):
        counts = Counter(_TFIDF_TOKEN.findall(caption.lower()))
        for word, n in counts.items():
            rows.append(r)
            cols.append(vocab.setdefault(word, len(vocab)))
            vals.append(float(n))
    tf = sp.csr_matrix((vals, (rows, cols)), shape=(len(captions), max(len(vocab), 1)), dtype=np.float64)
    df = np.bincount(tf.indices, minlength=tf.shape[1])
    idf = np.log((1.0 + len(captions)) / (1.0 + df)) + 1.0
    tfidf = tf @ sp.diags(idf)
    norms = np.sqrt(np.asarray(tfidf.multiply(tfidf).sum(axis=1)).ravel())
    norms[norms == 0] = 1.0
    return sp.csr_matrix(sp.diags(1.0 / norms) @ tfidf)


def image_semantics(tfidf: sp.csr_matrix, captions_per_image: int = 5) -> sp.csr_matrix:
    """One row per image: the mean of its captions' TF-IDF rows. The dot product of two rows is the mean
    over the 5 x 5 caption pairs of their TF-IDF similarity, which is VSL's image-image "CIDEr" matrix."""
    n_images = tfidf.shape[0] // captions_per_image
    pool = sp.kron(
        sp.identity(n_images, format="csr"), np.full((1, captions_per_image), 1 / captions_per_image)
    )
    return sp.csr_matrix(pool @ tfidf[: n_images * captions_per_image])


def main(argv: list[str] | None = None) -> None:
    """`python -m visa.vsl.text ROOT NAME [MIN_COUNT]`: SCAN's vocabulary from train + dev captions."""
    import sys

    args = sys.argv[1:] if argv is None else argv
    if len(args) not in (2, 3):
        print(
            "usage: python -m visa.vsl.text ROOT NAME [MIN_COUNT]  (e.g. data f30k_precomp 4)",
            file=sys.stderr,
        )
        sys.exit(2)
    root, name = Path(args[0]), args[1]
    captions = [c for split in ("train", "dev") for c in read_captions(root / name / f"{split}_caps.txt")]
    vocab = build_vocabulary(captions, int(args[2]) if len(args) == 3 else 4)
    out = root / "vocab" / f"{name}_vocab.json"
    vocab.save(out)
    print(f"{len(vocab)} words -> {out}")


if __name__ == "__main__":
    main()
