"""The demo describer: a general description of an image written from an ImageNet classifier's top classes.

A stand-in for a captioning MLLM (none ships in a PyPI package); it ignores the prompt text.
"""

from __future__ import annotations

from visa.backbones.imagenet import classnames, media_probabilities
from visa.core.errors import VisaError
from visa.core.prompt import Prompt


class LabelDescriber:
    uses_context = False

    def __init__(self, top_classes: int = 3, batch_size: int = 32, device: str = "cpu", num_frames: int = 8):
        self.top_classes = top_classes
        self.num_frames = num_frames  # a video is described from its mean probabilities over this many frames
        self.batch_size = batch_size
        self.device = device

    def identity(self) -> dict:
        return {
            "generator": "label-describer",
            "classifier": "efficientnet-lite0",
            "top_classes": self.top_classes,
            "video_frames": self.num_frames,
        }

    def generate(self, prompts: list[Prompt]) -> list[str]:
        if any(p.media_kind not in ("image", "video") or len(p.media) != 1 for p in prompts):
            raise VisaError("describer=demo describes one image or one video per prompt")
        media = [(p.media[0], p.media_kind or "image") for p in prompts]
        probs = media_probabilities(media, self.num_frames, self.device)
        names = classnames()
        texts = []
        for row, prompt in zip(probs, prompts, strict=True):
            top = row.topk(self.top_classes)
            labels = [names[i] for i in top.indices.tolist()]
            kind = "video" if prompt.media_kind == "video" else "photo"
            likely = f"A {kind} that most likely shows a {labels[0]} ({top.values[0].item():.0%} sure)"
            others = " or a ".join(labels[1:])
            texts.append(f"{likely}; it could also show a {others}." if others else likely + ".")
        return texts
