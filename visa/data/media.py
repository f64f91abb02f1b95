"""Reading images (and, later, video frames) with errors that name the file."""

from __future__ import annotations

import importlib.util
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
