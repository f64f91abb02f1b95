"""Projected wall time of INQUIRE-Fullrank's two-stage run per re-ranker, from what measured runs cost.

    python experiments/project_fullrank.py RUN [RUN ...] [--queries 250] [--top-k 100] [--search-ms 31]

Each RUN is a run folder (its metrics.json and .hydra/config.yaml), e.g. the jobs of
`python -m visa.run -m reranker=none,visa,visa_description,pointwise`. From a run's `cost/<stage>/seconds`
and `cost/<stage>/calls` (what each result cost when it was computed, cached or not) the script takes the
seconds per call of every stage, scales the calls to the Fullrank run, and adds them up:

- per query (`encode_text`, `ask`): the run's calls per query x the Fullrank queries;
- per candidate (`answer`, `score`, `judge`, `cross_score`): the run's calls per (query, candidate) x
  queries x top-K;
- per distinct candidate item (`describe`): queries x top-K, an upper bound (the 250 queries' top-100 lists
  share few images among 5 million);
- the gallery (`encode_visual`, `encode_bank`): none, INQUIRE publishes the 5 million embeddings;
- the first stage's search: `--search-ms` per query (experiments/scaling.md, the 5,000,000 x 512 table).

The projection is only as good as the per-call costs: runs of the offline demo give CPU figures for the demo's
stand-in models, runs of the paper's models on a GPU give the figures that matter.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml

PER_QUERY = ("encode_text", "ask")
PER_CANDIDATE = ("answer", "score", "judge", "cross_score")
PER_ITEM = ("describe",)


def projected(run: Path, queries: int, top_k: int) -> tuple[str, dict[str, tuple[float, float]]]:
    """(the run's label, {stage: (projected calls, projected seconds)})."""
    metrics = json.loads((run / "metrics.json").read_text())
    config = yaml.safe_load((run / ".hydra" / "config.yaml").read_text())
    label = f"{metrics.get('reranker', '?')} / {metrics.get('normalizer') or 'none'}"
    run_queries, run_k = metrics["data/queries"], config["retrieval"]["top_k"]
    out = {}
    for stage in PER_QUERY + PER_CANDIDATE + PER_ITEM:
        calls, seconds = metrics.get(f"cost/{stage}/calls", 0), metrics.get(f"cost/{stage}/seconds", 0.0)
        if not calls:
            continue
        per_call = seconds / calls
        if stage in PER_QUERY:
            n = calls / run_queries * queries
        elif stage in PER_CANDIDATE:
            n = calls / (run_queries * run_k) * queries * top_k
        else:
            n = queries * top_k
        out[stage] = (n, n * per_call)
    return label, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--queries", type=int, default=250)
    parser.add_argument("--top-k", type=int, default=100)
    parser.add_argument("--search-ms", type=float, default=0.0, help="first-stage search, ms per query")
    args = parser.parse_args()
    rows = [projected(run, args.queries, args.top_k) for run in args.runs]
    stages = [s for s in PER_QUERY + PER_ITEM + PER_CANDIDATE if any(s in r for _, r in rows)]
    search_s = args.search_ms * args.queries / 1000
    print(f"{args.queries} queries, top {args.top_k} re-ranked; first-stage search {search_s:.0f} s\n")
    print("| re-ranker / normaliser | " + " | ".join(f"{s} calls (s)" for s in stages) + " | total |")
    print("|---|" + "---:|" * (len(stages) + 1))
    for label, stage_costs in rows:
        cells = [
            f"{stage_costs[s][0]:,.0f} ({stage_costs[s][1]:,.0f})" if s in stage_costs else "-"
            for s in stages
        ]
        total = search_s + sum(seconds for _, seconds in stage_costs.values())
        print(f"| {label} | " + " | ".join(cells) + f" | {total:,.0f} s = {total / 3600:.2f} h |")


if __name__ == "__main__":
    main()
