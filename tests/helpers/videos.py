"""Short video clips written with PyAV for the tests."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np


def make_video(
    path: Path, frames: int = 30, fps: int = 10, size: tuple[int, int] = (64, 48), gop: int = 12
) -> Path:
    """An MPEG-4 clip whose frame i is a flat grey of level 8 * i (so a frame's index can be read back)."""
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.gop_size = gop
        for i in range(frames):
            pixels = np.full((size[1], size[0], 3), (8 * i) % 256, dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path
