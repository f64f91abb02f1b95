"""Structured configs: the schema of the top-level config, and checks of each part's keys against the
signature of the class its `_target_` names, so a typo or a wrong type stops the run at start-up."""

from __future__ import annotations

import difflib
import importlib
import inspect
import types
import typing
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Generic, TypeVar

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf

from visa.backbones import Backbone
from visa.core.errors import VisaError
from visa.core.overrides import ENV_NAME, is_secret_key
from visa.data import DatasetSource
from visa.generation import Generator
from visa.method.fusion import Fusion
from visa.method.normalizers import Normalizer
from visa.method.pairwise import PairwiseBackbone
from visa.method.rerankers import Reranker
from visa.method.settings import Settings
from visa.scorers import MediaScorer, Scorer
from visa.tracking import Logger

T = TypeVar("T")


class SecretInConfig(VisaError):
    """A secret-looking key in a config file (the command line refuses them before Hydra, `visa.entry`)."""


class Group(Generic[T]):
    """A group of parts: `conf/<name>/*.yaml`, each naming in `_target_` a class that satisfies one of
    `protocols` (the type that `build` returns, checked by mypy and again when a part is built)."""

    def __init__(self, name: str, *protocols: Any):
        self.name, self.protocols = name, protocols

    def field(self) -> Any:
        """The group's entry in `VisaConfig`: a part chosen by the defaults list or `<name>=...`."""
        return field(default=MISSING, metadata={"group": self})

    def __repr__(self) -> str:
        return f"Group({self.name!r})"


DATASET: Group[DatasetSource] = Group("dataset", DatasetSource)
BACKBONE: Group[Backbone | PairwiseBackbone] = Group("backbone", Backbone, PairwiseBackbone)
QUESTION_LLM: Group[Generator] = Group("question_llm", Generator)
ANSWER_MLLM: Group[Generator] = Group("answer_mllm", Generator)
DESCRIBER: Group[Generator] = Group("describer", Generator)
SCORER: Group[Scorer] = Group("scorer", Scorer)
FUSION: Group[Fusion] = Group("fusion", Fusion)
# the base similarity's normaliser (none, nnn, qb_norm, dn); metrics.json names the choice itself
NORMALIZER: Group[Normalizer] = Group("normalizer", Normalizer)
LOGGER: Group[Logger] = Group("logger", Logger)
# what re-orders each query's top-K (visa, visa_description, pointwise, cross_encoder, none); it names the
# groups above that it uses (`uses`), and only those are checked and built
RERANKER: Group[Reranker] = Group("reranker", Reranker)
# the model a pointwise re-ranker asks "does this item show the query?" (P(Yes))
JUDGE: Group[Generator] = Group("judge", Generator)
# the multimodal cross-encoder of reranker=cross_encoder (Qwen3-VL-Reranker, BLIP-2 ITM)
CROSS_ENCODER: Group[MediaScorer] = Group("cross_encoder", MediaScorer)


@dataclass
class VisaConfig(Settings):
    """The schema of `conf/config.yaml`: the parts (each checked against its class by `check_part`) and the
    run's settings, whose defaults and checks live in `visa.method.settings.Settings` alone. The groups
    declared here are the only list of them: the checks of a run, the parts it builds and the report's
    settings read them from here (`PART_GROUPS`, `GROUPS`); `conf/config.yaml` chooses each one's default."""

    dataset: Any = DATASET.field()
    backbone: Any = BACKBONE.field()
    question_llm: Any = QUESTION_LLM.field()
    answer_mllm: Any = ANSWER_MLLM.field()
    describer: Any = DESCRIBER.field()
    scorer: Any = SCORER.field()
    fusion: Any = FUSION.field()
    normalizer: Any = NORMALIZER.field()
    reranker: Any = RERANKER.field()
    judge: Any = JUDGE.field()
    cross_encoder: Any = CROSS_ENCODER.field()
    logger: Any = LOGGER.field()
    cache_dir: str | None = "${oc.env:VISA_CACHE,null}"  # None: the user cache folder
    # sqlite: one file (one host); shared: one log per writer (NFS, Lustre; many hosts); auto: by filesystem
    cache_layout: str = "auto"
    data_dir: str = "${oc.env:VISA_DATA,./data}"  # where dataset configs look for their files


def _part_groups() -> tuple[Group[Any], ...]:
    declared = [(f.name, f.metadata["group"]) for f in fields(VisaConfig) if "group" in f.metadata]
    for name, group in declared:
        if name != group.name:  # a programming error: the field and its group must agree
            raise AssertionError(f"VisaConfig.{name} is declared with {group!r}")
    return tuple(group for _, group in declared)


