"""Train and evaluate region matchers (SGR, SAF; optionally with VSL) on SCAN's precomputed features.

    python -m visa.train region_model=sgr_vsl datamodule=f30k_precomp datamodule.root=DIR
    python -m visa.train experiment=f30k_saf_vsl datamodule.root=DIR trainer=ddp trainer.devices=4
    python -m visa.train ... hydra.run.dir=RUN ckpt_path=last                  # resume RUN
    python -m visa.train train=false datamodule=coco_precomp datamodule.root=DIR ckpt_path=BEST.ckpt
    python -m visa.train train=false ... 'ckpt_path=[SGR.ckpt,SAF.ckpt]'      # SGRAF: mean of the two

Hydra primary config visa/vsl/conf/train.yaml, a config root of its own (groups datamodule/, region_model/,
trainer/, logger/, experiment/), apart from the run's conf/. Evaluating a checkpoint takes the model's
settings from the checkpoint. The run folder gets metrics.json, csv/ and checkpoints/.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import hydra
import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.loggers import Logger
from omegaconf import DictConfig, ListConfig, OmegaConf

from visa.cli import run_command
from visa.config import instantiate_part
from visa.core.errors import VisaError

if TYPE_CHECKING:
    from visa.vsl.data import PrecompDataModule

log = logging.getLogger("visa.train")
CONFIG_DIR = Path(__file__).resolve().parent / "vsl" / "conf"  # the training's config root


def wandb_logger(
    save_dir: str,
    project: str = "visa",
    entity: str | None = None,
    mode: str = "auto",
    name: str | None = None,
    group: str | None = None,
    tags: list[str] | None = None,
    dir: str | None = None,
) -> Logger:
    """Lightning's WandbLogger with the run's W&B settings: `mode` auto logs online when wandb has an API key
    and offline into the run folder otherwise (upload later with `wandb sync`); disabled logs nothing."""
    from lightning.pytorch.loggers import WandbLogger

    from visa.tracking import has_wandb_key

    if mode not in ("auto", "online", "offline", "disabled"):
        raise VisaError(f"logger.wandb.mode={mode!r}: expected auto, online, offline or disabled")
    offline = mode == "offline" or (mode == "auto" and not has_wandb_key())
    extra: dict[str, Any] = {"mode": "disabled"} if mode == "disabled" else {}
    return WandbLogger(
        project=project, entity=entity, name=name, group=group, tags=list(tags or []),
        save_dir=dir or save_dir, offline=offline, **extra,
    )  # fmt: skip


def make_loggers(cfg: DictConfig, run_dir: Path) -> list[Logger]:
    """One Lightning logger per key of `logger` (each from its yaml's `_target_`, keys checked), writing
    into the run folder; each records the run's whole config."""
    loggers = [instantiate_part(cfg, f"logger.{name}", save_dir=str(run_dir)) for name in cfg.logger or {}]
    config = OmegaConf.to_container(cfg, resolve=True)
    for logger in loggers:
        logger.log_hyperparams(config)
    return loggers


def checkpoint_list(ckpt_path: Any) -> list[str]:
    if ckpt_path is None:
        return []
    if isinstance(ckpt_path, (list, tuple, ListConfig)):
        return [str(p) for p in ckpt_path]
    return [p for p in str(ckpt_path).split(",") if p]


@torch.no_grad()
def evaluate_checkpoints(
    paths: list[str],
    datamodule: PrecompDataModule,
    split: str,
    protocols: list[str],
    shard_size: int | None,
    device: torch.device,
) -> dict[str, float]:
    """Recalls of one matcher, or of the mean similarity of several (SGRAF = SGR + SAF), per protocol. Each
    matcher is rebuilt from its checkpoint's hyper-parameters, which must fit the data."""
    from visa.vsl.evaluate import encode_split, evaluate_protocol, shard_similarities
    from visa.vsl.module import check_fits, load_matcher

    matchers = [load_matcher(path, device) for path in paths]
    for path, matcher in zip(paths, matchers):
        check_fits(
            matcher.matcher, f"checkpoint {path}", str(datamodule.folder), datamodule.feature_shape,
            len(datamodule.vocab),
        )  # fmt: skip
    loader = datamodule.eval_dataloader(split)
    encoded = [encode_split(m, loader, device) for m in matchers]

    def similarity_of(start: int, stop: int) -> np.ndarray:
        sims = [
            shard_similarities(m.similarity, e.fold(start, stop), shard_size, device)
            for m, e in zip(matchers, encoded)
        ]
        return np.mean(sims, axis=0)

    metrics: dict[str, float] = {}
    for i, protocol in enumerate(protocols):
        try:
            result = evaluate_protocol(similarity_of, datamodule.split(split).num_images, protocol)
        except ValueError as e:
            raise VisaError(f"eval.protocols: {e}") from None
        for key, value in result.items():
            metrics[f"{protocol}/{key}"] = round(value, 4)
            if i == 0:  # the first protocol is also the run's headline figure
                metrics[key] = round(value, 4)
    return metrics


def train(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    import lightning as L
    from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint

    from visa.vsl.module import check_fits

    t_start = time.perf_counter()
    run_dir.mkdir(parents=True, exist_ok=True)
    L.seed_everything(cfg.seed, workers=True)
    datamodule: PrecompDataModule = instantiate_part(cfg, "datamodule", seed=cfg.seed)
    metrics: dict[str, Any] = {}
    ckpts = checkpoint_list(cfg.ckpt_path)
    device = torch.device("cuda" if torch.cuda.is_available() and cfg.trainer.accelerator != "cpu" else "cpu")
    if cfg.train:
        model = instantiate_part(cfg, "region_model", vocab_size=len(datamodule.vocab))
        check_fits(
            model.matcher, "region_model.matcher", str(datamodule.folder), datamodule.feature_shape,
            len(datamodule.vocab),
        )  # fmt: skip
        if model.vsl_weight > 0 and not datamodule.semantics:
            raise VisaError(
                "region_model.vsl_weight > 0 needs datamodule.semantics=true (VSL's TF-IDF image similarity)"
            )
        checkpoint = ModelCheckpoint(  # the best epoch by validation rsum
            dirpath=run_dir / "checkpoints",
            filename="epoch{epoch:03d}-rsum{val/rsum:.2f}",
            auto_insert_metric_name=False,
            monitor="val/rsum",
            mode="max",
        )
        # Every epoch's end, for ckpt_path=last (ModelCheckpoint's own save_last only follows a new best).
        last = ModelCheckpoint(dirpath=run_dir / "checkpoints", filename="last", enable_version_counter=False)
        trainer = instantiate_part(
            cfg,
            "trainer",
            callbacks=[checkpoint, last, LearningRateMonitor("epoch")],
            logger=make_loggers(cfg, run_dir),
            default_root_dir=str(run_dir),
        )
        resume = None
        if ckpts == ["last"]:
            resume = run_dir / "checkpoints" / "last.ckpt"
            if not resume.is_file():
                raise VisaError(
                    f"ckpt_path=last: {resume} not found; resume a run with hydra.run.dir=<its run folder>"
                )
        elif ckpts:
            resume = Path(ckpts[0])
            if len(ckpts) > 1 or not resume.is_file():
                raise VisaError(
                    f"ckpt_path={cfg.ckpt_path}: to resume training give one existing .ckpt or last"
                )
        trainer.fit(model, datamodule=datamodule, ckpt_path=str(resume) if resume else None)
        if not trainer.is_global_zero:
            return {}
        best = checkpoint.best_model_path or last.best_model_path
        metrics.update(
            {
                "best_checkpoint": best,
                "last_checkpoint": last.best_model_path,
                "val/rsum": round(float(checkpoint.best_model_score or float("nan")), 4),
                "time/train": round(time.perf_counter() - t_start, 3),
            }
        )
        ckpts = [best] if best else []
    if cfg.test or not cfg.train:
        if not ckpts:
            raise VisaError(
                "nothing to evaluate: give ckpt_path=<checkpoint> (or a list, for SGRAF) with train=false"
            )
        t_eval = time.perf_counter()
        metrics.update(
            evaluate_checkpoints(
                ckpts, datamodule, cfg.eval.split, list(cfg.eval.protocols), cfg.eval.shard_size, device
            )
        )
        metrics["time/eval"] = round(time.perf_counter() - t_eval, 3)
        metrics["checkpoints"] = ckpts
    metrics["time/total"] = round(time.perf_counter() - t_start, 3)
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    headline = {
        k: metrics[k]
        for k in ("i2t/R@1", "i2t/R@5", "i2t/R@10", "t2i/R@1", "t2i/R@5", "t2i/R@10", "rsum")
        if k in metrics
    }
    print(" ".join(f"{k} {v:.1f}" for k, v in headline.items()))
    print(f"run folder: {run_dir}")
    return metrics


# The command forms of 0.1.0 (groups data, model, train_experiment; logger none), read for one release.
_OLD_GROUPS = {"data": "datamodule", "model": "region_model", "train_experiment": "experiment"}
_OLD_WANDB_KEYS = {"project", "entity", "mode", "name", "group", "tags", "dir"}
_OVERRIDE = re.compile(r"^(?P<prefix>\+\+|\+|~)?(?P<key>[A-Za-z_][\w.]*)(?P<rest>(=.*)?)$", re.S)


def modern_overrides(args: Sequence[str]) -> tuple[list[str], list[str]]:
    """The overrides with 0.1.0's group names replaced (`data=` -> `datamodule=`, `model.img_dim=` ->
    `region_model.matcher.img_dim=`, `train_experiment=` -> `experiment=`, `logger=none` -> `logger=csv`,
    `logger.project=` -> `logger.wandb.project=`), and the old forms that were replaced."""
    import inspect

    from visa.vsl.models import RegionMatcher

    matcher_keys = set(inspect.signature(RegionMatcher).parameters) - {"vocab_size"}
    out, old = [], []
    for arg in args:
        match = _OVERRIDE.match(arg)
        if not match:  # a flag (--help, -m) or something Hydra will judge
            out.append(arg)
            continue
        prefix, key, rest = match["prefix"] or "", match["key"], match["rest"]
        head, _, tail = key.partition(".")
        new_key = key
        if head in _OLD_GROUPS:
            new_head = _OLD_GROUPS[head]
            if head == "model" and tail.split(".")[0] in matcher_keys:
                new_head = "region_model.matcher"
            new_key = f"{new_head}.{tail}" if tail else new_head
        elif head == "logger" and tail.split(".")[0] in _OLD_WANDB_KEYS:
            new_key = f"logger.wandb.{tail}"
        if key == "logger" and rest == "=none":
            rest = "=csv"
        new = f"{prefix}{new_key}{rest}"
        if new != arg:
            old.append(f"{arg} -> {new}")
        out.append(new)
    return out, old


@hydra.main(version_base="1.3", config_path="vsl/conf", config_name="train")
def main(cfg: DictConfig) -> dict[str, Any]:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    resume = f"resume with the same command plus hydra.run.dir={run_dir} ckpt_path=last"
    return run_command(lambda: train(cfg, run_dir), resume)


if __name__ == "__main__":
    sys.argv[1:], replaced = modern_overrides(sys.argv[1:])
    if replaced:
        print(
            f"note: read 0.1.0's command forms as today's ({'; '.join(replaced)}); they go in the next "
            "release (docs/vsl.md)",
            file=sys.stderr,
        )
    main()
