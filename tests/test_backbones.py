"""open_clip and transformers dual encoders on tiny random-weight models in their real on-disk formats."""

from __future__ import annotations

import pytest
import torch
from helpers import tiny_models

from visa.backbones.hf_dual import HFDualEncoder  # noqa: E402
from visa.backbones.open_clip import OpenClipBackbone  # noqa: E402
from visa.core.errors import VisaError  # noqa: E402
from visa.data import Item  # noqa: E402

TEXTS = ["a dog running on the grass", "two cats", "a red car on the street " * 30, "people at the beach"]


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Item]:
    paths = tiny_models.write_images(tmp_path_factory.mktemp("imgs"), 5)
    return [Item(f"i{n}", str(p)) for n, p in enumerate(paths)]


@pytest.fixture(scope="module")
def backbones(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    oc = tiny_models.open_clip_dir(root / "oc", context_length=128)
    return {
        "open_clip": lambda **kw: OpenClipBackbone(model=f"local-dir:{oc}", device="cpu", **kw),
        "clip": lambda **kw: HFDualEncoder(
            model=str(tiny_models.hf_dual_dir(root / "clip", "clip")), device="cpu", **kw
        ),
        "siglip": lambda **kw: HFDualEncoder(
            model=str(tiny_models.hf_dual_dir(root / "siglip", "siglip")), device="cpu", **kw
        ),
    }


@pytest.mark.parametrize("name", ["open_clip", "clip", "siglip"])
def test_shapes_normalised_batch_invariant_deterministic(backbones, images, name):
    one = backbones[name](batch_size=1)
    many = backbones[name](batch_size=8)
    v1 = torch.cat([one.encode_visual([item]) for item in images])
    v8 = many.encode_visual(images)
    t1 = torch.cat([one.encode_text([t]) for t in TEXTS])
    t8 = many.encode_text(TEXTS)
    assert v8.shape[0] == len(images) and t8.shape[0] == len(TEXTS) and v8.shape[1] == t8.shape[1]
    assert torch.allclose(v8.norm(dim=1), torch.ones(len(images)), atol=1e-5)
    assert torch.allclose(t8.norm(dim=1), torch.ones(len(TEXTS)), atol=1e-5)
    assert torch.allclose(v1, v8, atol=1e-5) and torch.allclose(t1, t8, atol=1e-5)
    assert torch.equal(many.encode_visual(images), v8)  # deterministic
    assert not torch.allclose(v8[0], v8[1])  # different images, different embeddings


def test_open_clip_uses_the_models_long_context(backbones):
    backbone = backbones["open_clip"]()
    net, _, tokenizer = backbone._load()
    assert net.context_length == 128 and tokenizer("word " * 200).shape[1] == 128
    long_a, long_b = "a dog " * 30 + "on the grass", "a dog " * 30 + "in the snow"  # differ after token 77
    a, b = backbone.encode_text([long_a, long_b])
    assert not torch.allclose(a, b)


def test_stream_visual_matches_encode_visual(backbones, images):
    backbone = backbones["open_clip"](batch_size=2)
    streamed = dict(backbone.stream_visual(images))
    assert sorted(streamed) == list(range(len(images)))
    # batches of 2 here, of 5 in encode_visual: the sums run in another order (float noise only)
    assert torch.allclose(
        torch.stack([torch.from_numpy(streamed[i]) for i in range(5)]),
        backbone.encode_visual(images),
        atol=1e-6,
    )


def test_two_process_ddp_equals_one_process(backbones, images):
    """Lightning Fabric, 2 CPU processes (gloo): same embeddings, same order, as a single process."""
    single = backbones["open_clip"](batch_size=2).encode_visual(images)
    parallel = backbones["open_clip"](batch_size=2, devices=2, strategy="ddp_fork")
    rows = dict(parallel.stream_visual(images))
    assert torch.allclose(
        torch.stack([torch.from_numpy(rows[i]) for i in range(len(images))]), single, atol=1e-6
    )


def test_identity_changes_with_what_changes_embeddings(backbones):
    a = backbones["open_clip"]().identity()
    assert a == backbones["open_clip"](batch_size=3, devices=2).identity()  # batching and devices do not
    assert a != backbones["open_clip"](precision="bf16-mixed").identity()


def test_missing_model_is_one_clear_line(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    backbone = OpenClipBackbone(model="ViT-B-32", pretrained="openai", device="cpu", cache_dir=str(tmp_path))
    with pytest.raises(VisaError) as e:
        backbone.encode_text(["a dog"])
    message = str(e.value)
    assert "\n" not in message and "ViT-B-32" in message and "HF_HOME" in message
    dual = HFDualEncoder(model=str(tmp_path / "no-such-model"), device="cpu")
    with pytest.raises(VisaError, match="HF_HOME"):
        dual.encode_text(["a dog"])


def test_bad_settings_fail_at_construction():
    with pytest.raises(VisaError, match="precision"):
        OpenClipBackbone(model="ViT-B-32", precision="fp8")
    with pytest.raises(VisaError, match="strategy"):
        OpenClipBackbone(model="ViT-B-32", devices=2, strategy="ddp")


def test_videos_point_to_frame_pooling(backbones, tmp_path):
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"")
    with pytest.raises(VisaError, match="frame_pooled"):
        backbones["open_clip"]().encode_visual([Item("v", str(video), "video")])
