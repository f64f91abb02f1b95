"""Reading images, telling images from videos, and checking items, with errors that name the file."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from visa.errors import VisaError


def load_image(path: str) -> Image.Image:
    """RGB image at `path`; a missing or unreadable file is a VisaError naming it."""
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except FileNotFoundError as e:
        raise VisaError(f"image not found: {path}; check dataset.root / dataset.media_dir") from e
    except (UnidentifiedImageError, OSError) as e:
        raise VisaError(f"cannot read image {path}: {e}; replace or remove the file") from e


def package_dir(package: str) -> Path:
    """Where an installed package lives, found without importing it (some have heavy imports)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise VisaError(f"package {package!r} is not installed; run `bash install.sh` (see README)")
    return Path(list(spec.submodule_search_locations)[0])


IMAGE_EXTS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
VIDEO_EXTS = frozenset(
    {".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv", ".3gp", ".ogv"}
)


def media_kind(path: str) -> str:
    """ "video" for a video file extension, else "image"."""
    return "video" if Path(path).suffix.lower() in VIDEO_EXTS else "image"


def check_media(path: str, kind: str) -> str | None:
    """Why the item at `path` cannot be used, or None when it opens. Reads headers only (fast): damage deeper
    in a file shows up when it is decoded, as a VisaError naming it."""
    if not os.path.isfile(path):
        return "file not found"
    if kind == "video":
        from visa.data.video import probe

        try:
            probe(path)
        except VisaError as e:
            return str(e)
        return None
    try:
        with Image.open(path) as img:
            img.size  # noqa: B018 - parses the header
    except (UnidentifiedImageError, OSError) as e:
        return f"not a readable image ({e})"
    return None
