"""Every part config keeps its cache keys: a reorganisation of the code must not make users' caches stale.
The expected keys were computed before the package move (tests/helpers/cache_keys.py writes them)."""

import json

from helpers.cache_keys import FIXTURE, current_keys


def test_cache_keys_of_every_part_config_are_unchanged():
    expected = json.loads(FIXTURE.read_text())
    current = current_keys()
    assert len(expected) > 90  # every option of the five model groups and every experiment
    changed = {name: (key, current.get(name)) for name, key in expected.items() if current.get(name) != key}
    assert not changed, f"cache keys changed or gone (expected, now): {changed}"
