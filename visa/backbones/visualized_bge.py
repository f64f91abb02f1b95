"""Visualized-BGE (VISTA, arXiv 2406.04292; weights at https://huggingface.co/BAAI/bge-visualized): a BGE
text encoder that also reads images, written natively from the publisher's description of the model.

How the publisher's model works (FlagEmbedding, research/visual_bge), and how it is rebuilt here:
- The text encoder is a BGE model (BAAI/bge-base-en-v1.5, a BERT; or BAAI/bge-m3, an XLM-RoBERTa). Its
  architecture and tokenizer come from the hub id (transformers); its weights come from the .pth file,
  like everything else.
- The image tower is an EVA02-CLIP vision transformer (B/16 for bge-base, L/14 for bge-m3): rotary position
  embeddings, SwiGLU MLP with an inner LayerNorm, LayerNorm inside attention. It is built with timm's `Eva`,
  the same architecture under timm's module names; the key map below renames the publisher's.
  The image tokens are the last block's output *without* the tower's final norm and head; the tower's
  CLS token is dropped; a linear `visual_proj` maps the patch tokens into the text embedding space.
- Image (+ text): the sequence fed to the BGE encoder is [text CLS, image tokens, text tokens after CLS].
  The image tokens get BGE position embeddings 1..L and the embedding LayerNorm (no token-type embedding);
  the text tokens get positions 0 (CLS) and L+1, L+2, ... An image alone is an image with the empty text
  ("[CLS][SEP]"). Text alone is the plain BGE forward pass.
- The embedding is the final hidden state of the first token (CLS pooling), L2-normalised.
- Image preprocessing: resize the shorter side to 224 (bicubic), centre crop 224, RGB, OpenAI CLIP mean/std.

The weight file is a plain state dict: `bge_embeddings.*`, `bge_encoder.*`, `bge_pooler.*` (the BGE model's
`embeddings`/`encoder`/`pooler`), `model_visual.visual.*` (the EVA tower), `visual_proj.*`, plus entries the
model does not use (the tower's final norm and head, CLIP's logit scale, rotary tables). It is read with
`torch.load(weights_only=True)`; every key must be mapped or known-unused, and every weight of the model
must be filled, else the error names the keys.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from PIL import Image

from visa.backbones.parallel import FabricEncoding, autocast, check_precision, weight_dtype
from visa.core.errors import VisaError
from visa.core.loading import load_once, oom_hint
from visa.data import Item
from visa.data.media import load_image

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
WEIGHTS_PAGE = "https://huggingface.co/BAAI/bge-visualized"

# Checkpoint prefix -> (part of the model, prefix inside that part).
PART_PREFIXES = (
    ("bge_embeddings.", "text", "embeddings."),
    ("bge_encoder.", "text", "encoder."),
    ("bge_pooler.", "text", "pooler."),
    ("model_visual.visual.", "vision", ""),
    ("visual_proj.", "proj", ""),
)
# Renames inside the EVA tower: the publisher's module names -> timm's Eva names.
VISION_RENAMES = (
    (".attn.q_bias", ".attn.q_proj.bias"),
    (".attn.v_bias", ".attn.v_proj.bias"),
    (".attn.inner_attn_ln.", ".attn.norm."),
    (".mlp.w1.", ".mlp.fc1_g."),
    (".mlp.w2.", ".mlp.fc1_x."),
    (".mlp.w3.", ".mlp.fc2."),
    (".mlp.ffn_ln.", ".mlp.norm."),
)
# Entries of the published file that the embedding does not use: the tower's final norm and CLIP head (the
# image tokens are taken before them), CLIP's logit scale, the rotary tables (recomputed from the shape),
# and buffers older transformers versions saved.
UNUSED = re.compile(
    r"^(model_visual\.logit_scale"
    r"|model_visual\.visual\.(norm|head)\.(weight|bias)"
    r"|model_visual\.visual\.(blocks\.\d+\.attn\.)?rope\.freqs_(cos|sin)"
    r"|bge_embeddings\.(position_ids|token_type_ids))$"
)


def map_published_keys(state: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """The published state dict split into {"text", "vision", "proj"} state dicts under this module's names;
    a key that is neither mapped nor known-unused is an error naming it."""
    parts: dict[str, dict[str, torch.Tensor]] = {"text": {}, "vision": {}, "proj": {}}
    unknown = []
    for key, value in state.items():
        if UNUSED.match(key):
            continue
        for prefix, part, target in PART_PREFIXES:
            if key.startswith(prefix):
                name = target + key[len(prefix) :]
                if part == "vision":
                    for old, new in VISION_RENAMES:
                        name = name.replace(old, new)
                parts[part][name] = value
                break
        else:
            unknown.append(key)
    if unknown:
        raise VisaError(
            f"{len(unknown)} key(s) of the weight file are not part of Visualized-BGE: "
            f"{', '.join(unknown[:8])}; is it a Visualized_*.pth from {WEIGHTS_PAGE}?"
        )
    return parts


def load_part(module: torch.nn.Module, state: dict[str, torch.Tensor], part: str, source: str) -> None:
    """Fill `module` from `state` exactly: a missing or left-over key, or a wrong shape, is an error."""
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    extra = [k for k in state if k not in expected]
    if missing or extra:
        detail = []
        if missing:
            detail.append(f"missing {', '.join(missing[:6])}" + (" ..." if len(missing) > 6 else ""))
        if extra:
            detail.append(f"left over {', '.join(extra[:6])}" + (" ..." if len(extra) > 6 else ""))
        raise VisaError(
            f"{source}: the {part} weights do not fit the configured model ({'; '.join(detail)}); "
            "check backbone.text_model and the vision settings against the weight file"
        )
    for key, value in state.items():
        if value.shape != expected[key].shape:
            raise VisaError(
                f"{source}: {part} weight {key} has shape {tuple(value.shape)}, the configured model "
                f"{tuple(expected[key].shape)}; check backbone.text_model and the vision settings"
            )
    module.load_state_dict(state, strict=True)


def image_transform(image_size: int):
    """The publisher's evaluation preprocessing (EVA-CLIP's): shorter side to `image_size` (bicubic), centre
    crop, RGB, to tensor, OpenAI CLIP mean/std."""
    from torchvision import transforms

    return transforms.Compose(
        [
            transforms.Resize(image_size, interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.CenterCrop(image_size),
            transforms.Lambda(lambda img: img.convert("RGB")),
            transforms.ToTensor(),
            transforms.Normalize(OPENAI_CLIP_MEAN, OPENAI_CLIP_STD),
        ]
    )


class VisualizedBGENet(torch.nn.Module):
    """The model: BGE (transformers), EVA tower (timm), and the projection between them."""

    def __init__(
        self,
        text_config,
        image_size: int,
        patch_size: int,
        width: int,
        depth: int,
        heads: int,
        mlp_ratio: float,
        rope_grid: int,
    ):
        super().__init__()
        from timm.models.eva import Eva
        from transformers import AutoModel

        self.text = AutoModel.from_config(text_config)  # BertModel / XLMRobertaModel, pooler included
        self.vision = Eva(
            img_size=image_size,
            patch_size=patch_size,
            embed_dim=width,
            depth=depth,
            num_heads=heads,
            mlp_ratio=mlp_ratio,
            qkv_fused=False,
            swiglu_mlp=True,
            scale_mlp=True,
            scale_attn_inner=True,
            use_rot_pos_emb=True,
            ref_feat_shape=(rope_grid, rope_grid),
            num_classes=0,
            global_pool="token",
            use_fc_norm=False,
            use_post_transformer_norm=False,  # image tokens are taken before the final norm
        )
        self.proj = torch.nn.Linear(width, text_config.hidden_size)

    @property
    def num_image_tokens(self) -> int:
        grid = self.vision.patch_embed.grid_size
        return grid[0] * grid[1]

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.text(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return torch.nn.functional.normalize(hidden[:, 0].float(), dim=-1)

    def encode_image_text(
        self, pixels: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        from transformers.masking_utils import create_bidirectional_mask

        embeddings = self.text.embeddings
        tokens = self.vision.forward_features(pixels)[:, 1:]  # the tower's CLS token is not used
        tokens = self.proj(tokens)
        n_img = tokens.shape[1]
        device = tokens.device
        img_positions = torch.arange(1, 1 + n_img, device=device)
        tokens = embeddings.LayerNorm(tokens + embeddings.position_embeddings(img_positions))
        n_text = input_ids.shape[1]
        cls_position = torch.zeros(1, dtype=torch.long, device=device)
        text_positions = torch.cat([cls_position, torch.arange(n_img + 1, n_img + n_text, device=device)])
        text = embeddings(
            input_ids=input_ids,
            position_ids=text_positions.unsqueeze(0).expand(input_ids.shape[0], -1),
            token_type_ids=torch.zeros_like(input_ids),
        )
        sequence = torch.cat([text[:, :1], tokens.to(text.dtype), text[:, 1:]], dim=1)
        image_mask = torch.ones_like(attention_mask[:, :1]).expand(-1, n_img)
        mask = torch.cat([attention_mask[:, :1], image_mask, attention_mask[:, 1:]], dim=1)
        encoder_mask = create_bidirectional_mask(
            config=self.text.config, inputs_embeds=sequence, attention_mask=mask
        )
        hidden = self.text.encoder(sequence, attention_mask=encoder_mask).last_hidden_state
        return torch.nn.functional.normalize(hidden[:, 0].float(), dim=-1)


class VisualizedBGEBackbone(FabricEncoding):
    """backbone=visualized_bge / visualized_bge_m3. Encodes text, images, and image + text."""

    # What this backbone can embed (see visa.data.modalities): queries and gallery items may be text,
    # media, or media with text.
    modalities = frozenset({"text", "image", "image+text"})

    def __init__(
        self,
        text_model: str,
        weights: str,
        image_size: int = 224,
        patch_size: int = 16,
        vision_width: int = 768,
        vision_depth: int = 12,
        vision_heads: int = 12,
        vision_mlp_ratio: float = 8 / 3,
        rope_grid: int = 16,
        max_text_length: int = 512,
        precision: str = "32-true",
        device: str = "auto",
        batch_size: int = 32,
        devices: int = 1,
        strategy: str = "ddp_spawn",
    ):
        check_precision(precision, "backbone")
        self.text_model, self.weights = text_model, weights
        self.image_size, self.patch_size = image_size, patch_size
        self.vision_width, self.vision_depth, self.vision_heads = vision_width, vision_depth, vision_heads
        self.vision_mlp_ratio, self.rope_grid = vision_mlp_ratio, rope_grid
        self.max_text_length = max_text_length
        self.precision, self.device, self.batch_size = precision, device, batch_size
        self.devices, self.strategy = devices, strategy
        self.check_parallel("backbone")

    def identity(self) -> dict:
        return {
            "backbone": "visualized_bge",
            "text_model": Path(self.text_model).name if Path(self.text_model).exists() else self.text_model,
            "weights": Path(self.weights).name,
            "vision": [
                self.image_size,
                self.patch_size,
                self.vision_width,
                self.vision_depth,
                self.vision_heads,
                self.vision_mlp_ratio,
                self.rope_grid,
            ],
            "max_text_length": self.max_text_length,
            "precision": self.precision,
        }

    def _weights_path(self) -> Path:
        """The weight file: a local path, or `hf-hub:<org>/<repo>/<file>` from the Hugging Face cache."""
        if self.weights.startswith("hf-hub:"):
            repo, _, filename = self.weights.removeprefix("hf-hub:").rpartition("/")
            try:
                from huggingface_hub import hf_hub_download

                return Path(hf_hub_download(repo, filename))
            except Exception as e:  # noqa: BLE001 - offline, missing file, no access: all say the same
                raise VisaError(
                    f"cannot get backbone.weights={self.weights} ({type(e).__name__}); download "
                    f"{filename} from {WEIGHTS_PAGE} and set backbone.weights=/path/to/{filename}"
                ) from e
        path = Path(self.weights).expanduser()
        if not path.is_file():
            name = path.name if path.suffix == ".pth" else "Visualized_base_en_v1.5.pth or Visualized_m3.pth"
            raise VisaError(
                f"backbone.weights={self.weights}: file not found; download {name} from {WEIGHTS_PAGE} "
                "and set backbone.weights to its path"
            )
        return path

    @load_once()
    def _build(self, device: torch.device):
        """(net, tokenizer, preprocess) on `device`."""
        path = self._weights_path()  # first: a missing file is reported before anything loads
        from transformers import AutoConfig, AutoTokenizer

        try:
            config = AutoConfig.from_pretrained(self.text_model)
            tokenizer = AutoTokenizer.from_pretrained(self.text_model)
        except (OSError, ValueError) as e:
            raise VisaError(
                f"cannot load the text model backbone.text_model={self.text_model!r}: "
                f"{str(e).splitlines()[0][:200]}; give its hub id (with the Hugging Face cache filled on a "
                "connected machine) or a local folder with its config and tokenizer"
            ) from e
        net = VisualizedBGENet(
            config,
            self.image_size,
            self.patch_size,
            self.vision_width,
            self.vision_depth,
            self.vision_heads,
            self.vision_mlp_ratio,
            self.rope_grid,
        )
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - a damaged or foreign file: one line naming it
            raise VisaError(f"cannot read the weight file {path}: {str(e).splitlines()[0][:200]}") from e
        if not isinstance(state, dict):
            raise VisaError(f"{path} is not a state dict; expected a Visualized_*.pth from {WEIGHTS_PAGE}")
        parts = map_published_keys(state)
        load_part(net.text, parts["text"], "text encoder", str(path))
        load_part(net.vision, parts["vision"], "vision tower", str(path))
        load_part(net.proj, parts["proj"], "visual_proj", str(path))
        net = net.to(device=device, dtype=weight_dtype(self.precision)).eval()
        return (net, tokenizer, image_transform(self.image_size))

    def _tokenize(self, texts: list[str], max_length: int, device: torch.device):
        tokenizer = self._load()[1]
        enc = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        return enc["input_ids"].to(device), enc["attention_mask"].to(device)

    def _run(self, fn, *args) -> torch.Tensor:
        net = self._load()[0]
        device = next(net.parameters()).device
        try:
            with torch.no_grad(), autocast(self.precision, device):
                return fn(*args).float().cpu()
        except torch.OutOfMemoryError as e:
            raise oom_hint(e, "Visualized-BGE", "backbone.batch_size") from e

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        net = self._load()[0]
        device = next(net.parameters()).device
        limit = min(self.max_text_length, net.text.config.max_position_embeddings)
        if net.text.config.model_type != "bert":  # RoBERTa-style positions start after the padding index
            limit = min(limit, net.text.config.max_position_embeddings - net.text.config.pad_token_id - 1)
        return self._run(net.encode_text, *self._tokenize(texts, limit, device))

    def encode_image_text(self, images: list[Image.Image], texts: list[str]) -> torch.Tensor:
        """One embedding per (image, text) pair; the text may be empty (the image alone)."""
        if len(images) != len(texts):
            raise ValueError(f"{len(images)} images but {len(texts)} texts")
        net, _, preprocess = self._load()
        param = next(net.parameters())
        pixels = torch.stack([preprocess(img) for img in images]).to(param.device, param.dtype)
        # the text's positions follow the image's: together they must fit the position table
        limit = min(self.max_text_length, net.text.config.max_position_embeddings - net.num_image_tokens)
        return self._run(net.encode_image_text, pixels, *self._tokenize(texts, limit, param.device))

    def encode_images(self, images: list[Image.Image]) -> torch.Tensor:
        return self.encode_image_text(images, [""] * len(images))

    def encode_visual(self, items: list[Item]) -> torch.Tensor:
        """Images, each with its text when it carries one (a composed query, a captioned item)."""
        for item in items:
            if item.kind != "image":
                raise VisaError(f"backbone=visualized_bge encodes images; item {item.id!r} is a {item.kind}")
        images = [load_image(item.path) for item in items]
        return self.encode_image_text(images, [item.text or "" for item in items])
