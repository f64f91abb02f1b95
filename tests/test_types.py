"""The type checker over visa/ (mypy, configured in pyproject.toml) passes, and it enforces the parts'
Protocols: a part that lacks a required method is reported where a stage takes it, and every class that a
shipped part config builds satisfies its group's Protocol."""

import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def _mypy(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mypy", *args], cwd=REPO, capture_output=True, text=True, timeout=600
    )


def test_mypy_passes_over_the_package():
    proc = _mypy()  # the files and settings of [tool.mypy]
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]


def test_a_part_without_a_required_method_is_reported():
    proc = _mypy("tests/fixtures/typecheck/parts.py")
    errors = [line for line in proc.stdout.splitlines() if ": error:" in line]
    assert proc.returncode == 1
    assert len(errors) == 1, proc.stdout  # the complete backbone passes
    assert "parts.py:38" in errors[0] and "TextOnlyBackbone" in errors[0] and "Backbone" in errors[0]
    assert '"encode_visual"' in proc.stdout  # mypy names the missing member


def _target(path: Path, group: str) -> str:
    """The `_target_` of a part's yaml: at its top, under its group (`# @package _global_`), or in the
    option its defaults list extends."""
    node = yaml.safe_load(path.read_text())
    node = node.get(group, node) if "_target_" not in node else node
    if "_target_" in node:
        return node["_target_"]
    base = next(d for d in node.get("defaults", []) if d != "_self_")
    return _target(path.with_name(f"{base}.yaml"), group)


def test_every_shipped_part_satisfies_its_groups_protocol(tmp_path):
    """mypy holds the class that each conf/<group>/*.yaml builds against its group's Protocol (the groups
    and their Protocols: visa.config.PART_GROUPS), as `visa.config.build` returns it."""
    from visa.config import PART_GROUPS

    imports, checks = {"from collections.abc import Callable"}, []
    for group in PART_GROUPS:
        wanted = " | ".join(f"{p.__module__}.{p.__qualname__}" for p in group.protocols)
        imports |= {f"import {p.__module__}" for p in group.protocols}
        for path in sorted((REPO / "conf" / group.name).glob("*.yaml")):
            target = _target(path, group.name)
            imports.add(f"import {target.rpartition('.')[0]}")
            checks.append(f"{group.name}_{path.stem}: Callable[..., {wanted}] = {target}")
    assert len(checks) > 60  # every option of every group
    checked = tmp_path / "shipped_parts.py"
    checked.write_text("\n".join([*sorted(imports), "", *checks, ""]))
    proc = _mypy(str(checked))
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
