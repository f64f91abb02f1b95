"""The ask stage of the demo on its own: seconds, generated tokens a second, fallbacks and re-asks, with
shared-prefix reuse off and on and the replies constrained or not, measured in one process (the model is
loaded once, before any timing) and with no cache (every variant computes every reply).

    python -m experiments.bench_questions                         # the demo's 92 queries, 4 variants
    python -m experiments.bench_questions --limit 16              # a quick look
    python -m experiments.bench_questions --variants on:on on:on:paper --overrides dataset=demo_heldout
    python -m experiments.bench_questions --variants on:on --threads 1 2   # torch threads while decoding

A variant is PREFIX:CONSTRAINED[:TEMPLATE] with on|off for each (TEMPLATE: a questions.prompt, default the
config's). Prints a markdown table for experiments/questions.md and the first replies of each variant.
Generated tokens are the replies re-encoded with the model's tokenizer (what the model wrote, without the
end-of-turn token).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

from visa.config import instantiate_part, register, settings_from
from visa.generation.hf import PrefixCache
from visa.generation.hf_loading import load_text_model
from visa.method.settings import Settings
from visa.method.stages import Run

CONF = Path(__file__).resolve().parents[1] / "conf"
DEFAULT_VARIANTS = ["off:off", "on:off", "off:on", "on:on"]


def parse_variant(text: str, default_template: str) -> tuple[bool, bool, str]:
    parts = text.split(":")
    if len(parts) not in (2, 3) or any(p not in ("on", "off") for p in parts[:2]):
        raise SystemExit(f"--variants: {text!r} is not PREFIX:CONSTRAINED[:TEMPLATE] with on|off")
    return parts[0] == "on", parts[1] == "on", parts[2] if len(parts) == 3 else default_template


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=None, help="first N queries only")
    parser.add_argument("--variants", nargs="+", default=DEFAULT_VARIANTS)
    parser.add_argument("--overrides", nargs="*", default=[], help="run overrides, e.g. dataset=demo_heldout")
    parser.add_argument(
        "--threads", nargs="+", type=int, default=[torch.get_num_threads()], help="torch threads (each)"
    )
    parser.add_argument("--show", type=int, default=3, help="replies printed per variant")
    args = parser.parse_args()

    register()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=["progress=false", *args.overrides])
    dataset = instantiate_part(cfg, "dataset").load()
    if args.limit:
        dataset = replace(dataset, queries=dataset.queries[: args.limit])
    base = settings_from(cfg)
    gen = instantiate_part(cfg, "question_llm")
    tokenizer, _ = load_text_model(gen.model, gen.gguf_file, gen.dtype, gen.device, gen.trust_remote_code)
    warm = _first_prompt(dataset, base)
    gen.generate([replace(warm, layout=None)])  # loads the model before any timing
    gen.generate([warm])  # and compiles the grammar
    rows = []
    for text, threads in [(v, t) for v in args.variants for t in args.threads]:
        torch.set_num_threads(threads)
        prefix, constrained, template = parse_variant(text, base.questions.prompt)
        gen.prefix_cache, gen.prefixes = prefix, PrefixCache()
        settings = Settings(
            retrieval=base.retrieval,
            questions=replace(base.questions, constrained=constrained, prompt=template),
            progress=False,
        )
        run = Run(dataset, settings, store=None)
        t0 = time.perf_counter()
        questions = run.ask(gen)
        seconds = time.perf_counter() - t0
        tokens = sum(len(tokenizer(q.raw, add_special_tokens=False)["input_ids"]) for q in questions)
        replies = sum(asked for asked, _ in run.question_tries)
        rows.append(
            {
                "prefix reuse": "on" if prefix else "off",
                "constrained": "on" if constrained else "off",
                "prompt": template,
                "threads": threads,
                "queries": len(questions),
                "replies": replies,
                "seconds": round(seconds, 1),
                "tokens/s": round(tokens / seconds, 1),
                "fallback": sum(not q.parsed for q in questions),
                "try 0 parsed": run.question_tries[0][1],
                "dropped": sum(q.dropped for q in questions),
                "prefix tokens reused": gen.prefixes.reused_tokens,
            }
        )
        print(f"\n{text} ({threads} threads): {rows[-1]}")
        for query, q in list(zip(dataset.queries, questions))[: args.show]:
            print(f"  {query.text[:70]!r} -> {q.questions} ({'parsed' if q.parsed else 'fallback'})")
    print()
    header = list(rows[0])
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(str(row[h]) for h in header) + " |")


def _first_prompt(dataset, settings: Settings):
    from visa.method.prompts import question_prompt

    q = settings.questions
    return question_prompt(dataset.queries[0].text, q.max, dataset.gallery[0].kind, q.prompt, True)


if __name__ == "__main__":
    main()
