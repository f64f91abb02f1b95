"""InternVideo2 stage-2 (video-text dual encoder; the paper's video backbone is the 6B "InternVideo2-G").

How its public checkpoint loads: OpenGVLab publishes the stage-2 6B model on the Hugging Face hub as
`OpenGVLab/InternVideo2-Stage2_6B`, safetensors shards with the model code inside the repository
(`trust_remote_code`), loaded with `transformers.AutoModel.from_pretrained`. The loaded model exposes
`get_vid_feat(frames)` for a float tensor [batch, frames, 3, 224, 224] (RGB resized to 224x224, normalised
with the ImageNet mean and std; 4 frames for the "f4" checkpoints) and `get_txt_feat(text)` (its BERT
tokenizer, then the text projection); both return L2-normalised embeddings. Its code needs the packages listed
by the InternVideo2 multi_modality INSTALL.md (flash-attn and friends for the fused kernels); a GPU is needed
in practice. `model` may also be a local folder holding the same files (download once, then run offline).
The 1B stage-2 checkpoint (`InternVideo2-stage2_1b-224p-f4.pt`) is a plain state dict for the InternVideo
repository's own code and is not loaded here.

`clean_text: true` cleans every text before the text encoder the way InternVideo2's retrieval evaluation
does (its dataset utilities' `pre_text`): lower case, the punctuation , . ' ! ? " ( ) * # : ; ~ removed,
"-" and "/" turned into spaces, "<person>" into "person", runs of white space made one. Only the backbone
sees the cleaned text; the question LLM and the re-ranker read the caption as written. The paper's
InternVideo2 experiment cells turn it on; it is off by default (and then not in the identity, so the
caches of configs without it stay valid).
"""

from __future__ import annotations

import functools
import re

import torch
from PIL import Image

from visa.core.devices import resolve_device
from visa.core.errors import VisaError
from visa.data import Item
from visa.data.media import load_image
from visa.data.video import sample_uniform

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
_DROPPED = re.compile(r"[,.'!?\"()*#:;~]")


def clean_caption(text: str) -> str:
    """A caption as InternVideo2's evaluation gives it to the text encoder (see the module docstring)."""
    text = _DROPPED.sub("", text.lower())
    text = text.replace("-", " ").replace("/", " ").replace("<person>", "person")
    return " ".join(text.split())


class InternVideo2Backbone:
    def __init__(
        self,
        model: str = "OpenGVLab/InternVideo2-Stage2_6B",
        num_frames: int = 4,
        image_size: int = 224,
        dtype: str = "bfloat16",
        device: str = "auto",
        batch_size: int = 8,
        revision: str | None = None,
        clean_text: bool = False,
    ):
        self.model = model
        self.num_frames = num_frames  # the f4 checkpoints were trained and evaluated on 4 frames
        self.image_size = image_size
        self.dtype = dtype
        self.device = device
        self.batch_size = batch_size
        self.revision = revision
        self.clean_text = clean_text  # InternVideo2's pre_text on every text before the encoder

    def identity(self) -> dict:
        ident = {
            "backbone": "internvideo2",
            "model": self.model,
            "revision": self.revision,
            "num_frames": self.num_frames,
            "image_size": self.image_size,
            "dtype": self.dtype,
        }
        if self.clean_text:  # only when on: configs without it keep their cache keys
            ident["clean_text"] = "pre_text"
        return ident

    @functools.cached_property
    def _net(self):
        from transformers import AutoModel

        dtype = getattr(torch, self.dtype, None)
        if not isinstance(dtype, torch.dtype):
            raise VisaError(
                f"backbone.dtype={self.dtype!r} is not a torch dtype (float32, float16, bfloat16)"
            )
        try:
            net = AutoModel.from_pretrained(self.model, trust_remote_code=True, revision=self.revision)
        except (OSError, ValueError, ImportError) as e:
            raise VisaError(
                f"cannot load InternVideo2 from backbone.model={self.model!r}: {str(e).splitlines()[0]}; "
                "give a hub id or a local folder with its files, and install its code's requirements"
            ) from e
        return net.to(resolve_device(self.device), dtype).eval()

    def _tensor(self, frames: list[Image.Image]) -> torch.Tensor:
        """[frames, 3, size, size], resized (not cropped) and normalised as the model was trained."""
        size = (self.image_size, self.image_size)
        pixels = torch.stack(
            [
                torch.frombuffer(bytearray(f.convert("RGB").resize(size).tobytes()), dtype=torch.uint8)
                for f in frames
            ]
        )
        pixels = pixels.view(len(frames), size[1], size[0], 3).permute(0, 3, 1, 2).float() / 255.0
        return (pixels - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)

    def _frames(self, item: Item) -> list[Image.Image]:
        if item.kind == "video":
            return sample_uniform(item.path, self.num_frames)
        return [
            load_image(item.path)
        ]  # an image is a one-frame clip, as in InternVideo2's image-text training

    @torch.no_grad()
    def encode_visual(self, items: list[Item]) -> torch.Tensor:
        net = self._net
        param = next(net.parameters())
        out = []
        for item in items:  # one clip a call: images and videos have different frame counts
            clip = self._tensor(self._frames(item)).unsqueeze(0).to(param.device, param.dtype)
            out.append(net.get_vid_feat(clip).reshape(1, -1).float().cpu())
        return torch.nn.functional.normalize(torch.cat(out), dim=-1)

    @torch.no_grad()
    def encode_text(self, texts: list[str]) -> torch.Tensor:
        net = self._net
        if self.clean_text:
            texts = [clean_caption(t) for t in texts]
        feats = [net.get_txt_feat(t).reshape(1, -1).float().cpu() for t in texts]
        return torch.nn.functional.normalize(torch.cat(feats), dim=-1)
