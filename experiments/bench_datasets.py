"""Benchmark: loading a COCO-sized Karpathy annotation, and the memory of sampling frames from a long video.

    python experiments/bench_datasets.py [--workdir DIR]

1. Writes a Karpathy-format dataset_coco.json with 5,000 test images x 5 captions (25,000 queries, with the
   real file's fields: filepath, filename, split, sentences[].raw/tokens, ids) plus 5,000 tiny JPEG files,
   then times AnnotatedDataset.load() with and without the per-item header check.
2. Writes a long video (default 1,500 frames of 640x480) and measures the peak resident memory of a fresh
   process that samples 8 uniform frames and 3-fps frames from it, against the size of all its frames decoded.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np
from PIL import Image

from visa.data.formats import AnnotatedDataset

WORDS = "a man woman dog cat sits stands on the red blue table street near with two small large green".split()


def write_coco(root: Path, images: int = 5000, captions: int = 5) -> None:
    rng = np.random.default_rng(0)
    rows = []
    for i in range(images):
        sentences = []
        for j in range(captions):
            tokens = [WORDS[k] for k in rng.integers(0, len(WORDS), 10)]
            sentences.append(
                {
                    "tokens": tokens,
                    "raw": " ".join(tokens).capitalize() + ".",
                    "imgid": i,
                    "sentid": i * captions + j,
                }
            )
        name = f"COCO_val2014_{i:012d}.jpg"
        rows.append(
            {
                "filepath": "val2014",
                "sentids": [s["sentid"] for s in sentences],
                "filename": name,
                "imgid": i,
                "split": "test",
                "sentences": sentences,
                "cocoid": i,
            }
        )
    (root / "dataset_coco.json").write_text(json.dumps({"images": rows, "dataset": "coco"}))
    folder = root / "images/val2014"
    folder.mkdir(parents=True)
    tiny = Image.new("RGB", (32, 24), (120, 60, 30))
    for row in rows:
        tiny.save(folder / row["filename"], quality=80)


def time_load(root: Path, check_items: bool, repeats: int = 3) -> tuple[float, int, int]:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        ds = AnnotatedDataset(
            name="coco",
            root=str(root),
            annotation="dataset_coco.json",
            media_dir="images",
            format="karpathy",
            max_captions=5,
            check_items=check_items,
        ).load()
        best = min(best, time.perf_counter() - t0)
    return best, len(ds.queries), len(ds.gallery)


def write_video(path: Path, frames: int, size: tuple[int, int] = (640, 480), fps: int = 25) -> None:
    rng = np.random.default_rng(0)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        base = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
        for i in range(frames):
            frame = np.roll(base, i * 4, axis=1)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


CHILD = """
import resource, sys, time
from visa.data.video import sample_fps, sample_uniform
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
frames = {call}
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(len(frames), (after - before) / 1024, time.perf_counter() - t0)
"""


def peak_memory(path: Path, call: str) -> tuple[int, float, float]:
    code = CHILD.format(call=call.format(path=str(path)))
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    return int(out[0]), float(out[1]), float(out[2])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--video-frames", type=int, default=1500)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.workdir or tmp)
        coco = work / "coco"
        coco.mkdir(parents=True, exist_ok=True)
        write_coco(coco)
        size_mb = (coco / "dataset_coco.json").stat().st_size / 1e6
        seconds, queries, gallery = time_load(coco, check_items=False)
        print(
            f"karpathy json ({size_mb:.1f} MB), load + index, no item check: {seconds:.3f} s "
            f"({queries} queries over {gallery} images)"
        )
        seconds, queries, gallery = time_load(coco, check_items=True)
        print(f"karpathy json, load + index + header check of {gallery} JPEG files: {seconds:.3f} s")

        video = work / "long.mp4"
        write_video(video, args.video_frames)
        decoded_mb = args.video_frames * 640 * 480 * 3 / 2**20
        print(
            f"video: {args.video_frames} frames 640x480 ({video.stat().st_size / 2**20:.1f} MiB file, "
            f"{decoded_mb:.0f} MiB if every frame were decoded to RGB)"
        )
        for label, call in (
            ("sample_uniform(8)", "sample_uniform('{path}', 8)"),
            ("sample_fps(3 fps, 64 max)", "sample_fps('{path}', max_frames=64)"),
        ):
            n, peak, secs = peak_memory(video, call)
            print(f"  {label}: {n} frames, peak RSS growth {peak:.0f} MiB, {secs:.2f} s")


if __name__ == "__main__":
    main()
