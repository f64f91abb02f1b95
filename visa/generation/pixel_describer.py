"""The demo describer: a description of an image written from what its pixels show.

A stand-in for a captioning MLLM (none ships in a PyPI package). The demo backbone already knows the image's
ImageNet classes; this describer adds what those cannot express, each measured on the pixels
(`pixel_signals.py`): black and white or sepia, resolution, blur, brightness and a dark background, the
named colours and where they lie, the classifier run on the quadrants and the centre (several objects and
where they are, a label repeated across the image), faces, and printed text read by Tesseract when it is
installed. It never sees the captions, and it ignores the prompt text.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from PIL import Image

from visa.backbones.imagenet import classnames, image_probabilities
from visa.core.errors import VisaError
from visa.core.prompt import Prompt
from visa.data.media import load_image
from visa.generation import pixel_signals as px

OCR_MODES = ("auto", "on", "off")


@dataclass(frozen=True)
class Thresholds:
    """Where a measurement turns into words (CIELAB lightness 0-100, chroma, degrees of hue)."""

    gray_chroma: float = 6.0  # 95th percentile chroma below this: black and white
    tint_spread: float = 8.0  # hue spread of a tinted monochrome (sepia) photo, degrees
    tint_chroma: float = 30.0  # ... whose chroma stays below this
    low_resolution: int = 64  # longer side in pixels at or below this: a tiny, low-resolution image
    blurry_detail: float = 50.0  # Laplacian variance (at 256 px) below this: blurry
    motion_streak: float = 2.0  # gradient ratio beyond this (either way) in a blurry image: motion blur
    dark: float = 30.0  # mean lightness below this: a dark image
    bright: float = 70.0  # ... above this: a bright image
    low_contrast: float = 9.0  # lightness standard deviation below this: low contrast
    dark_border: float = 30.0  # border lightness below this, and
    border_gap: float = 20.0  # the centre this much lighter: a bright subject on a dark background
    min_colour_share: float = 0.04  # colours covering less of the image are not named
    region_min_prob: float = 0.3  # a region's class is named when the classifier is this sure
    face_min_width: float = 0.1  # faces narrower than this share of the image width are not counted


class PixelDescriber:
    uses_context = False

    def __init__(
        self,
        top_classes: int = 3,
        regions: bool = True,
        colours: bool = True,
        faces: bool = True,
        ocr: str = "auto",
        batch_size: int = 16,
        device: str = "cpu",
        num_frames: int = 8,
        thresholds: dict | None = None,
    ):
        if ocr not in OCR_MODES:
            raise VisaError(f"describer.ocr={ocr!r} is not one of {', '.join(OCR_MODES)}")
        if ocr == "on" and not px.tesseract_available():
            raise VisaError(
                "describer.ocr=on needs the tesseract program (Debian: apt-get install tesseract-ocr); "
                "or set describer.ocr=auto to skip OCR where it is not installed"
            )
        try:
            self.thresholds = Thresholds(**(thresholds or {}))
        except TypeError as e:
            raise VisaError(
                f"describer.thresholds: {e}; valid keys: {', '.join(asdict(Thresholds()))}"
            ) from e
        self.top_classes, self.regions, self.colours, self.faces = top_classes, regions, colours, faces
        self.ocr = ocr
        self.batch_size, self.device, self.num_frames = batch_size, device, num_frames

    def _ocr_on(self) -> bool:
        return self.ocr == "on" or (self.ocr == "auto" and px.tesseract_available())

    def identity(self) -> dict:
        return {
            "generator": "pixel-describer",
            "version": 1,  # bump when the wording changes
            "classifier": "efficientnet-lite0",
            "top_classes": self.top_classes,
            "regions": self.regions,
            "colours": self.colours,
            "faces": self.faces,
            "ocr": self._ocr_on(),  # "auto" is keyed by what it did, so installing Tesseract re-describes
            "video_frames": self.num_frames,
            "thresholds": asdict(self.thresholds),
        }

    def generate(self, prompts: list[Prompt]) -> list[str]:
        if any(p.media_kind not in ("image", "video") or len(p.media) != 1 for p in prompts):
            raise VisaError("describer=demo describes one image or one video per prompt")
        return [self.describe(*self._load(p)) for p in prompts]

    def _load(self, prompt: Prompt) -> tuple[list[Image.Image], str]:
        if prompt.media_kind == "video":
            from visa.data.video import sample_uniform

            return sample_uniform(prompt.media[0], self.num_frames), "video"
        return [load_image(prompt.media[0])], "photo"

    def describe(self, frames: list[Image.Image], kind: str = "photo") -> str:
        """The description of one image (or of a video from its frames: classes averaged over the frames,
        everything else measured on the middle frame)."""
        image = frames[len(frames) // 2]
        crops = px.regions(image) if self.regions else {}
        probs = image_probabilities([*frames, *crops.values()], self.device)
        whole = probs[: len(frames)].mean(0)
        sentences = [self._what(image, kind), self._classes(whole)]
        if crops:
            sentences.append(self._regions(dict(zip(crops, probs[len(frames) :])), whole))
        if self.faces:
            sentences.append(self._faces(image))
        if self.colours:
            sentences.append(self._colours(image))
        sentences.append(self._light(image))
        if self._ocr_on():
            sentences.append(self._text(image))
        return " ".join(s for s in sentences if s)

    # -- one sentence per signal --------------------------------------------------------------------------
    def _what(self, image: Image.Image, kind: str) -> str:
        t = self.thresholds
        words = []
        if max(image.size) <= t.low_resolution:
            words.append(f"tiny, low-resolution ({image.width}x{image.height} pixel)")
        tone = px.tone(image, t.gray_chroma, t.tint_spread, t.tint_chroma)
        words.append(
            {"grayscale": "black and white (grayscale)", "tinted": "sepia-toned (monochrome)"}.get(
                tone, "colour"
            )
        )
        sharp = px.sharpness(image)
        blur = ""
        if max(image.size) > t.low_resolution and sharp.detail < t.blurry_detail:
            streaked = sharp.streak < 1 / t.motion_streak or sharp.streak > t.motion_streak
            direction = "sideways" if sharp.streak < 1 else "up and down"
            blur = f", blurry and streaked {direction} by motion blur" if streaked else ", soft and blurry"
        return f"A {' '.join(words)} {kind}{blur}."

    def _classes(self, probs) -> str:
        names = classnames()
        top = probs.topk(self.top_classes)
        labels = [names[i] for i in top.indices.tolist()]
        likely = f"It most likely shows {_a(labels[0])} ({top.values[0].item():.0%} sure)"
        others = " or ".join(_a(label) for label in labels[1:])
        return f"{likely}; it could also show {others}." if others else likely + "."

    def _regions(self, region_probs: dict, whole) -> str:
        names = classnames()
        best = {region: (p.max().item(), names[int(p.argmax())]) for region, p in region_probs.items()}
        seen = set(whole.topk(self.top_classes).indices.tolist())
        seen_names = {names[i] for i in seen}
        quarters = [label for region, (_, label) in best.items() if region != "centre"]
        parts = []
        # the same class in most quarters: one large thing, or several of them; the classifier cannot tell
        repeated = {label for label in quarters if quarters.count(label) >= 3}
        for label in sorted(repeated):
            parts.append(f"{label} in {quarters.count(label)} of the 4 quarters (large, or several of them)")
        for region, (prob, label) in best.items():
            if prob >= self.thresholds.region_min_prob and label not in seen_names and label not in repeated:
                parts.append(f"{_a(label)} {'in the centre' if region == 'centre' else 'in the ' + region}")
        return ("Regions: " + "; ".join(parts) + ".") if parts else ""

    def _faces(self, image: Image.Image) -> str:
        found = [f for f in px.faces(image) if f[2] >= self.thresholds.face_min_width]
        if not found:
            return ""
        spots = {_spot(x, y) for x, y, _ in found}
        if len(found) == 1:
            return f"One human face {next(iter(spots))}: a portrait of a person."
        return f"{len(found)} human faces ({', '.join(sorted(spots))}): a group of people."

    def _colours(self, image: Image.Image) -> str:
        areas = px.colour_areas(image, self.thresholds.min_colour_share)
        if not areas:
            return ""
        main = areas[0]
        lead = f"mostly {main.name}" if main.share >= 0.5 else f"{main.name} {main.where}"
        rest = [f"{a.name} {a.where}" for a in areas[1:]]
        return "Colours: " + ", ".join([lead, *rest]) + "."

    def _light(self, image: Image.Image) -> str:
        t = self.thresholds
        lit = px.light(image)
        words = []
        if lit.brightness < t.dark:
            words.append("The image is dark overall")
        elif lit.brightness > t.bright:
            words.append("The image is bright overall")
        if lit.border < t.dark_border and lit.centre - lit.border > t.border_gap:
            words.append("a bright subject in the centre against a dark background")
        if lit.contrast < t.low_contrast:
            words.append("low contrast")
        if not words:
            return ""
        sentence = "; ".join(words)
        return sentence[0].upper() + sentence[1:] + "."

    def _text(self, image: Image.Image) -> str:
        words = px.printed_words(image)
        if len(words) < 3:
            return ""
        page = "A page of printed text. " if len(words) >= 30 else ""
        return f'{page}Printed text read by OCR: "{" ".join(words[:20])}".'


def _a(noun: str) -> str:
    return f"{'an' if noun[:1].lower() in 'aeiou' else 'a'} {noun}"


def _spot(x: float, y: float) -> str:
    """Where a point (fractions of width and height) lies, in the words of `pixel_signals.where`."""
    vertical = "top" if y < 1 / 3 else "bottom" if y > 2 / 3 else ""
    horizontal = "left" if x < 1 / 3 else "right" if x > 2 / 3 else ""
    if vertical and horizontal:
        return f"in the {vertical} {horizontal}"
    return f"at the {vertical}" if vertical else f"on the {horizontal}" if horizontal else "in the centre"
