"""Visualized-BGE on a tiny random checkpoint in the publisher's key layout."""

from __future__ import annotations

import pytest
import torch
from helpers import tiny_models
from helpers import tiny_visualized_bge as tiny

from visa.backbones.visualized_bge import VisualizedBGEBackbone, map_published_keys  # noqa: E402
from visa.core.errors import VisaError  # noqa: E402
from visa.data import Item  # noqa: E402

TEXTS = ["a dog running on the grass", "two cats", "a red car on the street " * 40, "people at the beach"]


@pytest.fixture(scope="module", params=["bert", "xlmr"])
def model(request, tmp_path_factory):
    """(text model folder, weight file) for bge-base (bert) and bge-m3 (xlmr) architectures."""
    root = tmp_path_factory.mktemp(f"vbge_{request.param}")
    text_dir = tiny.bge_dir(root / "bge", request.param)
    return text_dir, tiny.published_checkpoint(root / "Visualized_tiny.pth", text_dir)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Item]:
    paths = tiny_models.write_images(tmp_path_factory.mktemp("vbge_imgs"), 4)
    return [Item(f"i{n}", str(p)) for n, p in enumerate(paths)]


def make(model, **kw) -> VisualizedBGEBackbone:
    text_dir, weights = model
    settings = {**tiny.VISION, **kw}
    return VisualizedBGEBackbone(text_model=str(text_dir), weights=str(weights), device="cpu", **settings)


def test_text_alone_is_the_plain_bge_model(model):
    from transformers import AutoModel, AutoTokenizer

    text_dir, _ = model
    bge, tok = AutoModel.from_pretrained(text_dir).eval(), AutoTokenizer.from_pretrained(text_dir)
    enc = tok(TEXTS, padding=True, truncation=True, max_length=64, return_tensors="pt")
    with torch.no_grad():
        plain = torch.nn.functional.normalize(bge(**enc).last_hidden_state[:, 0], dim=-1)
    ours = make(model, max_text_length=64).encode_text(TEXTS)
    assert torch.allclose(ours, plain, atol=1e-5)


def test_normalised_batch_invariant_and_distinct(model, images):
    one, many = make(model, batch_size=1), make(model)
    v1 = torch.cat([one.encode_visual([item]) for item in images])
    v4 = many.encode_visual(images)
    t1 = torch.cat([one.encode_text([t]) for t in TEXTS])
    t4 = many.encode_text(TEXTS)
    pil = [tiny_models.Image.open(i.path) for i in images]
    m1 = torch.cat([one.encode_image_text([img], [t]) for img, t in zip(pil, TEXTS)])
    m4 = many.encode_image_text(pil, TEXTS)
    for emb in (v4, t4, m4):
        assert emb.shape == (4, tiny.TEXT_HIDDEN)
        assert torch.allclose(emb.norm(dim=1), torch.ones(4), atol=1e-5)
    assert torch.allclose(v1, v4, atol=1e-5) and torch.allclose(t1, t4, atol=1e-5)
    assert torch.allclose(m1, m4, atol=1e-5)
    assert not torch.allclose(v4[0], v4[1], atol=1e-3)  # different images, different embeddings
    # image + text is neither the image alone nor the text alone
    assert (m4 - v4).norm(dim=1).min() > 1e-3 and (m4 - t4).norm(dim=1).min() > 1e-3


def test_image_alone_is_image_with_empty_text(model, images):
    backbone = make(model)
    pil = [tiny_models.Image.open(i.path) for i in images[:2]]
    assert torch.allclose(backbone.encode_visual(images[:2]), backbone.encode_image_text(pil, ["", ""]))


def test_every_published_key_is_mapped_or_known_unused(model):
    _, weights = model
    state = torch.load(weights, weights_only=True)
    parts = map_published_keys(state)
    assert "blocks.0.mlp.fc1_g.weight" in parts["vision"] and "blocks.1.attn.q_proj.bias" in parts["vision"]
    assert "encoder.layer.0.attention.self.query.weight" in parts["text"]
    assert not any("head" in k or k.startswith("norm.") or "rope" in k for k in parts["vision"])


def test_left_over_and_missing_keys_are_named(model, tmp_path):
    _, weights = model
    state = torch.load(weights, weights_only=True)
    state["model_visual.visual.blocks.0.attn.extra_scale"] = torch.ones(1)
    (tmp_path / "extra.pth").write_bytes(b"")
    torch.save(state, tmp_path / "extra.pth")
    with pytest.raises(VisaError, match="blocks.0.attn.extra_scale"):
        make((model[0], tmp_path / "extra.pth")).encode_text(["a dog"])
    state.pop("model_visual.visual.blocks.0.attn.extra_scale")
    state.pop("model_visual.visual.blocks.1.mlp.w3.weight")
    torch.save(state, tmp_path / "missing.pth")
    with pytest.raises(VisaError, match=r"missing blocks\.1\.mlp\.fc2\.weight"):
        make((model[0], tmp_path / "missing.pth")).encode_text(["a dog"])


def test_wrong_vision_settings_name_the_shape(model):
    with pytest.raises(VisaError, match="shape"):
        make(model, patch_size=4).encode_images([tiny_models.Image.new("RGB", (9, 9))])


def test_missing_weight_file_is_one_line_saying_where_to_get_it(tmp_path):
    weights = tmp_path / "Visualized_base_en_v1.5.pth"
    backbone = VisualizedBGEBackbone(text_model="BAAI/bge-base-en-v1.5", weights=str(weights), device="cpu")
    with pytest.raises(VisaError) as e:
        backbone.encode_text(["a dog"])
    message = str(e.value)
    assert "\n" not in message and "huggingface.co/BAAI/bge-visualized" in message
    assert "Visualized_base_en_v1.5.pth" in message


def test_identity_follows_what_changes_embeddings(model):
    a = make(model).identity()
    assert a == make(model, batch_size=3).identity()
    assert a != make(model, max_text_length=16).identity()


@pytest.mark.parametrize("name", ["visualized_bge", "visualized_bge_m3"])
def test_configs_match_the_class(name):
    from conftest import REPO
    from hydra import compose, initialize_config_dir

    from visa.config import check_part, register

    register()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[f"backbone={name}"])
    check_part(cfg.backbone, "backbone")
    assert cfg.backbone.weights.endswith(".pth") and "BAAI/" in cfg.backbone.text_model