PART_GROUPS = _part_groups()
GROUPS = tuple(group.name for group in PART_GROUPS)


def settings_from(cfg: DictConfig) -> Settings:
    """The run's `Settings` from its composed config; their checks stop a bad value with one line."""
    values: dict[str, Any] = {}
    for f in fields(Settings):
        value = cfg[f.name]
        values[f.name] = OmegaConf.to_object(value) if isinstance(value, (DictConfig, ListConfig)) else value
    return Settings(**values)


def register() -> None:
    ConfigStore.instance().store(name="visa_schema", node=VisaConfig)
    if not OmegaConf.has_resolver("pkg"):
        # ${pkg:name} -> the folder where an installed package lives (demo weights ship in packages).
        from visa.data.media import package_dir

        OmegaConf.register_new_resolver("pkg", lambda name: str(package_dir(name)))


def _import_target(path: str, where: str):
    module_name, _, attr = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError) as e:
        raise VisaError(f"{where}._target_={path!r} cannot be imported: {e}") from e


def _type_ok(value: Any, annotation: Any) -> bool:
    if annotation is inspect.Parameter.empty or annotation is Any:
        return True
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, a) for a in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation in (str, bool):
        return isinstance(value, annotation)
    if origin in (list, tuple) or annotation in (list, tuple):
        return isinstance(value, (list, tuple))
    if origin is dict or annotation is dict:
        return isinstance(value, dict)
    return True


def _takes_mapping(annotation: Any) -> bool:
    """Whether a parameter takes a plain mapping (`dict`, `dict[str, Any]`, `dict[...] | None`)."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return any(_takes_mapping(a) for a in typing.get_args(annotation))
    return annotation is dict or typing.get_origin(annotation) is dict


def _check_secrets(key: str, value: Any, where: str) -> None:
    """Refuse a secret given in the config (its value is never echoed) and a `*_env` key that holds
    something other than a variable's name (most likely the secret itself)."""
    if is_secret_key(key):
        raise SecretInConfig(
            f"{where}.{key}: secrets are not taken from the config (the run folder's copy of the config has "
            "it removed); put the key in an environment variable and name that variable, e.g. "
            "api_key_env=OPENAI_API_KEY"
        )
    if (
        key.endswith("_env")
        and value is not None
        and not (isinstance(value, str) and ENV_NAME.fullmatch(value))
    ):
        raise VisaError(
            f"{where}.{key} must be the name of an environment variable (letters, digits, _), not its value"
        )
    if isinstance(value, dict):
        for inner, inner_value in value.items():
            if not str(inner).startswith("_"):
                _check_secrets(str(inner), inner_value, f"{where}.{key}")


CONF = Path(__file__).resolve().parents[1] / "conf"  # the run's config root (visa/run.py: ../conf)


def options_taking(group: str, key: str) -> list[str]:
    """The options of a group of the run's config (`conf/<group>/*.yaml`) whose part sets `key`
    (`normalizer`, `bank` -> dn, nnn, qb_norm): what to choose when the chosen option has no such key."""
    import yaml

    found = []
    for path in sorted((CONF / group).glob("*.yaml")):
        text = path.read_text()
        data = yaml.safe_load(text) or {}
        if text.lstrip().startswith("# @package _global_"):
            data = data.get(group) if isinstance(data, dict) else None
        if isinstance(data, dict) and key in data:
            found.append(path.stem)
    return found


def unknown_key(where: str, key: str, valid: Sequence[str]) -> str:
    """What to do about a key that the part at `where` does not take: the other options of its group that
    take it (`normalizer.bank` under normalizer=none), else the nearest of its valid keys."""
    others = options_taking(where, key) if "." not in where else []
    if others:
        return f"choose a {where} that takes it: {where}={'|'.join(others)}"
    near = difflib.get_close_matches(key, list(valid), n=1, cutoff=0.6)
    return f"did you mean {where}.{near[0]}?" if near else ""


def _parameters(target: Any) -> tuple[dict[str, inspect.Parameter], dict[str, Any]]:
    """The keyword parameters of a part's class (or function) and their type hints. A constructor that
    passes `**kwargs` on to its parent's takes the parent's parameters too (own ones first)."""
    signature = inspect.signature(target)
    var = (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL)
    params = {n: p for n, p in signature.parameters.items() if p.kind not in var}
    if not inspect.isclass(target):
        return params, typing.get_type_hints(target)
    hints = typing.get_type_hints(target.__init__)
    forwards = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values())
    owners = [c for c in target.__mro__ if "__init__" in vars(c) and c is not object]
    if forwards and len(owners) > 1:
        inherited, inherited_hints = _parameters(owners[1])
        params = {**params, **{n: p for n, p in inherited.items() if n not in params}}
        hints = {**inherited_hints, **hints}
    return params, hints


