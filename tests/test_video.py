"""Video decoding and frame sampling (visa.data.video) and the video backbones, on generated clips."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest
import torch
from helpers.videos import make_video
from PIL import Image

from visa.core.errors import VisaError
from visa.data import Item
from visa.data.video import mllm_frame_count, mllm_frame_size, probe, sample_fps, sample_uniform


def frame_index(img: Image.Image) -> int:
    return round(float(np.asarray(img, dtype=np.float32).mean()) / 8)


def test_probe_reads_the_headers(tmp_path):
    info = probe(str(make_video(tmp_path / "a.mp4", frames=30, fps=10)))
    assert info.duration == pytest.approx(3.0, abs=0.15)
    assert info.fps == pytest.approx(10)
    assert (info.width, info.height) == (64, 48)


def test_sample_uniform_takes_the_middle_of_each_segment(tmp_path):
    path = str(make_video(tmp_path / "a.mp4", frames=30, fps=10))
    frames = sample_uniform(path, 5)  # segments of 0.6 s: middles at 0.3, 0.9, ... -> frames 3, 9, 15, 21, 27
    assert [frame_index(f) for f in frames] == [3, 9, 15, 21, 27]
    assert all(f.mode == "RGB" and f.size == (64, 48) for f in frames)


def test_sample_uniform_seeks_in_long_videos(tmp_path):
    # 40 s at 5 fps with a key frame every 10 frames: the wanted frames are far apart, so the decoder seeks
    path = str(make_video(tmp_path / "long.mp4", frames=200, fps=5, gop=10))
    frames = sample_uniform(path, 4)  # middles at 5, 15, 25, 35 s -> frames 25, 75, 125, 175 (levels mod 256)
    assert [frame_index(f) for f in frames] == [(8 * i) % 256 // 8 for i in (25, 75, 125, 175)]


def test_mllm_frame_count_follows_qwen_vl_utils():
    # 3 fps over the whole clip, clamped to [4, min(768, total frames)], rounded half-to-even to even
    assert mllm_frame_count(300, 30.0) == 30  # 10 s
    assert mllm_frame_count(30, 10.0) == 8  # 9 wanted -> round(4.5) * 2 = 8
    assert mllm_frame_count(33, 10.0) == 10  # 9.9 -> 10
    assert mllm_frame_count(20, 30.0) == 4  # 2 wanted: the minimum is 4
    assert mllm_frame_count(3, 30.0) == 2  # a 3-frame clip: at most its frames, rounded down to even
    assert mllm_frame_count(9000, 30.0) == 768  # 5 min: the 768-frame ceiling
    assert mllm_frame_count(9000, 30.0, max_frames=64) == 64  # the memory cap
    assert mllm_frame_count(9000, 30.0, max_frames=65) == 64  # ... rounded down to even
    assert mllm_frame_count(300, 30.0, fps=2.0) == 20
    with pytest.raises(VisaError, match="too short"):
        mllm_frame_count(1, 30.0)


def test_mllm_frame_size_follows_smart_resize():
    # sides multiples of 28, area within [128*28*28, budget]; small frames scaled up, large ones down
    assert mllm_frame_size(640, 360, max_pixels=360 * 420) == (504, 280)
    assert mllm_frame_size(64, 48) == (392, 280)  # 3,072 px -> at least 100,352
    assert mllm_frame_size(400, 300) == (392, 308)  # within bounds: only rounded to multiples of 28
    for w, h in [(1920, 1080), (320, 240), (100, 700), (3000, 20)]:
        fw, fh = mllm_frame_size(w, h)
        assert fw % 28 == 0 and fh % 28 == 0
        assert 128 * 28 * 28 <= fw * fh <= 360 * 420 or (w, h) == (3000, 20)
    with pytest.raises(VisaError, match="elongated"):
        mllm_frame_size(5000, 10)


def test_sample_fps_takes_qwen_frames_over_the_whole_clip(tmp_path):
    path = str(make_video(tmp_path / "a.mp4", frames=30, fps=10, size=(640, 360)))
    frames = sample_fps(path)  # 3 fps x 3 s = 9 -> 8 frames at linspace(0, 29, 8) rounded
    assert [frame_index(f) for f in frames] == [0, 4, 8, 12, 17, 21, 25, 29]
    assert all(f.size == (504, 280) for f in frames)  # within the paper's 360x420 budget
    capped = sample_fps(path, fps=10.0, max_frames=4)  # 30 wanted, 4 allowed: still first to last frame
    assert [frame_index(f) for f in capped] == [0, 10, 19, 29]
    small = sample_fps(str(make_video(tmp_path / "small.mp4", size=(64, 48))))
    assert small[0].size == (392, 280)  # under 128*28*28 pixels: scaled up
    assert sample_fps(path, max_pixels=None)[0].size == (644, 364)  # qwen_vl_utils' own budget


def test_video_errors_name_the_file(tmp_path):
    with pytest.raises(VisaError, match="not found.*nope.mp4"):
        sample_uniform(str(tmp_path / "nope.mp4"), 4)
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00\x01 this is not a video" * 50)
    with pytest.raises(VisaError, match="bad.mp4"):
        sample_fps(str(bad))
    with pytest.raises(VisaError, match="num_frames"):
        sample_uniform(str(make_video(tmp_path / "a.mp4")), 0)


class _MeanColourBackbone:
    """A stand-in image backbone: the embedding of an image is its mean RGB colour plus a constant."""

    batch_size = 4

    def identity(self) -> dict:
        return {"backbone": "mean-colour"}

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        return torch.nn.functional.normalize(torch.ones(len(texts), 4), dim=-1)

    def encode_visual(self, items: list[Item]) -> torch.Tensor:
        rows = []
        for item in items:
            assert item.kind == "image"
            rgb = np.asarray(Image.open(item.path).convert("RGB"), dtype=np.float32).mean((0, 1)) / 255
            rows.append(torch.tensor([*rgb, 1.0]))
        return torch.stack(rows)


def test_frame_pooled_backbone_averages_frame_embeddings(tmp_path):
    from visa.backbones.frame_pooled import FramePooledBackbone

    video = str(make_video(tmp_path / "a.mp4", frames=30, fps=10))
    image = tmp_path / "red.png"
    Image.new("RGB", (8, 8), (255, 0, 0)).save(image)
    backbone = FramePooledBackbone(_MeanColourBackbone(), num_frames=5)
    emb = backbone.encode_visual([Item("v", video, "video"), Item("i", str(image), "image")])
    grey = float(np.mean([8 * i / 255 for i in (3, 9, 15, 21, 27)]))  # mean of the sampled frames' levels
    expected_video = torch.nn.functional.normalize(torch.tensor([grey, grey, grey, 1.0]), dim=0)
    assert torch.allclose(emb[0], expected_video, atol=0.02)
    assert torch.allclose(
        emb[1], torch.nn.functional.normalize(torch.tensor([1.0, 0, 0, 1.0]), dim=0), atol=0.01
    )
    assert backbone.identity()["image"] == {"backbone": "mean-colour"}


class _TinyInternVideo2(torch.nn.Module):
    """The interface of InternVideo2's remote code (get_vid_feat / get_txt_feat), with tiny random weights."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.vision_proj = torch.nn.Linear(3, 8)
        self.text_proj = torch.nn.Embedding(256, 8)
        self.seen: list[tuple[int, ...]] = []

    def get_vid_feat(self, frames: torch.Tensor) -> torch.Tensor:
        self.seen.append(tuple(frames.shape))
        feat = self.vision_proj(frames.mean((1, 3, 4)))
        return (feat / feat.norm(dim=-1, keepdim=True)).unsqueeze(1)  # [B, 1, C] like the real model

    def get_txt_feat(self, text: str) -> torch.Tensor:
        feat = self.text_proj(torch.tensor([ord(c) % 256 for c in text])).mean(0, keepdim=True)
        return feat / feat.norm(dim=-1, keepdim=True)


