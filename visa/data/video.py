"""Video frames for backbones and MLLMs, decoded with PyAV (FFmpeg) one frame at a time.

- `sample_uniform(path, n)`: n frames, the middle frame of n equal segments (the usual test-time sampling of
  video-text backbones);
- `sample_fps(path, fps, max_pixels, max_frames, min_pixels)`: the frames a video MLLM gets, chosen and sized
  as Qwen2-VL's reference preprocessing does (qwen_vl_utils 0.0.8, which the paper's code pinned; see
  `mllm_frame_count` and `mllm_frame_size`); the method uses 3 fps and at most 360x420 pixels a frame.

Both walk the stream once: frames are decoded one after another and only the selected ones are kept and
converted; when the next wanted time is far ahead, the decoder seeks to the key frame before it instead of
decoding everything in between. So memory holds the selected frames and one decoded frame, never the video.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import av
import torch
from PIL import Image

from visa.core.errors import VisaError

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
    frames: int  # number of frames: from the header, else duration x fps


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
        frames = stream.frames or round(duration * fps)
        width, height = stream.codec_context.width, stream.codec_context.height
        return VideoInfo(start, duration, fps, width, height, frames)


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


# Qwen2-VL's video preprocessing (qwen_vl_utils 0.0.8): sides are multiples of PATCH_FACTOR (28: 14-pixel
# patches merged 2x2), frame counts multiples of FRAME_FACTOR (2 frames form one temporal patch).
PATCH_FACTOR = 28
FRAME_FACTOR = 2
MIN_FRAMES = 4
MAX_FRAMES = 768
VIDEO_MIN_PIXELS = 128 * 28 * 28  # smaller frames are scaled up to this
VIDEO_MAX_PIXELS = 768 * 28 * 28  # without an explicit budget: at most this a frame ...
VIDEO_TOTAL_PIXELS = 24576 * 28 * 28  # ... and at most this over the whole clip (per frame pair)
PAPER_MAX_PIXELS = 360 * 420  # the budget the paper's code passes for every video frame
MAX_ASPECT_RATIO = 200


def _to_multiple(x: float, factor: int, how=round) -> int:
    """`x` rounded (round, math.floor or math.ceil) to a multiple of `factor`; round is half-to-even, as
    qwen_vl_utils' Python round."""
    return int(how(x / factor)) * factor


def mllm_frame_count(
    total_frames: int, video_fps: float, fps: float = 3.0, max_frames: int | None = None
) -> int:
    """How many frames a clip of `total_frames` at `video_fps` gives at `fps` frames a second: the clip's
    length x fps, clamped to [4, min(768, total_frames)] and rounded to an even number.

    `max_frames` lowers the upper bound (rounded down to even) to bound memory: clips longer than
    max_frames / fps seconds then get fewer frames than `fps` asks, still spread over the whole clip."""
    if total_frames < FRAME_FACTOR or video_fps <= 0:
        raise VisaError(
            f"a video with {total_frames} frame(s) at {video_fps} fps is too short to give the MLLM "
            f"{FRAME_FACTOR} frames"
        )
    low = _to_multiple(MIN_FRAMES, FRAME_FACTOR, math.ceil)
    high = _to_multiple(min(MAX_FRAMES, total_frames), FRAME_FACTOR, math.floor)
    if max_frames is not None:
        high = min(high, _to_multiple(max_frames, FRAME_FACTOR, math.floor))
    wanted = total_frames / video_fps * fps
    return max(FRAME_FACTOR, _to_multiple(min(max(wanted, low), high), FRAME_FACTOR))


def mllm_frame_size(
    width: int, height: int, min_pixels: int = VIDEO_MIN_PIXELS, max_pixels: int = PAPER_MAX_PIXELS
) -> tuple[int, int]:
    """(width, height) of a frame for the MLLM: sides multiples of 28, aspect ratio kept as closely as that
    allows, area within [min_pixels, max_pixels] (small frames are scaled up, large ones down)."""
    if max(width, height) / max(1, min(width, height)) > MAX_ASPECT_RATIO:
        raise VisaError(f"a {width}x{height} frame is too elongated for the MLLM (aspect ratio over 200)")
    f = PATCH_FACTOR
    h, w = max(f, _to_multiple(height, f)), max(f, _to_multiple(width, f))
    if h * w > max_pixels:
        scale = math.sqrt(height * width / max_pixels)
        h, w = _to_multiple(height / scale, f, math.floor), _to_multiple(width / scale, f, math.floor)
    elif h * w < min_pixels:
        scale = math.sqrt(min_pixels / (height * width))
        h, w = _to_multiple(height * scale, f, math.ceil), _to_multiple(width * scale, f, math.ceil)
    return w, h


def sample_fps(
    path: str,
    fps: float = 3.0,
    max_pixels: int | None = PAPER_MAX_PIXELS,
    max_frames: int | None = None,
    min_pixels: int = VIDEO_MIN_PIXELS,
) -> list[Image.Image]:
    """The frames of a video for an MLLM, as Qwen2-VL's reference preprocessing takes them.

    `mllm_frame_count` frames at frame indices evenly spread from the first frame to the last (rounded to
    the nearest), each resized (bicubic) to `mllm_frame_size`. `max_pixels=None` uses qwen_vl_utils' own
    budget: at most 768x28x28 pixels a frame and 24576x28x28 for the clip."""
    if fps <= 0 or (max_frames is not None and max_frames < FRAME_FACTOR) or min_pixels < 1:
        raise VisaError(
            f"sample_fps: fps={fps} and min_pixels={min_pixels} must be > 0, max_frames={max_frames} at "
            f"least {FRAME_FACTOR}"
        )
    info = probe(path)
    try:
        count = mllm_frame_count(info.frames, info.fps, fps, max_frames)
    except VisaError as e:
        raise VisaError(f"{path}: {e}; replace or remove the file") from e
    pixels: float = (
        max_pixels
        if max_pixels is not None
        else max(min(VIDEO_MAX_PIXELS, VIDEO_TOTAL_PIXELS / count * FRAME_FACTOR), int(min_pixels * 1.05))
    )
    # torch's float32 linspace and half-to-even rounding, as qwen_vl_utils: a float64 formula picks another
    # frame in about 1 case of 150
    indices = torch.linspace(0, info.frames - 1, count).round().long().tolist()
    times = [info.start + index / info.fps for index in indices]
    size = mllm_frame_size(info.width, info.height, min_pixels, int(pixels))
    return [img.resize(size, Image.Resampling.BICUBIC) for img in _frames_at(path, times)]
