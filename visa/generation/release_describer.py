"""describer=release: the paper's own general descriptions, read from the reference release's
`<name>_recap.json` instead of generated.

The reference repository has no description prompt; its descriptions exist only in the released recap
files (one entry per gallery item: `{"image_id" | "video_id": file, "captions": [description]}`), and its
re-ranker reads `captions[0]`. This describer answers each describe request with that text, so a live run
scores with exactly the paper's descriptions. An item is found by its path: the longest trailing part of
it (with or without the file extension) that the file names as an id, so `val2014/x.jpg`, `x.jpg` and
`video7020` all match the way the release wrote them. An item the file does not describe stops the run with
one line naming it.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path, PurePosixPath

from visa.core.errors import VisaError
from visa.core.prompt import Prompt
from visa.data.release import ID_KEYS, first_caption


def _lookup_keys(path: str) -> list[str]:
    """The trailing parts of `path`, longest first, each also without its extension."""
    parts = PurePosixPath(path.replace("\\", "/")).parts
    keys = []
    for start in range(len(parts)):
        tail = "/".join(parts[start:])
        keys.append(tail)
        stem = os.path.splitext(tail)[0]
        if stem != tail:
            keys.append(stem)
    return keys


class ReleaseDescriber:
    """Descriptions from a released `<name>_recap.json` (`path`), looked up by the item's path."""

    uses_context = False

    def __init__(self, path: str, batch_size: int = 256):
        self.path = str(Path(path).expanduser())
        self.batch_size = batch_size
        self._by_id: dict[str, str] | None = None
        self._digest: str | None = None

    def _bytes(self) -> bytes:
        try:
            return Path(self.path).read_bytes()
        except OSError as e:
            raise VisaError(
                f"describer.path={self.path}: cannot read it ({e.strerror or e}); point it at the release's "
                "<name>_recap.json"
            ) from e

    def identity(self) -> dict:
        # the file's content, not its location: moving the file keeps the cache, editing it does not
        if self._digest is None:
            self._digest = hashlib.sha256(self._bytes()).hexdigest()
        return {"generator": "release-describer", "recap_sha256": self._digest}

    def _descriptions(self) -> dict[str, str]:
        if self._by_id is None:
            try:
                entries = json.loads(self._bytes().decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise VisaError(f"describer.path={self.path} is not valid json ({e})") from e
            if not isinstance(entries, list):
                raise VisaError(f"describer.path={self.path}: expected a json list of recap entries")
            by_id = {}
            for n, entry in enumerate(entries):
                where = f"describer.path={self.path}: entry {n}"
                key = next((k for k in ID_KEYS if isinstance(entry, dict) and k in entry), None)
                if key is None:
                    first_caption(None, where)  # the one-line error of an entry without an id
                description = first_caption(entry, where)  # the reference's re-ranker reads the first
                item_id = str(entry[key]).replace("\\", "/")
                by_id[item_id] = description
                by_id.setdefault(os.path.splitext(item_id)[0], description)
            self._by_id = by_id
        return self._by_id

    def describe(self, path: str) -> str:
        by_id = self._descriptions()
        keys = _lookup_keys(path)
        for key in keys:
            if key in by_id:
                return by_id[key]
        raise VisaError(
            f"describer.path={self.path} has no description for item {path} (looked for ids "
            f"{', '.join(repr(k) for k in keys[-2:])}); use the recap file of this dataset"
        )

    def generate(self, prompts: list[Prompt]) -> list[str]:
        if any(len(p.media) != 1 for p in prompts):
            raise VisaError("describer=release describes one image or video per request")
        return [self.describe(p.media[0]) for p in prompts]
