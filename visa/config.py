"""Structured configs: the schema of the top-level config, and checks of each part's keys against the
signature of the class its `_target_` names, so a typo or a wrong type stops the run at start-up."""

from __future__ import annotations

import difflib
import importlib
import inspect
import re
import types
import typing
from collections.abc import Collection, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf

from visa.core.errors import VisaError
from visa.method.settings import Settings

# Keys whose values are secrets (a server's api_key, a hub token, ...): never taken from the config, where
# they would be saved in .hydra/ and logged; dropped from anything built from the config or the overrides.
# Whole words only: `max_new_tokens` is not a secret, `hf_token` is.
SECRET_KEY = re.compile(
    r"(^|[._-])(api[_-]?key|(access[_-]?|auth[_-]?)?token|secret|passw(or)?d|credentials?|private[_-]?key|auth)"
    r"([._-]|$)",
    re.I,
)
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def is_secret_key(key: str) -> bool:
    """Whether a config key (plain or dotted) holds a secret; `*_env` keys name a variable and do not."""
    return bool(SECRET_KEY.search(key)) and not key.endswith("_env")


class SecretInConfig(VisaError):
    """A secret-looking key in a config file (the command line refuses them before Hydra, `visa.entry`)."""


GROUPS = (
    "dataset",
    "backbone",
    "question_llm",
    "answer_mllm",
    "describer",
    "scorer",
    "fusion",
    "normalizer",
    "logger",
)


@dataclass
class VisaConfig(Settings):
    """The schema of `conf/config.yaml`: the parts (each checked against its class by `check_part`) and the
    run's settings, whose defaults and checks live in `visa.method.settings.Settings` alone."""

    dataset: Any = MISSING
    backbone: Any = MISSING
    question_llm: Any = MISSING
    answer_mllm: Any = MISSING
    describer: Any = MISSING
    scorer: Any = MISSING
    fusion: Any = MISSING
    normalizer: Any = MISSING  # the base similarity's normaliser (conf/normalizer: none, nnn, qb_norm, dn)
    logger: Any = MISSING
    cache_dir: str | None = "${oc.env:VISA_CACHE,null}"  # None: the user cache folder
    # sqlite: one file (one host); shared: one log per writer (NFS, Lustre; many hosts); auto: by filesystem
    cache_layout: str = "auto"
    data_dir: str = "${oc.env:VISA_DATA,./data}"  # where dataset configs look for their files


def settings_from(cfg: DictConfig) -> Settings:
    """The run's `Settings` from its composed config; their checks stop a bad value with one line."""
    values: dict[str, Any] = {}
    for f in fields(Settings):
        value = cfg[f.name]
        values[f.name] = OmegaConf.to_object(value) if isinstance(value, (DictConfig, ListConfig)) else value
    return Settings(**values)


def parse_overrides(lines: Sequence[str]) -> dict[str, Any]:
    """Hydra override strings as {key: value}; a group choice (`scorer=x`) and a value (`fusion.alpha=0.5`)
    alike become one entry each; deletions (`~key`) are left out."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(list(lines))
    return {o.key_or_group: o.value() for o in parsed if not o.is_delete()}


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
        return instantiate(node, _convert_="all", **given)
    except InstantiationException as e:  # Hydra wraps what the constructor raised
        if isinstance(e.__cause__, VisaError):
            raise e.__cause__ from None
        raise VisaError(f"{group}: cannot build {node._target_}: {e.__cause__ or e}") from e
