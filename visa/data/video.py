"""Video frames for backbones and MLLMs, decoded with PyAV (FFmpeg) one frame at a time.

- `sample_uniform(path, n)`: n frames, the middle frame of n equal segments (the usual test-time sampling of
  video-text backbones);
- `sample_fps(path, fps, max_pixels, max_frames)`: frames at a fixed rate, each resized to a pixel budget
  (what video MLLMs take; the method uses 3 fps at about 360x420).

Both walk the stream once: frames are decoded one after another and only the selected ones are kept and
converted; when the next wanted time is far ahead, the decoder seeks to the key frame before it instead of
decoding everything in between. So memory holds the selected frames and one decoded frame, never the video.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import av
from PIL import Image

from visa.errors import VisaError

# Seek instead of decoding forward when the next wanted frame is more than this many seconds ahead:
# below it, decoding the few frames in between is cheaper than a seek (which restarts at a key frame).
SEEK_GAP_SECONDS = 4.0


@dataclass(frozen=True)
class VideoInfo:
    start: float  # seconds; presentation time of the first frame
    duration: float  # seconds
    fps: float
    width: int
    height: int


def _open(path: str):
    if not os.path.isfile(path):
        raise VisaError(f"video not found: {path}; check dataset.root / dataset.media_dir")
    try:
        container = av.open(path)
    except (av.FFmpegError, OSError, UnicodeDecodeError) as e:
        raise VisaError(f"cannot open video {path}: {e}; replace or remove the file") from e
    if not container.streams.video:
        container.close()
        raise VisaError(f"{path} has no video stream; replace or remove the file")
    return container


def _stream_extent(container, stream) -> tuple[float, float]:
    """(start, duration) in seconds: from the headers, else from the packets (without decoding)."""
    tb = stream.time_base
    start = float(stream.start_time * tb) if stream.start_time is not None else 0.0
    if stream.duration:
        return start, float(stream.duration * tb)
    if container.duration:
        return start, container.duration / av.time_base
    end = start
    for packet in container.demux(stream):
        if packet.pts is not None:
            end = max(end, float((packet.pts + (packet.duration or 0)) * tb))
    container.seek(0)
    return start, end - start


def probe(path: str) -> VideoInfo:
    """Header facts of a video; a missing, unreadable or video-less file is a VisaError naming it."""
    with _open(path) as container:
        stream = container.streams.video[0]
        try:
            start, duration = _stream_extent(container, stream)
        except av.FFmpegError as e:
            raise VisaError(f"cannot read video {path}: {e}; replace or remove the file") from e
        rate = stream.average_rate or stream.guessed_rate
        fps = float(rate) if rate else 0.0
        return VideoInfo(start, duration, fps, stream.codec_context.width, stream.codec_context.height)


def _frames_at(path: str, times: list[float]) -> list[Image.Image]:
    """The frame shown at each of `times` (seconds, ascending, absolute presentation times)."""
    out: list[Image.Image] = []
    with _open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        tb = stream.time_base
        try:
            frames = container.decode(stream)
            previous = None  # the last decoded frame: the one on screen until the next one starts
            sought_for = -1  # index of the wanted time we last sought to (seek once per target)
            i = 0
            while i < len(times):
                frame = next(frames, None)
                if frame is None:
                    break
                t = frame.time if frame.time is not None else (previous.time if previous else 0.0)
                if times[i] - t > SEEK_GAP_SECONDS and sought_for != i:
                    sought_for = i
                    container.seek(int(times[i] / tb), stream=stream, backward=True, any_frame=False)
                    frames = container.decode(stream)
                    previous = None
                    continue
                # 1 us of slack: a wanted time computed as 0.8999.. still gets the frame that starts at 0.9
                while i < len(times) and t > times[i] + 1e-6:
                    out.append((previous if previous is not None else frame).to_image())
                    i += 1
                previous = frame
            while previous is not None and i < len(times):  # times at or past the last frame
                out.append(previous.to_image())
                i += 1
        except av.FFmpegError as e:
            raise VisaError(f"cannot decode video {path}: {e}; replace or remove the file") from e
    if len(out) < len(times):
        raise VisaError(f"video {path} has no decodable frames; replace or remove the file")
    return [img.convert("RGB") for img in out]


def sample_uniform(path: str, num_frames: int) -> list[Image.Image]:
    """`num_frames` frames: the middle of each of `num_frames` equal segments of the video."""
    if num_frames < 1:
        raise VisaError(f"num_frames={num_frames} must be at least 1")
    info = probe(path)
    step = info.duration / num_frames
    return _frames_at(path, [info.start + (i + 0.5) * step for i in range(num_frames)])


def fit_pixels(image: Image.Image, max_pixels: int) -> Image.Image:
    """`image` scaled down (aspect ratio kept) to at most `max_pixels` pixels; smaller ones are unchanged."""
    w, h = image.size
    if w * h <= max_pixels:
        return image
    scale = math.sqrt(max_pixels / (w * h))
    size = (max(1, math.floor(w * scale)), max(1, math.floor(h * scale)))
    return image.resize(size, Image.Resampling.BICUBIC)


def sample_fps(
    path: str, fps: float = 3.0, max_pixels: int = 360 * 420, max_frames: int = 64
) -> list[Image.Image]:
    """Frames every 1/fps seconds (at most `max_frames`, spread over the whole video when it is longer),
    each resized to at most `max_pixels` pixels."""
    if fps <= 0 or max_frames < 1 or max_pixels < 1:
        raise VisaError(
            f"sample_fps: fps={fps}, max_frames={max_frames}, max_pixels={max_pixels} must all be > 0"
        )
    info = probe(path)
    count = max(1, math.floor(info.duration * fps))
    if count <= max_frames:
        times = [info.start + i / fps for i in range(count)]
    else:  # too long for the frame budget: uniform over the whole video instead
        step = info.duration / max_frames
        times = [info.start + (i + 0.5) * step for i in range(max_frames)]
    return [fit_pixels(img, max_pixels) for img in _frames_at(path, times)]
