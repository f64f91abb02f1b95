"""The embedded demo datasets: real photos and short clips that ship inside PyPI packages, with captions
written for VISA.

`demo_images.json` and `demo_videos.json` list each photo or clip as (package, path inside the package), its
captions, source and licence.
"""

from __future__ import annotations

from pathlib import Path

from visa.core.errors import VisaError
from visa.data import Dataset, Item, build_dataset, check_count
from visa.data.files import read_json
from visa.data.media import package_dir

# The packaged annotation of each kind, and the dataset's name.
DEMOS = {
    "image": (Path(__file__).with_name("demo_images.json"), "demo"),
    "video": (Path(__file__).with_name("demo_videos.json"), "demo_video"),
}


class DemoDataset:
    """`kind: image` (dataset=demo) or `kind: video` (dataset=demo_video)."""

    def __init__(self, kind: str = "image", annotation: str | None = None, limit: int | None = None):
        if kind not in DEMOS:
            raise VisaError(f"dataset.kind={kind!r} is not one of {', '.join(DEMOS)}")
        self.kind = kind
        self.annotation = annotation or str(DEMOS[kind][0])  # None: the packaged one
        self.limit = limit  # first N items only (quick tries)

    def load(self) -> Dataset:
        check_count(self.limit, "dataset.limit")
        entries = read_json(Path(self.annotation), "check dataset.annotation")
        entries = entries[: self.limit] if self.limit else entries
        gallery = [Item(e["id"], str(package_dir(e["package"]) / e["path"]), self.kind) for e in entries]
        captions = [(e["id"], e["captions"]) for e in entries]
        dataset = build_dataset(DEMOS[self.kind][1], gallery, captions, self.annotation)
        dataset.bank = "demo"  # normalizer.bank=auto: the generic captions of visa/data/banks/demo.txt
        return dataset
