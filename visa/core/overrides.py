"""What a config may hold, read without Hydra's composition: keys that look like secrets (never taken from a
config or the command line) and Hydra override strings as {key: value}. Below `visa.config`, so that the
command line's checks (`visa.entry`), the loggers (`visa.tracking`) and the comparison (`visa.compare`) read
them without the run's schema."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

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


def parse_overrides(lines: Sequence[str]) -> dict[str, Any]:
    """Hydra override strings as {key: value}; a group choice (`scorer=x`) and a value (`fusion.alpha=0.5`)
    alike become one entry each; deletions (`~key`) are left out."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(list(lines))
    return {o.key_or_group: o.value() for o in parsed if not o.is_delete()}
