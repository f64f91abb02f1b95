"""backbone=eva_clip_18b: a CLIP whose hub repository carries its own model code (BAAI/EVA-CLIP-18B's layout),
driven on a tiny stand-in written in that layout: config.json with an auto_map to modelling code in the
folder, a model exposing encode_image / encode_text, the CLIP tokenizer files and no image processor."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import rehearsal_hub, tiny_models
from hydra import compose, initialize_config_dir

from visa.backbones.remote_clip import RemoteCodeClip  # noqa: E402
from visa.config import check_part, register  # noqa: E402
from visa.core.errors import VisaError  # noqa: E402
from visa.data import Item  # noqa: E402

CONF = str(Path(__file__).resolve().parents[1] / "conf")


@pytest.fixture(scope="module")
def standin(tmp_path_factory) -> Path:
    folder = tiny_models.hf_dual_dir(tmp_path_factory.mktemp("eva") / "EVA-CLIP-18B", "clip")
    (folder / "preprocessor_config.json").unlink()  # BAAI's repository has none
    rehearsal_hub.add_eva_clip_code(
        folder
    )  # the modelling code in the folder, as the hub repository holds it
    return folder


def test_encodes_through_the_models_own_methods_and_the_clip_processor(standin, tmp_path):
    from transformers import CLIPImageProcessor, CLIPModel

    paths = tiny_models.write_images(tmp_path / "imgs", 3)
    items = [Item(f"i{n}", str(p)) for n, p in enumerate(paths)]
    backbone = RemoteCodeClip(model=str(standin), image_size=32, precision="32-true", device="cpu")
    images = backbone.encode_visual(items)
    texts = backbone.encode_text(
        ["a dog on the grass", "two cats " * 40]
    )  # the second is cut at the model's 24 positions
    assert images.shape == (3, 16) and texts.shape == (2, 16)
    assert torch.allclose(images.norm(dim=1), torch.ones(3), atol=1e-5)

    # the same numbers as the CLIP weights with the CLIP image processor at 32 px, by hand
    from PIL import Image

    reference = CLIPModel.from_pretrained(standin).eval()
    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    pixels = processor(images=[Image.open(p).convert("RGB") for p in paths], return_tensors="pt")[
        "pixel_values"
    ]
    with torch.no_grad():
        out = reference.get_image_features(pixel_values=pixels)
    expected = torch.nn.functional.normalize(
        out if isinstance(out, torch.Tensor) else out.pooler_output, dim=-1
    )
    assert torch.allclose(images, expected, atol=1e-5)
    assert backbone.identity()["backbone"] == "remote_clip"


def test_refuses_without_trust_remote_code(standin):
    with pytest.raises(VisaError, match="trust_remote_code=true"):
        RemoteCodeClip(model=str(standin), trust_remote_code=False, device="cpu").encode_text(["a dog"])


@pytest.mark.parametrize("cell", ["coco_evaclip", "flickr30k_evaclip"])
def test_evaclip_cells_use_eva_clip_18b(cell, tmp_path):
    register()
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("config", overrides=[f"experiment={cell}", f"data_dir={tmp_path}"])
    assert cfg.backbone._target_ == "visa.backbones.remote_clip.RemoteCodeClip"
    assert cfg.backbone.model == "BAAI/EVA-CLIP-18B" and cfg.backbone.trust_remote_code
    check_part(cfg.backbone, "backbone")
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        option = compose("config", overrides=[f"experiment={cell}", "backbone=eva_clip"])
    assert option.backbone.model == "EVA02-E-14-plus"
