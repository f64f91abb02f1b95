"""A prompt's images and video as models take them: PIL images and frames (in-process models) or base64
`data:` URLs (HTTP chat APIs)."""

from __future__ import annotations

import base64
import functools
import io
import mimetypes
from pathlib import Path
from typing import Any

from PIL import Image

from visa.core.errors import VisaError
from visa.core.prompt import Prompt

# Formats every vision model server reads as they are; anything else is re-encoded.
_SENT_AS_IS = {"image/jpeg", "image/png", "image/webp", "image/gif"}


def read_image(path: str, max_pixels: int | None) -> Image.Image:
    """The image in RGB, scaled down to at most `max_pixels` pixels when that is set."""
    from visa.data.media import load_image
    from visa.data.video import fit_pixels

    image = load_image(path)
    return fit_pixels(image, max_pixels) if max_pixels else image


def video_frames(path: str, fps: float, max_pixels: int, max_frames: int | None, min_pixels: int) -> list:
    """A video's frames as Qwen2-VL's reference preprocessing takes them (`visa.data.video.sample_fps`)."""
    from visa.data.video import sample_fps

    return sample_fps(path, fps, max_pixels, max_frames, min_pixels)


def prompt_media(prompt: Prompt, settings) -> tuple[list, list]:
    """(images, videos) of one prompt for a generator with `MediaSettings`; a video is a list of frames."""
    if prompt.media_kind == "video":
        frames = [
            video_frames(
                path,
                settings.video_fps,
                settings.frame_pixels,
                settings.max_frames,
                settings.video_min_pixels,
            )
            for path in prompt.media
        ]
        return [], frames
    return [read_image(path, settings.max_pixels) for path in prompt.media], []


# The questions about one item are sent one after another: encode each image once for all of them.
@functools.lru_cache(maxsize=32)
def image_data_url(path: str, max_pixels: int | None) -> str:
    """A data: URL of the image file; re-encoded only when its format is unusual or it must be scaled."""
    mime = mimetypes.guess_type(path)[0]
    if mime in _SENT_AS_IS and not max_pixels:
        try:
            data = Path(path).read_bytes()
        except FileNotFoundError as e:
            raise VisaError(f"image not found: {path}; check the dataset's paths") from e
        return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"
    return frame_data_url(read_image(path, max_pixels))


def frame_data_url(frame: Any) -> str:
    """A data: URL (JPEG) of a PIL image or an HxWx3 uint8 array."""
    if not isinstance(frame, Image.Image):
        frame = Image.fromarray(frame)
    buf = io.BytesIO()
    frame.convert("RGB").save(buf, format="JPEG", quality=90)
    return f"data:image/jpeg;base64,{base64.b64encode(buf.getvalue()).decode('ascii')}"
