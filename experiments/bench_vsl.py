"""Costs of the region matchers (SGR / SAF, docs/vsl.md) on this machine, with random weights and features
(the cost does not depend on the values):

  train     training throughput (image-caption pairs/s) at batch 128 with the published sizes (36 x 2048
            regions, word 300, embed 1024, sim 256, 14-token captions), and the share of the step spent in
            the pair similarity (the step minus the same step through the encoders alone);
  eval      a 1K test (1,000 images x 5,000 captions) scored with shards of 100 x 100 and with one shard,
            time and peak memory (small model dims, so that it runs in a minute on a shared CPU);
  pairwise  the VISA retrieve stage's pairwise path (visa.method.pairwise) over 5,000 images, peak memory as
            the number of queries grows (small dims).

    python experiments/bench_vsl.py all          # or: train | eval | pairwise
Each measurement runs in its own process, so that its peak resident memory (ru_maxrss) is its own.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time

import torch

TOKENS = 14  # Flickr30K captions average about 12 words, plus <start> and <end>


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def captions(n: int, vocab: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = torch.randint(TOKENS - 4, TOKENS + 5, (n,), generator=generator)
    tokens = torch.randint(4, vocab, (n, int(lengths.max())), generator=generator)
    return tokens * (torch.arange(tokens.shape[1])[None] < lengths[:, None]), lengths


def bench_train(module: str, steps: int = 2) -> dict:
    from visa.vsl.losses import triplet_ranking_loss, visual_semantic_loss
    from visa.vsl.models import RegionMatcher

    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    model = RegionMatcher(8000, module)  # published sizes
    opt = torch.optim.Adam(model.parameters(), lr=2e-4)
    regions = torch.randn(128, 36, 2048, generator=g)
    tokens, lengths = captions(128, 8000, g)
    semantics = torch.rand(128, 128, generator=g)

    def step(full: bool) -> float:
        t0 = time.perf_counter()
        img, cap = model.encode_images(regions), model.encode_texts(tokens, lengths)
        if full:
            scores = model.similarity(img, cap, lengths)
            loss = triplet_ranking_loss(scores) + visual_semantic_loss(scores, semantics)
        else:  # the encoders alone, for the share of the similarity
            loss = img.sum() + cap.sum()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 2.0)
        opt.step()
        return time.perf_counter() - t0

    step(True)  # warm-up
    full = min(step(True) for _ in range(steps))
    encoders = min(step(False) for _ in range(steps))
    return {
        "what": f"train {module} batch 128",
        "step_s": round(full, 2),
        "pairs_per_s": round(128 / full, 1),
        "similarity_share": round(1 - encoders / full, 3),
        "peak_rss_mb": round(peak_rss_mb()),
    }


def small_matcher(module: str = "SGR", dim: int = 16):
    from visa.vsl.models import RegionMatcher

    torch.manual_seed(0)
    return RegionMatcher(1000, module, img_dim=dim, word_dim=dim, embed_size=dim, sim_dim=dim).eval()


def bench_eval(shard: int | None) -> dict:
    from visa.vsl.evaluate import Encoded, recalls, shard_similarities

    model = small_matcher()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        tokens, lengths = captions(5000, 1000, g)
        enc = Encoded(
            model.encode_images(torch.randn(1000, 36, 16, generator=g)),
            model.encode_texts(tokens, lengths),
            lengths,
        )
        t0 = time.perf_counter()
        sims = shard_similarities(model.similarity, enc, shard)
        seconds = time.perf_counter() - t0
    recalls(sims)
    return {
        "what": f"1K eval, shard {shard or 'none'} (dims 16)",
        "seconds": round(seconds, 1),
        "pairs_per_s": round(5_000_000 / seconds),
        "peak_rss_mb": round(peak_rss_mb()),
    }


def bench_pairwise(n_images: int, n_queries: int) -> dict:
    from visa.data import Item
    from visa.method.pairwise import pairwise_topk_stream

    model = small_matcher()
    g = torch.Generator().manual_seed(0)
    features = torch.randn(n_images, 36, 16, generator=g)
    gallery = [Item(str(i), f"{i}.jpg") for i in range(n_images)]
    tokens, lengths = captions(n_queries, 1000, g)

    def score(texts: list[str], items: list[Item], indices: list[int]) -> torch.Tensor:
        rows = [int(t) for t in texts]
        with torch.no_grad():
            cap = model.encode_texts(tokens[rows], lengths[rows])
            return model.similarity(model.encode_images(features[indices]), cap, lengths[rows]).T

    rss_before = peak_rss_mb()
    t0 = time.perf_counter()
    results = list(pairwise_topk_stream(score, gallery, 20, 100, 500)([str(q) for q in range(n_queries)]))
    seconds = time.perf_counter() - t0
    assert len(results) == n_queries
    return {
        "what": f"pairwise retrieve {n_images} images x {n_queries} queries (dims 16; blocks 100 x 500)",
        "seconds": round(seconds, 1),
        "pairs_per_s": round(n_images * n_queries / seconds),
        "peak_rss_mb": round(peak_rss_mb()),
        "rss_before_mb": round(rss_before),
    }


def child(kind: str, *args: str) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--one", kind, *args], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    if sys.argv[1:2] == ["--one"]:
        kind, args = sys.argv[2], sys.argv[3:]
        fn = {"train": bench_train, "eval": bench_eval, "pairwise": bench_pairwise}[kind]
        parsed = [None if a == "none" else (int(a) if a.isdigit() else a) for a in args]
        print(json.dumps(fn(*parsed)))
        return
    which = sys.argv[1] if len(sys.argv) > 1 else "all"
    runs = []
    if which in ("all", "train"):
        runs += [("train", "SGR"), ("train", "SAF")]
    if which in ("all", "eval"):
        runs += [("eval", "100"), ("eval", "none")]
    if which in ("all", "pairwise"):
        runs += [("pairwise", "5000", "100"), ("pairwise", "5000", "500"), ("pairwise", "5000", "2500")]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for run in runs:
        print(json.dumps(child(*run)), flush=True)


if __name__ == "__main__":
    main()