def test_internvideo2_adapter_feeds_normalised_clips(tmp_path, monkeypatch):
    from visa.backbones.internvideo2 import InternVideo2Backbone

    tiny = _TinyInternVideo2()
    loaded = []

    def from_pretrained(name, **kwargs):
        loaded.append((name, kwargs))
        return tiny

    monkeypatch.setitem(
        sys.modules,
        "transformers",
        types.SimpleNamespace(AutoModel=types.SimpleNamespace(from_pretrained=from_pretrained)),
    )
    backbone = InternVideo2Backbone(
        model=str(tmp_path / "ckpt"), num_frames=4, image_size=32, dtype="float32", device="cpu"
    )
    assert not loaded  # constructing loads nothing
    video = str(make_video(tmp_path / "a.mp4"))
    image = tmp_path / "i.png"
    Image.new("RGB", (20, 10), (10, 200, 30)).save(image)
    emb = backbone.encode_visual([Item("v", video, "video"), Item("i", str(image), "image")])
    assert loaded == [(str(tmp_path / "ckpt"), {"trust_remote_code": True, "revision": None})]
    assert tiny.seen == [(1, 4, 3, 32, 32), (1, 1, 3, 32, 32)]
    assert emb.shape == (2, 8)
    assert torch.allclose(emb.norm(dim=-1), torch.ones(2))
    text = backbone.encode_text(["a dog runs", "a cat sleeps", "a dog runs"])
    assert text.shape == (3, 8) and torch.allclose(text[0], text[2]) and not torch.allclose(text[0], text[1])


# Captions in the styles of the video benchmarks' files (MSRVTT, LSMDC's <person>, DiDeMo, MSVD), and what
# InternVideo2's evaluation (its pre_text) gives its text encoder for each.
CLEANED = {
    "A man is talking about a car's features, in detail.": "a man is talking about a cars features in detail",
    "SOMEONE hands <person> an half-empty glass!": "someone hands person an half empty glass",
    'The camera pans left/right (slowly) over the "old" town: #1 view~': (
        "the camera pans left right slowly over the old town 1 view"
    ),
    "  two   dogs\nplay  ": "two dogs play",
}


def test_internvideo2_cleans_captions_for_its_text_encoder_only_when_asked(tmp_path, monkeypatch):
    from visa.backbones.internvideo2 import InternVideo2Backbone, clean_caption

    assert {raw: clean_caption(raw) for raw in CLEANED} == CLEANED
    tiny = _TinyInternVideo2()
    seen: list[str] = []
    original = tiny.get_txt_feat
    monkeypatch.setattr(tiny, "get_txt_feat", lambda text: seen.append(text) or original(text))
    monkeypatch.setitem(
        sys.modules,
        "transformers",
        types.SimpleNamespace(AutoModel=types.SimpleNamespace(from_pretrained=lambda name, **kw: tiny)),
    )
    raw = list(CLEANED)
    plain = InternVideo2Backbone(model="m", dtype="float32", device="cpu")
    cleaning = InternVideo2Backbone(model="m", dtype="float32", device="cpu", clean_text=True)
    plain.encode_text(raw)
    assert seen == raw  # off (the default): the caption as written
    seen.clear()
    cleaning.encode_text(raw)
    assert seen == list(CLEANED.values())
    # on, it is part of the identity (so the text embeddings' cache keys); off, the identity is as before
    assert "clean_text" not in plain.identity() and cleaning.identity()["clean_text"] == "pre_text"
