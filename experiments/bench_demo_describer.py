"""What the demo describer alone adds: re-rank the demo backbone's top K with the re-ranker's score of
(query, item description) only — no questions, no answers — for each describer, at the paper's fusion
weight. Loads no LLM, so it takes a minute or two on CPU.

    python experiments/bench_demo_describer.py                       # describer=demo_labels vs demo
    python experiments/bench_demo_describer.py --describers demo --overrides dataset.limit=10

Prints a markdown table (R@1/5/10 of the backbone and of each describer's re-ranking) for
experiments/pipeline.md. Uses $VISA_CACHE like the run (descriptions and scores are cached).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

from visa.cache import SQLiteStore, default_cache_dir
from visa.config import instantiate_part, register
from visa.method.fusion import rerank
from visa.method.metrics import recall_at_k
from visa.method.retrieve import retrieve
from visa.method.settings import RetrievalSettings, Settings
from visa.method.stages import Run

CONF = Path(__file__).resolve().parents[1] / "conf"


def description_rerank(describer: str, overrides: list[str]) -> tuple[dict, dict, float]:
    """(backbone recall, recall after re-ranking by the description score, fusion alpha)."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=[f"describer={describer}", "progress=false", *overrides])
    dataset = instantiate_part(cfg, "dataset").load()
    fusion = instantiate_part(cfg, "fusion")
    settings = Settings(
        retrieval=RetrievalSettings(top_k=cfg.retrieval.top_k), recall_at=list(cfg.recall_at), progress=False
    )
    cache = SQLiteStore(cfg.cache_dir or default_cache_dir())
    try:
        run = Run(dataset, settings, cache)
        retrieved = retrieve(run, instantiate_part(cfg, "backbone"))
        base_scores, candidates = retrieved.scores, retrieved.candidates
        k = min(settings.retrieval.top_k, candidates.shape[1])
        top = candidates[:, :k]
        items = [dataset.gallery[i] for i in sorted(set(top.flatten().tolist()))]
        descriptions = run.describe(instantiate_part(cfg, "describer"), items)
        pairs = [
            (query.text, descriptions[dataset.gallery[g].id])
            for qi, query in enumerate(dataset.queries)
            for g in top[qi].tolist()
        ]
        text = torch.tensor(run.score(instantiate_part(cfg, "scorer"), pairs)).view(len(dataset.queries), k)
    finally:
        cache.close()
    relevant = [q.relevant for q in dataset.queries]
    base = recall_at_k(candidates, relevant, settings.recall_at)
    reranked = recall_at_k(rerank(candidates, fusion(base_scores[:, :k], text)), relevant, settings.recall_at)
    return base, reranked, fusion.alpha


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--describers", nargs="+", default=["demo_labels", "demo"])
    parser.add_argument("--overrides", nargs="*", default=[], help="Hydra overrides, e.g. dataset.limit=10")
    args = parser.parse_args()
    register()
    rows = []
    for describer in args.describers:
        base, reranked, alpha = description_rerank(describer, args.overrides)
        if not rows:
            rows.append(("backbone alone", base))
        rows.append((f"+ description score, describer={describer} (alpha {alpha})", reranked))
    ks = list(rows[0][1])
    print("| ranking | " + " | ".join(ks) + " |")
    print("|---|" + "---|" * len(ks))
    for name, recall in rows:
        print(f"| {name} | " + " | ".join(f"{recall[k]:.1f}" for k in ks) + " |")


if __name__ == "__main__":
    main()
