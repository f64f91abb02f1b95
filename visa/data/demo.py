"""The embedded demo dataset: real photos that ship inside PyPI packages, with captions written for VISA.

`demo_images.json` lists each photo as (package, path inside the package), its captions, source and licence.
"""

from __future__ import annotations

import json
from pathlib import Path

from visa.data import Dataset, Item, build_dataset, check_count
from visa.data.media import package_dir
from visa.errors import VisaError

DEMO_ANNOTATION = Path(__file__).with_name("demo_images.json")


class DemoDataset:
    def __init__(self, annotation: str | None = None, limit: int | None = None):
        self.annotation = annotation or str(DEMO_ANNOTATION)
        self.limit = limit  # first N images only (quick tries)

    def load(self) -> Dataset:
        check_count(self.limit, "dataset.limit")
        try:
            entries = json.loads(Path(self.annotation).read_text())
        except (OSError, ValueError) as e:  # ValueError: bad json or not UTF-8
            raise VisaError(f"cannot read the demo annotation {self.annotation}: {e}") from e
        entries = entries[: self.limit] if self.limit else entries
        gallery = [Item(e["id"], str(package_dir(e["package"]) / e["path"])) for e in entries]
        return build_dataset("demo", gallery, [(e["id"], e["captions"]) for e in entries], self.annotation)
