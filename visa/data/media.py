"""Reading images, telling images from videos, and checking items, with errors that name the file."""

from __future__ import annotations

import importlib.util
import os
import re
import threading
import warnings
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from visa.core.errors import VisaError

# What Pillow raises on a damaged file, at open or at decode (a truncated JPEG only fails at decode), and on
# an image too large to decode safely (a decompression bomb: a few kB of PNG that decode to gigabytes).
IMAGE_ERRORS = (
    UnidentifiedImageError,
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    Image.DecompressionBombError,
    Image.DecompressionBombWarning,
)
_WARNINGS_LOCK = threading.Lock()


def _too_large(error: Exception) -> str:
    """Pillow's decompression-bomb error (or warning) as the item's problem."""
    found = re.search(r"\((\d+) pixels\)", str(error))
    size = f"{int(found.group(1)):,} pixels" if found else "too many pixels"
    return (
        f"too large to decode safely: {size}, above Pillow's limit of {Image.MAX_IMAGE_PIXELS:,} (a "
        "decompression bomb, or a huge scan: scale it down)"
    )


def open_image(path: str) -> Image.Image:
    """`Image.open`, with an image above Pillow's pixel limit (`Image.MAX_IMAGE_PIXELS`) refused: Pillow only
    warns between the limit and twice the limit, and decoding such a file could take gigabytes."""
    with _WARNINGS_LOCK, warnings.catch_warnings():  # the filters are process-wide: one thread at a time
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        return Image.open(path)


def load_image(path: str) -> Image.Image:
    """RGB image at `path`; a missing or unreadable file is a VisaError naming it."""
    try:
        with open_image(path) as img:
            return img.convert("RGB")
    except FileNotFoundError as e:
        raise VisaError(f"image not found: {path}; check dataset.root / dataset.media_dir") from e
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise VisaError(f"cannot read image {path}: {_too_large(e)}") from None
    except IMAGE_ERRORS as e:
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


# How a complete file of these formats ends: JPEG's end-of-image marker, PNG's IEND chunk.
_ENDINGS = {"JPEG": b"\xff\xd9", "PNG": b"IEND\xaeB`\x82"}


def _ends_complete(path: str, image_format: str | None) -> bool:
    """Whether the file ends as a whole file of its format does (trailing zero padding allowed)."""
    ending = _ENDINGS.get(image_format or "")
    if ending is None:
        return False
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - 4096))
        return f.read().rstrip(b"\0").endswith(ending)


def check_media(path: str, kind: str) -> str | None:
    """Why the item at `path` cannot be used, or None when it can.

    An image's header is parsed; a JPEG or PNG that does not end with its format's end marker (a truncated
    download), and any other format, is then decoded in full (JPEGs at 1/8 scale), so that a damaged file is
    found here, where `dataset.on_bad_item=skip` can leave it out, and not later inside a model stage. Whole
    files cost a header read and a look at their last bytes. A video's container and stream headers are
    probed."""
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
        with open_image(path) as img:
            if _ends_complete(path, img.format):
                return None
            img.draft("RGB", (64, 64))  # JPEG: decode at 1/8 scale; no effect on other formats
            img.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        return _too_large(e)
    except IMAGE_ERRORS as e:
        return f"not a readable image ({e})"
    return None


def check_many(paths: list[str]) -> dict[str, str | None]:
    """`check_media` of every path (kind from its extension), on a few threads: decoding releases the GIL,
    so a large gallery is checked several times faster on a machine with several cores."""
    from concurrent.futures import ThreadPoolExecutor

    workers = max(1, min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1))
    with ThreadPoolExecutor(workers) as pool:
        problems = pool.map(lambda p: check_media(p, media_kind(p)), paths)
        return dict(zip(paths, problems))
