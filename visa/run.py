"""The single entry point: `python -m visa.run key=value ...` (Hydra; `-m` for multirun sweeps)."""

from __future__ import annotations

import json
import logging
import signal
import time
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from visa import entry
from visa.assembly import Assembly
from visa.cache import SharedFolderStore, SQLiteStore
from visa.cli import run_command
from visa.config import (
    BACKBONE,
    DATASET,
    FUSION,
    LOGGER,
    NORMALIZER,
    SecretInConfig,
    register,
)
from visa.core.errors import Interrupted, VisaError
from visa.core.loading import quiet_loaders
from visa.data import Dataset
from visa.method.keys import visual_keys
from visa.method.metrics import BASE, RERANKED
from visa.method.pipeline import evaluate_precomputed, run_visa
from visa.method.records import ResultsFile, ResultsFileError, ResultsReader

log = logging.getLogger("visa")
register()


def format_table(metrics: dict[str, Any], ks: list[int], reranker: str = "VISA") -> str:
    """The recall table: the backbone's row and the re-ranked row, labelled with the re-ranker's name."""
    labels = [("backbone", BASE), (f"+ {reranker}", RERANKED)]
    width = max(12, *(len(label) + 2 for label, _ in labels))
    header = f"{'':<{width}}" + "".join(f"{'R@' + str(k):>8}" for k in ks)
    subset = [k for k in (1, 2, 3) if f"{BASE}/R_subset@{k}" in metrics]  # CIRR's Recall_subset
    header += "".join(f"{'Rs@' + str(k):>8}" for k in subset)
    rows = [header]
    for label, prefix in labels:
        cells = [metrics[f"{prefix}/R@{k}"] for k in ks] + [metrics[f"{prefix}/R_subset@{k}"] for k in subset]
        rows.append(f"{label:<{width}}" + "".join(f"{v:>8.1f}" for v in cells))
    return "\n".join(with_ranking_metrics(rows, metrics))


def with_ranking_metrics(rows: list[str], metrics: dict[str, Any]) -> list[str]:
    """The table's header, backbone and + VISA rows with the ranking metrics the dataset reports beside R@k
    (INQUIRE's mAP@k, nDCG@k, MRR, in the dataset's order), so its primary metric is on screen too."""
    from visa.data import RANKING_METRICS

    names = [k[5:] for k in metrics if k.startswith("base/") and RANKING_METRICS.fullmatch(k[5:])]
    header, *lines = rows
    out = [header + "".join(f"{name:>9}" for name in names)]
    for line, prefix in zip(lines, (BASE, RERANKED)):
        # MRR is a fraction (0..1), as INQUIRE prints it; the others are percent
        out.append(line + "".join(f"{metrics[f'{prefix}/{n}']:>9.{3 if n == 'MRR' else 1}f}" for n in names))
    return out


# Above this share of queries with generic questions, the summary says what it means and what to try.
FALLBACK_HINT_SHARE = 20.0


def format_questions(metrics: dict[str, Any]) -> str | None:
    """One line on how the question LLM did (fallbacks and re-asks), and a hint when many queries fell back:
    their answers were left out, so "+ VISA" re-ranked them with the descriptions alone."""
    if "questions/fallback" not in metrics:
        return None
    fallback, share = metrics["questions/fallback"], metrics.get("questions/fallback_share", 0.0)
    queries = metrics.get("questions/try_0/asked", 0)
    mode = "constrained" if metrics.get("questions/constrained") else "free"
    line = (
        f"questions ({mode}): {fallback} of {queries} queries fell back to generic questions ({share:.1f}%), "
        f"{metrics.get('questions/retries', 0)} re-asked"
    )
    if share > FALLBACK_HINT_SHARE:
        tries = "questions.constrained=true, " if mode == "free" else ""
        line += (
            "\nhint: these queries' answers were left out, so + VISA re-ranked them with the descriptions "
            f"alone; results.jsonl has each question_reply. Try {tries}more questions.retries or a larger "
            "question LLM."
        )
    return line


def write_metrics(run_dir: Path, metrics: dict, cache_path: Path | None = None) -> None:
    # allow_nan=False: NaN and Infinity are not JSON; the stages stop on a non-finite score before this,
    # so a failure here is a value that slipped past them, named rather than written.
    try:
        text = json.dumps(metrics, indent=2, allow_nan=False) + "\n"
    except ValueError as e:
        raise VisaError(f"metrics.json: a non-finite value (NaN or Infinity): {e}") from None
    try:
        (run_dir / "metrics.json").write_text(text)
    except OSError as e:
        raise output_error(run_dir, e, cache_path) from None


def output_error(run_dir: Path, error: OSError, cache_path: Path | None) -> VisaError:
    """A run folder that cannot be written (a full disk, a quota, permissions): what is kept, what to do."""
    kept = f"the model results are kept in the cache {cache_path}, so " if cache_path else ""
    return VisaError(
        f"cannot write the run's outputs to {run_dir}: {error.strerror or error}; {kept}after freeing space "
        "(or with hydra.run.dir=... on another disk) the same command writes them again without computing "
        "anything"
    )


def saved_line(cache: SQLiteStore | SharedFolderStore) -> str:
    """What an interrupted run kept, and how to go on from it."""
    stages = ", ".join(f"{stage} {n}" for stage, n in cache.written.items())
    saved = f"{sum(cache.written.values())} new result(s) ({stages})" if stages else "no new result"
    return (
        f"{saved} saved in the cache {cache.path}, with every earlier one; run the same command again to "
        "resume (nothing saved is computed again)"
    )


