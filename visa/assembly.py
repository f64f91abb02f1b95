"""From a composed config to what a run works with: its settings, its dataset, its parts (typed by their
groups' Protocols, `visa.config.PART_GROUPS`), the normaliser's bank and the cache. The one place where a run
reads its config; `visa.run` orders the run and writes its outputs."""

from __future__ import annotations

from typing import TypeVar

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from visa.cache import SharedFolderStore, SQLiteStore, default_cache_dir, open_cache
from visa.config import (
    ANSWER_MLLM,
    BACKBONE,
    CROSS_ENCODER,
    DATASET,
    DESCRIBER,
    GROUPS,
    JUDGE,
    QUESTION_LLM,
    RERANKER,
    SCORER,
    Group,
    _import_target,
    build,
    check_part,
    settings_from,
)
from visa.core.errors import VisaError
from visa.data import Dataset, Query, check_modalities
from visa.data.banks import Bank, read_bank
from visa.method.fusion import Fusion
from visa.method.normalizers import Normalizer
from visa.method.parts import Components
from visa.method.rerankers import Reranker
from visa.method.settings import Settings

T = TypeVar("T")

# The groups a re-ranker may use (its class's `uses`), by name.
RERANKER_PARTS: dict[str, Group] = {
    g.name: g for g in (QUESTION_LLM, ANSWER_MLLM, DESCRIBER, SCORER, JUDGE, CROSS_ENCODER)
}


class Assembly:
    """A run's config, its parts' keys checked before anything is loaded; builds each part when asked."""

    def __init__(self, cfg: DictConfig):
        self.cfg = cfg
        # the re-ranker names the groups it uses; the others are neither required nor checked nor built
        self.reranker_class = _import_target(cfg.reranker._target_, "reranker") if "reranker" in cfg else None
        self.uses: tuple[str, ...] = tuple(getattr(self.reranker_class, "uses", ()))
        for group in GROUPS:
            if group in RERANKER_PARTS and group not in self.uses:
                continue
            if cfg.get(group) is None:
                raise VisaError(f"{group} is not set; choose one of its configs ({group}=...)")
            check_part(cfg[group], group, self.uses if group == "reranker" else ())
        self.settings: Settings = settings_from(cfg)

    def build(self, group: Group[T]) -> T:
        return build(self.cfg, group)

    def choice(self, group: str) -> str:
        """The config file chosen for `group` (`backbone=demo` -> "demo"), or its class outside Hydra."""
        try:
            return HydraConfig.get().runtime.choices[group]
        except ValueError:
            return self.cfg[group]._target_

    def config(self) -> dict:
        """The whole config, resolved (what a logger records)."""
        config = OmegaConf.to_container(self.cfg, resolve=True)
        assert isinstance(config, dict)
        return config

    def backbone_nodes(self) -> int:
        """backbone.num_nodes: the nodes that encode the gallery together (1: this process alone)."""
        return self.cfg.backbone.get("num_nodes", 1)

    def open_store(self) -> SQLiteStore | SharedFolderStore:
        """The cache of model results (cache_dir, cache_layout)."""
        return open_cache(self.cfg.cache_dir or default_cache_dir(), self.cfg.cache_layout)

    def bank(self, normalizer: Normalizer, dataset: Dataset) -> Bank | None:
        """The normaliser's reference bank (None for normalizer=none), read and checked against the test
        queries before any model loads."""
        if normalizer.bank is None:
            return None
        if dataset.precomputed is not None:
            raise VisaError(
                f"normalizer={self.choice('normalizer')} needs the backbone's embeddings, and dataset "
                f"{dataset.name} holds precomputed scores only; use normalizer=none"
            )
        cfg = self.cfg

        def load_split(split: str) -> list[Query]:
            if "split" not in cfg.dataset:
                raise VisaError(
                    f"normalizer.bank=split:{split}: dataset {dataset.name} has no dataset.split setting; "
                    "name a captions file or a shipped bank (demo) instead"
                )
            node = {**OmegaConf.to_container(cfg.dataset, resolve=True), "split": split}  # type: ignore[dict-item]
            loader = build(OmegaConf.create({"dataset": node}), DATASET)
            texts = getattr(loader, "texts", None)  # the captions alone, without reading the split's media
            return [Query(t, ()) for t in texts()] if callable(texts) else loader.load().queries

        return read_bank(normalizer.bank, dataset, load_split, normalizer.bank_limit)

    def reranker_label(self) -> str:
        """How the console names the re-ranked row ("+ VISA", "+ pointwise P(Yes)")."""
        return getattr(self.reranker_class, "label", None) or self.choice("reranker")

    def reranker(self) -> Reranker:
        """The chosen re-ranker, given the parts it uses (`uses`: e.g. VISA's question_llm, answer_mllm,
        describer and scorer; `none` uses none)."""
        given = {name: self.build(RERANKER_PARTS[name]) for name in self.uses}
        return build(self.cfg, RERANKER, **given)

    def parts(
        self, dataset: Dataset, fusion: Fusion, normalizer: Normalizer, bank: Bank | None
    ) -> Components:
        """The models of a run over `dataset`. What the backbone can embed is read from its class first: a
        mismatch stops here, before any model loads."""
        backbone_class = _import_target(self.cfg.backbone._target_, "backbone")
        check_modalities(dataset, backbone_class, self.choice("backbone"))
        return Components(
            backbone=self.build(BACKBONE),
            reranker=self.reranker(),
            fusion=fusion,
            normalizer=normalizer,
            bank=bank,
        )
