"""The demo describer: a general description of an image written from an ImageNet classifier's top classes.

A stand-in for a captioning MLLM (none ships in a PyPI package); it ignores the prompt text.
"""

from __future__ import annotations

from visa.backbones.imagenet import class_probabilities, classnames
from visa.errors import VisaError
from visa.prompts import Prompt


class LabelDescriber:
    uses_context = False

    def __init__(self, top_classes: int = 3, batch_size: int = 32, device: str = "cpu"):
        self.top_classes = top_classes
        self.batch_size = batch_size
        self.device = device

    def identity(self) -> dict:
        return {"generator": "label-describer", "classifier": "efficientnet-lite0", "top_classes": self.top_classes}

    def generate(self, prompts: list[Prompt]) -> list[str]:
        if any(p.media_kind != "image" or len(p.media) != 1 for p in prompts):
            raise VisaError("describer=demo describes single images only")
        probs = class_probabilities([p.media[0] for p in prompts], self.device)
        names = classnames()
        texts = []
        for row in probs:
            top = row.topk(self.top_classes)
            labels = [names[i] for i in top.indices.tolist()]
            likely = f"A photo that most likely shows a {labels[0]} ({top.values[0].item():.0%} sure)"
            texts.append(f"{likely}; it could also show a {' or a '.join(labels[1:])}." if labels[1:] else likely + ".")
        return texts
