"""Facts about an image read from its pixels, for the demo describer (`pixel_describer.py`).

The demo backbone sees an image only through ImageNet class probabilities; these functions measure what
those probabilities cannot say: colours and where they are, grayscale or tinted, brightness and contrast,
resolution, blur, faces (scikit-image's trained LBP cascade) and printed text (Tesseract, when installed).
Each takes a PIL image and returns plain values; `pixel_describer.py` turns them into words.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

# Colour names, in the order they are reported when two cover the same share.
COLOURS = (
    "black",
    "grey",
    "white",
    "red",
    "pink",
    "orange",
    "brown",
    "beige",
    "yellow",
    "green",
    "blue",
    "purple",
)
NEUTRAL = ("black", "grey", "white")
ANALYSIS_SIDE = 96  # pixels on the longer side when measuring colours (enough for areas, and fast)


def _rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    from skimage.color import rgb2lab

    return rgb2lab(rgb.astype(np.float64) / 255.0)


def small_rgb(image: Image.Image, side: int = ANALYSIS_SIDE) -> np.ndarray:
    """The image as an [h, w, 3] uint8 array, its longer side scaled down to `side` pixels."""
    image = image.convert("RGB")
    scale = side / max(image.size)
    if scale < 1:
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))))
    return np.asarray(image)


def colour_names(rgb: np.ndarray) -> np.ndarray:
    """[h, w] array of colour names, one per pixel, from the pixel's CIELAB lightness L, chroma C and hue
    angle h (the hue boundaries sit between the hues of the named sRGB colours: red 40, orange 73,
    yellow 103, green 136, cyan 196, blue 306, purple 328 degrees)."""
    lab = _rgb_to_lab(rgb)
    L, a, b = lab[..., 0], lab[..., 1], lab[..., 2]
    C = np.hypot(a, b)
    h = np.degrees(np.arctan2(b, a)) % 360
    conditions = [
        (L < 15) | ((L < 25) & (C < 12)),
        (L > 88) & (C < 15),
        C < 10,
        (h >= 345) | (h < 20),
        h < 50,
        h < 85,
        h < 112,
        h < 195,
        h < 300,
        h < 345,
    ]
    choices = [
        "black",
        "white",
        np.where(L > 85, "white", "grey"),
        np.where(L >= 60, "pink", "red"),
        np.where(L >= 65, "pink", np.where(C >= 40, "red", "brown")),
        np.where(L < 50, "brown", np.where(C >= 38, "orange", np.where(L >= 60, "beige", "brown"))),
        np.where(
            (C >= 45) & (L >= 55), "yellow", np.where(L < 55, np.where(h >= 100, "green", "brown"), "beige")
        ),
        "green",
        "blue",
        np.where(L >= 65, "pink", "purple"),
    ]
    broadcast = [np.broadcast_to(np.asarray(c), L.shape) for c in choices]
    return np.select(conditions, broadcast, default="grey").astype(object)


def where(mask: np.ndarray) -> str:
    """Where the True pixels of a mask lie: "at the top", "in the bottom left", "in the centre", or
    "across the image" when they are spread out."""
    h, w = mask.shape
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        return ""
    # share of the mask in each third of the image, vertically and horizontally
    rows = np.bincount(np.minimum(3 * ys // h, 2), minlength=3) / len(ys)
    cols = np.bincount(np.minimum(3 * xs // w, 2), minlength=3) / len(xs)
    vertical = {0: "top", 2: "bottom"}.get(int(rows.argmax())) if rows.max() >= 0.55 else None
    horizontal = {0: "left", 2: "right"}.get(int(cols.argmax())) if cols.max() >= 0.55 else None
    if vertical and horizontal:
        return f"in the {vertical} {horizontal}"
    if vertical:
        return f"at the {vertical}"
    if horizontal:
        return f"on the {horizontal}"
    if rows[1] >= 0.55 and cols[1] >= 0.55:
        return "in the centre"
    return "across the image"


@dataclass
class ColourArea:
    name: str
    share: float  # of the image's pixels
    where: str


def colour_areas(image: Image.Image, min_share: float = 0.04) -> list[ColourArea]:
    """The named colours covering at least `min_share` of the image, largest first, with where they are."""
    names = colour_names(small_rgb(image))
    areas = []
    for name in COLOURS:
        mask = names == name
        share = float(mask.mean())
        if share >= min_share:
            areas.append(ColourArea(name, share, where(mask)))
    return sorted(areas, key=lambda a: -a.share)


def chroma_statistics(image: Image.Image) -> tuple[float, float]:
    """(95th percentile of the CIELAB chroma, circular spread of the hue in degrees over coloured pixels).

    Grayscale photos have almost no chroma; sepia or tinted monochrome photos have some, all of one hue."""
    lab = _rgb_to_lab(small_rgb(image)).reshape(-1, 3)
    a, b = lab[:, 1], lab[:, 2]
    chroma = np.hypot(a, b)
    coloured = chroma > 3
    if coloured.sum() < 10:
        return float(np.percentile(chroma, 95)), 0.0
    angle = np.arctan2(b[coloured], a[coloured])
    resultant = np.hypot(np.cos(angle).mean(), np.sin(angle).mean())
    spread = np.degrees(np.sqrt(-2 * np.log(max(resultant, 1e-9))))
    return float(np.percentile(chroma, 95)), float(spread)


def tone(
    image: Image.Image, gray_chroma: float = 6.0, tint_spread: float = 8.0, tint_chroma: float = 30.0
) -> str:
    """ "grayscale", "tinted" (monochrome in one hue, e.g. sepia) or "colour"."""
    if image.mode in ("1", "L", "I", "I;16", "F"):
        return "grayscale"
    chroma95, spread = chroma_statistics(image)
    if chroma95 < gray_chroma:
        return "grayscale"
    if spread < tint_spread and chroma95 < tint_chroma:
        return "tinted"
    return "colour"


@dataclass
class Light:
    brightness: float  # mean CIELAB lightness, 0 (black) to 100 (white)
    contrast: float  # standard deviation of the lightness
    border: float  # mean lightness of the outer tenth of the image
    centre: float  # mean lightness of the middle third


def light(image: Image.Image) -> Light:
    lum = _rgb_to_lab(small_rgb(image))[..., 0]
    h, w = lum.shape
    bh, bw = max(1, h // 10), max(1, w // 10)
    border = np.concatenate([lum[:bh].ravel(), lum[-bh:].ravel(), lum[:, :bw].ravel(), lum[:, -bw:].ravel()])
    centre = lum[h // 3 : max(h // 3 + 1, 2 * h // 3), w // 3 : max(w // 3 + 1, 2 * w // 3)]
    return Light(float(lum.mean()), float(lum.std()), float(border.mean()), float(centre.mean()))


@dataclass
class Sharpness:
    detail: float  # variance of the Laplacian of the lightness (low: blurry)
    streak: float  # horizontal / vertical gradient energy; far from 1: streaked (motion blur) one way


def sharpness(image: Image.Image, side: int = 256) -> Sharpness:
    """Measured at a fixed size so that large and small images compare."""
    from scipy import ndimage

    gray = np.asarray(image.convert("L").resize((side, side)), dtype=np.float64)
    detail = float(ndimage.laplace(gray).var())
    gx = float((ndimage.sobel(gray, axis=1) ** 2).mean())
    gy = float((ndimage.sobel(gray, axis=0) ** 2).mean())
    return Sharpness(detail, (gx + 1e-6) / (gy + 1e-6))


@functools.lru_cache(maxsize=1)
def _face_cascade():
    from skimage.data import lbp_frontal_face_cascade_filename
    from skimage.feature import Cascade

    return Cascade(lbp_frontal_face_cascade_filename())


def faces(image: Image.Image, side: int = 320, min_neighbours: int = 6) -> list[tuple[float, float, float]]:
    """Frontal faces found by scikit-image's trained LBP cascade, as (centre x, centre y, width) in fractions
    of the image. Detections supported by fewer than `min_neighbours` overlapping windows are dropped."""
    gray = image.convert("L")
    scale = side / max(gray.size)
    if scale < 1:
        gray = gray.resize((round(gray.width * scale), round(gray.height * scale)))
    w, h = gray.size
    if min(w, h) < 48:
        return []
    pixels = np.asarray(gray, dtype=np.float64) / 255.0
    found = _face_cascade().detect_multi_scale(
        img=pixels,
        scale_factor=1.2,
        step_ratio=1,
        min_size=(max(24, min(w, h) // 10),) * 2,
        max_size=(min(w, h),) * 2,
        min_neighbor_number=min_neighbours,
    )
    return [((f["c"] + f["width"] / 2) / w, (f["r"] + f["height"] / 2) / h, f["width"] / w) for f in found]


def tesseract_available() -> bool:
    return shutil.which("tesseract") is not None


def printed_words(image: Image.Image, min_confidence: int = 60, timeout: float = 30.0) -> list[str]:
    """Words of at least three letters that Tesseract OCR reads in the image (English) with at least
    `min_confidence` (0-100), in reading order; [] when Tesseract is not installed."""
    if not tesseract_available():
        return []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "image.png"
        image.convert("L").save(path)
        try:
            tsv = subprocess.run(
                ["tesseract", str(path), "stdout", "-l", "eng", "--psm", "3", "tsv"],
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
                env={**os.environ, "OMP_THREAD_LIMIT": "1"},  # one thread: the run has its own parallelism
            ).stdout
        except (OSError, subprocess.TimeoutExpired):
            return []
    words = []
    for line in tsv.splitlines()[1:]:  # level, page, block, par, line, word, left, top, w, h, conf, text
        fields = line.split("\t")
        if len(fields) != 12 or float(fields[10] or -1) < min_confidence:
            continue
        word = fields[11].strip(".,;:!?()[]{}\"'")
        if len(word) >= 3 and word.isalpha():
            words.append(word)
    return words


def regions(image: Image.Image) -> dict[str, Image.Image]:
    """The image's four quadrants and its centre, named by where they are."""
    w, h = image.size
    boxes = {
        "top left": (0, 0, w // 2, h // 2),
        "top right": (w // 2, 0, w, h // 2),
        "bottom left": (0, h // 2, w // 2, h),
        "bottom right": (w // 2, h // 2, w, h),
        "centre": (w // 4, h // 4, 3 * w // 4, 3 * h // 4),
    }
    return {name: image.crop(box) for name, box in boxes.items()}
