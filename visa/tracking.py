"""Experiment loggers, instantiated from `conf/logger/<name>.yaml`. Interface:

    start(config: dict, run_dir: Path) -> None
    log(metrics: dict, results: list[dict], dataset: Dataset) -> None
    finish() -> None
"""

from __future__ import annotations

from pathlib import Path

from visa.data import Dataset


class NullLogger:
    """logger=none: writes nothing beyond the run directory's own files."""

    def start(self, config: dict, run_dir: Path) -> None:
        pass

    def log(self, metrics: dict, results: list[dict], dataset: Dataset) -> None:
        pass

    def finish(self) -> None:
        pass
