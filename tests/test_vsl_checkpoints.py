"""A trained region matcher is evaluated from its checkpoint alone: the commands of docs/vsl.md, the checks
of its settings against the data, checkpoints of the earlier flat layout, the training's Lightning loggers
built from their yaml, the training config root and the 0.1.0 command forms."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers.wandb_log import read_transaction_log
from hydra import compose, initialize_config_dir

from visa.backbones.region_matcher import RegionMatcherBackbone
from visa.config import instantiate_part
from visa.core.errors import VisaError
from visa.data import Item
from visa.train import CONFIG_DIR, evaluate_checkpoints, modern_overrides, train
from visa.vsl.data import PrecompDataModule
from visa.vsl.module import load_matcher
from visa.vsl.synthetic import write_toy_precomp

REPO = Path(__file__).resolve().parents[1]
# Not the defaults of region_model (2048-dim regions, word 300, embed 1024, sim 256, SGR): an evaluation
# that fell back on the config's settings could not load these weights.
TRAINED = {"module": "SAF", "img_dim": 16, "word_dim": 8, "embed_size": 24, "sim_dim": 12, "bi_gru": False}
SIZES = {"train": 20, "dev": 10, "test": 10}


def compose_train(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    """One short epoch of SAF with non-default sizes on the toy, logged to CSV and (offline) W&B."""
    root = tmp_path_factory.mktemp("vsl")
    write_toy_precomp(root / "scan", sizes=SIZES, dim=16, num_concepts=8)
    run = root / "run"
    overrides = ["datamodule=toy_precomp", f"datamodule.root={root / 'scan'}", "datamodule.batch_size=10"]
    overrides += ["region_model=saf_vsl", "trainer.max_epochs=1", "trainer.accelerator=cpu"]
    overrides += ["trainer.enable_progress_bar=false", "logger=wandb", "logger.wandb.mode=offline"]
    overrides += [f"region_model.matcher.{key}={value}" for key, value in TRAINED.items()]
    with pytest.MonkeyPatch.context() as env:  # no W&B account, every wandb folder inside root
        env.setenv("HOME", str(root))
        for var in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_DIR", "WANDB_BASE_URL"):
            env.delenv(var, raising=False)
        for var in ("WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_ARTIFACT_DIR"):
            env.setenv(var, str(root / "wandb-home" / var.lower()))
        metrics = train(compose_train(overrides), run)
        import wandb

        wandb.teardown()  # flushes the offline run's transaction log, as the end of the process does
    return {"root": root, "scan": root / "scan", "run": run, "metrics": metrics}


def docs_evaluation_command() -> list[str]:
    """The arguments of the first command under docs/vsl.md's "Evaluate"."""
    text = (REPO / "docs" / "vsl.md").read_text()
    evaluate = text[text.index("## Evaluate") :]
    line = re.search(r"^ +python -m visa\.train (.+?)(?: +#.*)?$", evaluate, re.M)
    assert line, "docs/vsl.md: no `python -m visa.train` command under Evaluate"
    return shlex.split(line[1])


