"""The single entry point: `python -m visa.run key=value ...` (Hydra; `-m` for multirun sweeps)."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from visa.cache import SharedFolderStore, SQLiteStore, default_cache_dir, open_cache
from visa.cli import run_command
from visa.config import GROUPS, _import_target, check_part, instantiate_part, register, settings_from
from visa.core.errors import Interrupted, VisaError
from visa.data import Dataset, Query, check_modalities
from visa.data.banks import Bank, read_bank
from visa.method.keys import visual_keys
from visa.method.parts import Components
from visa.method.pipeline import evaluate_precomputed, run_visa

log = logging.getLogger("visa")
register()


def format_table(metrics: dict[str, Any], ks: list[int]) -> str:
    header = f"{'':<12}" + "".join(f"{'R@' + str(k):>8}" for k in ks)
    subset = [k for k in (1, 2, 3) if f"base/R_subset@{k}" in metrics]  # CIRR's Recall_subset
    header += "".join(f"{'Rs@' + str(k):>8}" for k in subset)
    rows = [header]
    for label, prefix in (("backbone", "base"), ("+ VISA", "visa")):
        cells = [metrics[f"{prefix}/R@{k}"] for k in ks] + [metrics[f"{prefix}/R_subset@{k}"] for k in subset]
        rows.append(f"{label:<12}" + "".join(f"{v:>8.1f}" for v in cells))
    return "\n".join(rows)


def _choice(cfg: DictConfig, group: str) -> str:
    """The config file chosen for a group (`backbone=demo` -> "demo"), or its class outside a Hydra run."""
    try:
        return HydraConfig.get().runtime.choices[group]
    except ValueError:
        return cfg[group]._target_


def write_outputs(run_dir: Path, metrics: dict, results: list[dict]) -> None:
    # allow_nan=False: NaN and Infinity are not JSON; the stages stop on a non-finite score before this,
    # so a failure here is a value that slipped past them, named rather than written.
    try:
        (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, allow_nan=False) + "\n")
        with open(run_dir / "results.jsonl", "w", encoding="utf-8") as f:
            for record in results:
                try:
                    f.write(json.dumps(record, ensure_ascii=False, allow_nan=False) + "\n")
                except ValueError:
                    raise VisaError(
                        f"results.jsonl: query {record.get('index')} has a non-finite value (NaN or Infinity)"
                    ) from None
    except ValueError as e:
        raise VisaError(f"metrics.json: a non-finite value (NaN or Infinity): {e}") from None


def saved_line(cache: SQLiteStore | SharedFolderStore) -> str:
    """What an interrupted run kept, and how to go on from it."""
    stages = ", ".join(f"{stage} {n}" for stage, n in cache.written.items())
    saved = f"{sum(cache.written.values())} new result(s) ({stages})" if stages else "no new result"
    return (
        f"{saved} saved in the cache {cache.path}, with every earlier one; run the same command again to "
        "resume (nothing saved is computed again)"
    )


def load_bank(cfg: DictConfig, normalizer: Any, dataset: Dataset) -> Bank | None:
    """The normaliser's reference bank (None for normalizer=none), read and checked against the test queries
    before any model loads."""
    if normalizer.bank is None:
        return None
    if dataset.precomputed is not None:
        raise VisaError(
            f"normalizer={_choice(cfg, 'normalizer')} needs the backbone's embeddings, and dataset "
            f"{dataset.name} holds precomputed scores only; use normalizer=none"
        )

    def load_split(split: str) -> list[Query]:
        if "split" not in cfg.dataset:
            raise VisaError(
                f"normalizer.bank=split:{split}: dataset {dataset.name} has no dataset.split setting; name a "
                "captions file or a shipped bank (demo) instead"
            )
        node = {**OmegaConf.to_container(cfg.dataset, resolve=True), "split": split}  # type: ignore[dict-item]
        loader = instantiate_part(OmegaConf.create({"dataset": node}), "dataset")
        texts = getattr(loader, "texts", None)  # the captions alone, without reading the split's media
        return [Query(t, ()) for t in texts()] if callable(texts) else loader.load().queries

    return read_bank(normalizer.bank, dataset, load_split, normalizer.bank_limit)


def encode_gallery_on_nodes(cfg: DictConfig, dataset, backbone) -> bool:
    """backbone.num_nodes > 1: every process that srun started (one per device on every node) encodes its
    share of the gallery into the cache. True in the process that goes on with the run (global rank 0)."""
    from visa.backbones.parallel import encode_across_nodes, start_nodes

    fabric = start_nodes(backbone)
    rank0 = fabric.global_rank == 0
    cache = open_cache(cfg.cache_dir or default_cache_dir(), cfg.cache_layout) if rank0 else None
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
    for group in GROUPS:  # every part's keys are checked before anything is loaded
        check_part(cfg[group], group)
    settings = settings_from(cfg)
    fusion = instantiate_part(cfg, "fusion")
    dataset = instantiate_part(cfg, "dataset").load()
    log.info("dataset %s: %d queries over %d items", dataset.name, len(dataset.queries), len(dataset.gallery))
    if dataset.precomputed is None and cfg.backbone.get("num_nodes", 1) > 1:
        if not encode_gallery_on_nodes(cfg, dataset, instantiate_part(cfg, "backbone")):
            return {}  # a helper process of the multi-node gallery encoding: its share is written
    normalizer = instantiate_part(cfg, "normalizer")
    bank = load_bank(cfg, normalizer, dataset)
    normalizer_metrics: dict[str, Any] = {"normalizer": _choice(cfg, "normalizer")}
    if bank is not None:
        normalizer_metrics.update({"normalizer/bank": bank.spec, "normalizer/bank_size": len(bank.queries)})
    logger = instantiate_part(cfg, "logger")
    logger.start(OmegaConf.to_container(cfg, resolve=True), run_dir)
    try:
        if dataset.precomputed is not None:
            metrics, results = evaluate_precomputed(dataset, fusion, settings)
        else:
            # what the backbone can embed, from its class: a mismatch stops here, before any model loads
            backbone_class = _import_target(cfg.backbone._target_, "backbone")
            check_modalities(dataset, backbone_class, _choice(cfg, "backbone"))
            parts = Components(
                backbone=instantiate_part(cfg, "backbone"),
                question_llm=instantiate_part(cfg, "question_llm"),
                answer_mllm=instantiate_part(cfg, "answer_mllm"),
                describer=instantiate_part(cfg, "describer"),
                scorer=instantiate_part(cfg, "scorer"),
                fusion=fusion,
                normalizer=normalizer,
                bank=bank,
            )
            store = open_cache(cfg.cache_dir or default_cache_dir(), cfg.cache_layout)
            try:
                metrics, results = run_visa(dataset, parts, settings, store)
            except KeyboardInterrupt:
                raise Interrupted(saved_line(store)) from None
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
        write_outputs(run_dir, metrics, results)
        if settings.shard.active:  # no ranking: the final run without shard settings evaluates
            computed = sum(v for k, v in metrics.items() if k.endswith("/computed"))
            print(f"shard {settings.shard.index}/{settings.shard.count}: {computed} model calls computed")
            print(f"run folder: {run_dir}")
            return metrics
        print(format_table(metrics, list(cfg.recall_at)))
        print(f"run folder: {run_dir}")
        logger.log(metrics, results, dataset)
    finally:
        logger.finish()
    return metrics


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> dict[str, Any]:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    return run_command(lambda: run(cfg, run_dir), "no model result computed yet; nothing to resume")


if __name__ == "__main__":
    main()