def encode_gallery_on_nodes(assembly: Assembly, dataset: Dataset, backbone: Any) -> bool:
    """backbone.num_nodes > 1: every process that srun started (one per device on every node) encodes its
    share of the gallery into the cache. True in the process that goes on with the run (global rank 0)."""
    from visa.backbones.parallel import encode_across_nodes, start_nodes

    fabric = start_nodes(backbone)
    rank0 = fabric.global_rank == 0
    cache = assembly.open_store() if rank0 else None
    try:
        keys = visual_keys(backbone, dataset.gallery)
        encoded = encode_across_nodes(fabric, backbone, dataset.gallery, keys, cache)
    finally:
        if cache is not None:
            cache.close()
    log.info("encode_visual on %d processes: %d items encoded", fabric.world_size, encoded)
    return fabric.global_rank == 0


def run(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    t_start = time.perf_counter()
    assembly = Assembly(cfg)  # every part's keys are checked before anything is loaded
    settings = assembly.settings
    if not settings.progress:
        quiet_loaders()
    fusion = assembly.build(FUSION)
    dataset = assembly.build(DATASET).load()
    log.info("dataset %s: %d queries over %d items", dataset.name, len(dataset.queries), len(dataset.gallery))
    if dataset.precomputed is None and assembly.backbone_nodes() > 1:
        if not encode_gallery_on_nodes(assembly, dataset, assembly.build(BACKBONE)):
            return {}  # a helper process of the multi-node gallery encoding: its share is written
    normalizer = assembly.build(NORMALIZER)
    bank = assembly.bank(normalizer, dataset)
    normalizer_metrics: dict[str, Any] = {
        "reranker": assembly.choice("reranker"),
        "normalizer": assembly.choice("normalizer"),
    }
    if bank is not None:
        normalizer_metrics.update({"normalizer/bank": bank.spec, "normalizer/bank_size": len(bank.queries)})
    logger = assembly.build(LOGGER)
    logger.start(assembly.config(), run_dir)
    results_file = ResultsFile(run_dir / settings.results_file)
    cache_path: Path | None = None
    try:
        if dataset.precomputed is not None:
            metrics, records = evaluate_precomputed(dataset, fusion, settings)
            try:
                for record in records:
                    results_file.write(record)
            except ResultsFileError as e:
                raise output_error(run_dir, e.error, None) from None
        else:
            parts = assembly.parts(dataset, fusion, normalizer, bank)
            store = assembly.open_store()
            cache_path = store.path
            try:
                metrics, _ = run_visa(dataset, parts, settings, store, sink=results_file.write)
            except KeyboardInterrupt as e:  # Ctrl-C, or a scheduler's stop signal (visa.entry)
                raise Interrupted(saved_line(store), getattr(e, "signum", signal.SIGINT)) from None
            except ResultsFileError as e:  # the run folder: a full disk, a quota
                raise output_error(run_dir, e.error, store.path) from None
            finally:
                store.close()
                parts.close()  # stops the servers this run launched
            metrics.update(parts.counters())
        metrics = {
            **metrics,
            **normalizer_metrics,
            "data/queries": len(dataset.queries),
            "data/gallery": len(dataset.gallery),
            "data/skipped": len(dataset.skipped),  # bad items left out with dataset.on_bad_item=skip
            "time/total": round(time.perf_counter() - t_start, 3),
        }
        if settings.shard.active:  # no ranking: the final run without shard settings evaluates
            results_file.discard()
            write_metrics(run_dir, metrics, cache_path)
            computed = sum(v for k, v in metrics.items() if k.endswith("/computed"))
            print(f"shard {settings.shard.index}/{settings.shard.count}: {computed} model calls computed")
            print(
                f"no {settings.results_file} in a shard's folder: the final run (the same command without "
                "shard.*) reads every shard's results from the cache and writes them with the metrics"
            )
            print(f"run folder: {run_dir}")
            return metrics
        try:
            results_file.close()
        except ResultsFileError as e:
            raise output_error(run_dir, e.error, cache_path) from None
        write_metrics(run_dir, metrics, cache_path)
        print(format_table(metrics, list(settings.recall_at), assembly.reranker_label()))
        questions_line = format_questions(metrics)
        if questions_line:  # on the console and in run.log; a warning when the method did not run as meant
            high = metrics.get("questions/fallback_share", 0.0) > FALLBACK_HINT_SHARE
            log.log(logging.WARNING if high else logging.INFO, questions_line)
        print(f"run folder: {run_dir}")
        logger.log(metrics, ResultsReader(results_file.path), dataset)
    finally:
        results_file.discard()
        logger.finish()
    return metrics


def scrub_config_copy(run_dir: Path) -> None:
    """Rewrite the run folder's .hydra/config.yaml without the entries whose key looks like a secret."""
    import yaml

    from visa.tracking import redact

    path = run_dir / ".hydra" / "config.yaml"
    if path.is_file():
        path.write_text(yaml.safe_dump(redact(yaml.safe_load(path.read_text())), sort_keys=False))


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> dict[str, Any]:
    run_dir = Path(HydraConfig.get().runtime.output_dir)

    def body() -> dict[str, Any]:
        try:
            return run(cfg, run_dir)
        except SecretInConfig:  # from a config file: Hydra saved a copy in the run folder; scrub it
            scrub_config_copy(run_dir)
            raise

    with entry.stop_signals():  # SIGTERM / SIGUSR2 stop a run as Ctrl-C does
        return run_command(body, "no model result computed yet; nothing to resume")


if __name__ == "__main__":
    entry.main(main)