def test_the_docs_evaluation_command_needs_none_of_the_trainings_settings(trained, tmp_path):
    ckpt = trained["metrics"]["best_checkpoint"]
    args = []
    for arg in docs_evaluation_command():
        key, _, value = arg.partition("=")
        value = {"datamodule": "toy_precomp", "datamodule.root": str(trained["scan"]), "ckpt_path": ckpt}.get(
            key, value
        )
        args.append(f"{key}={value}")
    assert args[0] == "train=false" and not any(a.startswith("region_model") for a in args)
    proc = subprocess.run(
        [sys.executable, "-m", "visa.train", *args, f"hydra.run.dir={tmp_path / 'eval'}"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["checkpoints"] == [ckpt]
    for key in ("i2t/R@1", "t2i/R@5", "rsum", "1k/rsum"):  # the same as the training run's own test
        assert metrics[key] == trained["metrics"][key]


def test_a_checkpoint_is_checked_against_the_data_it_is_evaluated_on(trained, tmp_path):
    ckpt = trained["metrics"]["best_checkpoint"]
    write_toy_precomp(tmp_path / "wide", sizes=SIZES, dim=32, num_concepts=8)
    wide = PrecompDataModule(str(tmp_path / "wide"), "toy_precomp")
    with pytest.raises(VisaError) as err:
        evaluate_checkpoints([ckpt], wide, "test", ["1k"], 100, torch.device("cpu"))
    assert str(err.value) == (
        f"{wide.folder}: features are 36 regions x 32 dims, but checkpoint {ckpt} has num_regions=36 "
        "img_dim=16; give features of that size"
    )
    backbone = RegionMatcherBackbone(
        [ckpt],
        str(tmp_path / "wide/toy_precomp/test_ims.npy"),
        str(trained["scan"] / "vocab/toy_precomp_vocab.json"),
    )
    with pytest.raises(VisaError, match=r"features are 36 regions x 32 dims, but checkpoint .* img_dim=16"):
        backbone.score_pairs(["a dog"], [Item("0", "0.jpg")], [0])
    with pytest.raises(VisaError, match="is not a checkpoint written by visa.train"):
        (tmp_path / "junk.ckpt").write_text("not a checkpoint")
        load_matcher(tmp_path / "junk.ckpt")


def test_checkpoints_of_the_flat_layout_still_load(trained, tmp_path):
    """0.1.0 saved the matcher's settings beside the optimisation's, not under `matcher`."""
    ckpt = torch.load(trained["metrics"]["best_checkpoint"], weights_only=True)
    hparams = dict(ckpt["hyper_parameters"])
    assert hparams["matcher"]["img_dim"] == 16 and hparams["matcher"]["module"] == "SAF"
    ckpt["hyper_parameters"] = {**{k: v for k, v in hparams.items() if k != "matcher"}, **hparams["matcher"]}
    torch.save(ckpt, tmp_path / "flat.ckpt")
    new, old = load_matcher(trained["metrics"]["best_checkpoint"]), load_matcher(tmp_path / "flat.ckpt")
    assert old.matcher.module_name == "SAF" and old.matcher.img_dim == 16 and not old.training
    regions, tokens, lengths = torch.randn(3, 36, 16), torch.tensor([[1, 5, 6, 2]] * 2), torch.tensor([4, 4])
    with torch.no_grad():
        assert torch.equal(new.matcher(regions, tokens, lengths), old.matcher(regions, tokens, lengths))


def test_the_trainings_loggers_are_built_from_their_yaml(trained):
    run = trained["run"]
    header = (run / "csv" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert "val/rsum" in header and "train/loss" in header
    (wandb_file,) = (run / "wandb").glob("offline-run-*/*.wandb")
    records: dict[str, list] = {}
    for record in read_transaction_log(wandb_file):
        records.setdefault(record.WhichOneof("record_type"), []).append(record)
    run_record = records["run"][0].run
    assert run_record.display_name == "SAF-toy_precomp"
    config = {u.key: json.loads(u.value_json) for r in records["config"] for u in r.config.update}
    config.update({u.key: json.loads(u.value_json) for u in run_record.config.update})
    assert config["region_model"]["matcher"]["embed_size"] == 24  # the run's config
    assert config["matcher"]["embed_size"] == 24 and config["vocab_size"] > 4  # the module's hyper-parameters
    logged = {"/".join(i.nested_key) or i.key for r in records["history"] for i in r.history.item}
    assert "val/rsum" in logged


def test_the_trainings_parts_are_checked_like_the_runs():
    cfg = compose_train(["+region_model.matcher.img_dims=16"])
    with pytest.raises(
        VisaError, match=r"^matcher.img_dims is not a setting of visa.vsl.models.RegionMatcher"
    ):
        instantiate_part(cfg, "region_model", vocab_size=10)
    cfg = compose_train(["+trainer.max_epoch=3"])
    with pytest.raises(VisaError, match=r"^trainer.max_epoch is not a setting of lightning.pytorch.Trainer"):
        instantiate_part(cfg, "trainer")
    cfg = compose_train(["+logger.csv.flush_every=3"])
    with pytest.raises(VisaError, match=r"^logger.csv.flush_every is not a setting of .*CSVLogger"):
        instantiate_part(cfg, "logger.csv", save_dir="x")
    cfg = compose_train(["logger=wandb", "logger.wandb.mode=sometimes"])
    with pytest.raises(VisaError, match=r"logger.wandb.mode='sometimes': expected auto"):
        instantiate_part(cfg, "logger.wandb", save_dir="x")


def test_the_run_and_the_training_list_only_their_own_groups():
    def groups(module: str) -> set[str]:
        out = subprocess.run(
            [sys.executable, "-m", module, "--help"], cwd=REPO, capture_output=True, text=True, timeout=300
        ).stdout
        listed = out[out.index("== Configuration groups ==") : out.index("== Config ==")]
        return set(re.findall(r"^(\w+):", listed, re.M))

    assert groups("visa.train") == {"datamodule", "region_model", "trainer", "logger", "experiment"}
    run = groups("visa.run")
    assert {"dataset", "backbone", "scorer", "logger", "experiment"} <= run
    assert not run & {"data", "model", "train_experiment", "trainer", "datamodule", "region_model"}


def test_the_old_command_forms_are_read_for_one_release():
    new, replaced = modern_overrides(
        ["data=toy_precomp", "data.root=D", "model=saf", "model.img_dim=32", "model.lr=1e-3",
         "+model.sgr_step=2", "train_experiment=f30k_sgr_vsl", "logger=none", "logger.project=p",
         "trainer.max_epochs=2", "--help", "hydra.run.dir=R", "datamodule.batch_size=4"]
    )  # fmt: skip
    assert new == [
        "datamodule=toy_precomp", "datamodule.root=D", "region_model=saf", "region_model.matcher.img_dim=32",
        "region_model.lr=1e-3", "+region_model.matcher.sgr_step=2", "experiment=f30k_sgr_vsl",
        "logger=csv", "logger.wandb.project=p", "trainer.max_epochs=2", "--help", "hydra.run.dir=R",
        "datamodule.batch_size=4",
    ]  # fmt: skip
    assert replaced[0] == "data=toy_precomp -> datamodule=toy_precomp" and len(replaced) == 9
    assert modern_overrides(["logger=wandb", "logger.wandb.mode=offline"]) == (
        ["logger=wandb", "logger.wandb.mode=offline"],
        [],
    )


def test_the_old_command_forms_compose():
    """What 0.1.0's docs wrote still composes to the new config (the CLI rewrites it before Hydra)."""
    old = ["data=toy_precomp", "data.root=D", "model=sgr", "model.img_dim=32", "model.lr=3e-3"]
    cfg = compose_train(modern_overrides(old)[0])
    assert cfg.datamodule.root == "D" and cfg.region_model.matcher.img_dim == 32
    assert cfg.region_model.lr == 3e-3 and cfg.region_model.matcher.module == "SGR"
    assert cfg.region_model.lr_update == 15  # toy_precomp has no published schedule