def check_part(node: DictConfig, where: str, given: Collection[str] = ()) -> None:
    """Every key of a part's config must be a parameter of its class, of the annotated type; `given` names
    the parameters that the caller passes when it builds the part (not expected in the config)."""
    if "_target_" not in node:
        raise VisaError(f"{where} has no _target_; each part's yaml names the class it builds")
    target = _import_target(node._target_, where)
    params, hints = _parameters(target)
    values = OmegaConf.to_container(node, resolve=True)
    assert isinstance(values, dict)
    for key, value in values.items():
        assert isinstance(key, str)
        if key.startswith("_"):
            continue
        _check_secrets(key, value, where)
        if key not in params:
            valid = ", ".join(params) or "(none)"
            fix = unknown_key(where, key, list(params))
            raise VisaError(
                f"{where}.{key} is not a setting of {node._target_}; valid keys: {valid}"
                + (f"; {fix}" if fix else "")
            )
        if isinstance(value, dict):  # a nested part (a server launcher) is checked like a part
            if "_target_" in value:
                check_part(node[key], f"{where}.{key}")
                continue
            if not _takes_mapping(hints.get(key, params[key].annotation)):
                raise VisaError(
                    f"{where}.{key} is a mapping without _target_; it takes a part that names its class, "
                    "e.g. _target_: visa.generation.sglang.SGLangServer"
                )
        if not _type_ok(value, hints.get(key, params[key].annotation)):
            expected = getattr(hints.get(key), "__name__", str(hints.get(key)))
            raise VisaError(f"{where}.{key}={value!r} has the wrong type; expected {expected}")
    missing = [n for n, p in params.items() if p.default is p.empty and n not in values and n not in given]
    if missing:
        raise VisaError(f"{where} lacks required key(s) {', '.join(missing)} for {node._target_}")


def instantiate_part(cfg: DictConfig, group: str, **given: Any) -> Any:
    """The part at `group` (a group, or a dotted path such as `logger.csv`), its keys checked first;
    `given` are constructor arguments the caller supplies (a run folder, a vocabulary size)."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    node = OmegaConf.select(cfg, group, throw_on_missing=True)
    if not isinstance(node, DictConfig):
        raise VisaError(f"{group} is not set; choose one of its configs ({group.split('.')[0]}=...)")
    check_part(node, group, given)
    try:
        # the config's own values through Hydra; `given` straight to the class: Hydra would turn a part
        # handed in (a generator for a re-ranker) into a config of its fields
        factory = instantiate(node, _convert_="all", _partial_=True)
    except InstantiationException as e:  # Hydra wraps what a nested constructor raised
        if isinstance(e.__cause__, VisaError):
            raise e.__cause__ from None
        raise VisaError(f"{group}: cannot build {node._target_}: {e.__cause__ or e}") from e
    try:
        return factory(**given)
    except (TypeError, ValueError) as e:
        raise VisaError(f"{group}: cannot build {node._target_}: {e}") from e


def build(cfg: DictConfig, group: Group[T], **given: Any) -> T:
    """The run's part of `group`, its keys checked first and the built object checked against the group's
    Protocols (one line naming the class and what it lacks)."""
    part = instantiate_part(cfg, group.name, **given)
    if not any(isinstance(part, protocol) for protocol in group.protocols):
        lacks = sorted({m for p in group.protocols for m in _members(p) if not hasattr(part, m)})
        wanted = " or ".join(f"{p.__module__}.{p.__qualname__}" for p in group.protocols)
        raise VisaError(
            f"{group.name}._target_={cfg[group.name]._target_} lacks {', '.join(lacks)}; a {group.name} "
            f"class must have what {wanted} declares"
        )
    return part


def _members(protocol: Any) -> set[str]:
    """The methods and attributes a Protocol declares (its own and its Protocol bases')."""
    names: set[str] = set()
    for base in protocol.__mro__:
        if getattr(base, "_is_protocol", False) and base is not typing.Protocol:
            declared = {*vars(base), *getattr(base, "__annotations__", {})}
            names |= {n for n in declared if not n.startswith("_") or n == "__call__"}
    return names
