"""Train and evaluate region matchers (SGR, SAF; optionally with VSL) on SCAN's precomputed features.

    python -m visa.train model=sgr_vsl data=f30k_precomp data.root=DIR
    python -m visa.train train_experiment=f30k_saf_vsl data.root=DIR trainer=ddp trainer.devices=4
    python -m visa.train ... hydra.run.dir=RUN ckpt_path=last                  # resume RUN
    python -m visa.train train=false data=coco_precomp data.root=DIR ckpt_path=RUN/checkpoints/best.ckpt
    python -m visa.train train=false ... 'ckpt_path=[SGR.ckpt,SAF.ckpt]'      # SGRAF: mean of the two

Hydra primary config conf/train.yaml (beside the run's conf/config.yaml; groups model/, data/, trainer/,
train_experiment/, and logger/ shared with the run). The run folder gets metrics.json and checkpoints/.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from visa.core.errors import VisaError

log = logging.getLogger("visa.train")


def build(node: DictConfig, where: str, **kwargs: Any) -> Any:
    try:
        return instantiate(node, _convert_="all", **kwargs)
    except InstantiationException as e:  # Hydra wraps what the constructor raised
        cause = e.__cause__
        if isinstance(cause, VisaError):
            raise cause from None
        raise VisaError(f"{where}: cannot build {node.get('_target_')}: {cause or e}") from e


def make_loggers(cfg: DictConfig, run_dir: Path) -> list:
    """CSV always (run_dir/csv/); W&B too with logger=wandb (the run's W&B settings, through Lightning's
    WandbLogger; offline into the run folder when there is no account or key)."""
    from lightning.pytorch.loggers import CSVLogger

    loggers: list = [CSVLogger(run_dir, name="csv", version="")]
    target = cfg.logger.get("_target_", "") if cfg.get("logger") else ""
    if target.endswith("WandbLogger"):
        from lightning.pytorch.loggers import WandbLogger

        from visa.tracking import has_wandb_key

        mode = cfg.logger.get("mode", "auto")
        if mode == "disabled":
            return loggers
        offline = mode == "offline" or (mode == "auto" and not has_wandb_key())
        loggers.append(
            WandbLogger(
                project=cfg.logger.get("project", "visa"),
                entity=cfg.logger.get("entity"),
                name=cfg.logger.get("name") or f"{cfg.model.module.lower()}-{cfg.data.name}",
                group=cfg.logger.get("group"),
                tags=list(cfg.logger.get("tags") or []),
                save_dir=str(cfg.logger.get("dir") or run_dir),
                offline=offline,
                config=OmegaConf.to_container(cfg, resolve=True),
            )
        )
    return loggers


def checkpoint_list(ckpt_path: Any) -> list[str]:
    if ckpt_path is None:
        return []
    if isinstance(ckpt_path, (list, tuple, ListConfig)):
        return [str(p) for p in ckpt_path]
    return [p for p in str(ckpt_path).split(",") if p]


def load_matchers(paths: list[str], device: torch.device) -> list:
    from visa.vsl.module import RegionMatcherModule

    matchers = []
    for path in paths:
        if not Path(path).is_file():
            raise VisaError(f"checkpoint {path} not found; give ckpt_path=<a .ckpt written by visa.train>")
        module = RegionMatcherModule.load_from_checkpoint(path, map_location=device)
        matchers.append(module.to(device).eval())
    return matchers


@torch.no_grad()
def evaluate_checkpoints(
    paths: list[str],
    datamodule,
    split: str,
    protocols: list[str],
    shard_size: int | None,
    device: torch.device,
) -> dict[str, float]:
    """Recalls of one matcher, or of the mean similarity of several (SGRAF = SGR + SAF), per protocol."""
    from visa.vsl.evaluate import encode_split, evaluate_protocol, shard_similarities

    matchers = load_matchers(paths, device)
    loader = datamodule.eval_dataloader(split)
    encoded = [encode_split(m, loader, device) for m in matchers]

    def similarity_of(start: int, stop: int):
        sims = [
            shard_similarities(m.similarity, e.fold(start, stop), shard_size, device)
            for m, e in zip(matchers, encoded)
        ]
        return sum(sims) / len(sims)

    metrics: dict[str, float] = {}
    for i, protocol in enumerate(protocols):
        try:
            result = evaluate_protocol(similarity_of, loader.dataset.num_images, protocol)
        except ValueError as e:
            raise VisaError(f"eval.protocols: {e}") from None
        for key, value in result.items():
            metrics[f"{protocol}/{key}"] = round(value, 4)
            if i == 0:  # the first protocol is also the run's headline figure
                metrics[key] = round(value, 4)
    return metrics


def check_shapes(cfg: DictConfig, datamodule) -> None:
    regions, dim = datamodule.feature_shape
    if (regions, dim) != (cfg.model.num_regions, cfg.model.img_dim):
        raise VisaError(
            f"{datamodule.folder}: features are {regions} regions x {dim} dims, but model.num_regions="
            f"{cfg.model.num_regions} model.img_dim={cfg.model.img_dim}; set them to match the data"
        )


def train(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    import lightning as L
    from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint

    t_start = time.perf_counter()
    run_dir.mkdir(parents=True, exist_ok=True)
    L.seed_everything(cfg.seed, workers=True)
    datamodule = build(cfg.data, "data", seed=cfg.seed)
    check_shapes(cfg, datamodule)
    metrics: dict[str, Any] = {}
    ckpts = checkpoint_list(cfg.ckpt_path)
    device = torch.device("cuda" if torch.cuda.is_available() and cfg.trainer.accelerator != "cpu" else "cpu")
    if cfg.train:
        if cfg.model.get("vsl_weight", 0) > 0 and not cfg.data.semantics:
            raise VisaError("model.vsl_weight > 0 needs data.semantics=true (VSL's TF-IDF image similarity)")
        model = build(cfg.model, "model", vocab_size=len(datamodule.vocab))
        checkpoint = ModelCheckpoint(  # the best epoch by validation rsum
            dirpath=run_dir / "checkpoints",
            filename="epoch{epoch:03d}-rsum{val/rsum:.2f}",
            auto_insert_metric_name=False,
            monitor="val/rsum",
            mode="max",
        )
        # Every epoch's end, for ckpt_path=last (ModelCheckpoint's own save_last only follows a new best).
        last = ModelCheckpoint(dirpath=run_dir / "checkpoints", filename="last", enable_version_counter=False)
        loggers = make_loggers(cfg, run_dir)
        trainer = build(
            cfg.trainer,
            "trainer",
            callbacks=[checkpoint, last, LearningRateMonitor("epoch")],
            logger=loggers,
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


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> dict[str, Any]:
    try:
        return train(cfg, Path(HydraConfig.get().runtime.output_dir))
    except VisaError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except OmegaConfBaseException as e:
        print(f"error: config: {str(e).splitlines()[0]}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
