"""A tiny Visualized-BGE: a BGE text model folder (config, tokenizer, weights) and a weight file in the
layout the publisher's `Visualized_BGE.state_dict()` has, written from its module names (not from this
project's key map), with random weights."""

from __future__ import annotations

from pathlib import Path

import torch

from . import tiny_models

# the tiny tower: 32x32 images, 8x8 patches (16 image tokens), width 48, 2 layers of 2 heads
VISION = {
    "image_size": 32,
    "patch_size": 8,
    "vision_width": 48,
    "vision_depth": 2,
    "vision_heads": 2,
    "vision_mlp_ratio": 8 / 3,
    "rope_grid": 16,
}
TEXT_HIDDEN = 32


def bge_dir(folder: Path, family: str = "bert") -> Path:
    """A tiny BGE (bert: bge-base-en-v1.5's architecture; xlmr: bge-m3's) saved with save_pretrained."""
    from transformers import BertConfig, BertModel, BertTokenizer, XLMRobertaConfig, XLMRobertaModel

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokenizer = BertTokenizer(vocab={w: i for i, w in enumerate(specials + sorted(set(tiny_models.WORDS)))})
    common = dict(
        vocab_size=len(tokenizer),
        hidden_size=TEXT_HIDDEN,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=128,
        pad_token_id=0,
        initializer_range=0.3,  # larger than BERT's 0.02: embeddings that differ visibly between inputs
    )
    torch.manual_seed(1)
    if family == "bert":
        model = BertModel(BertConfig(**common))
    else:
        model = XLMRobertaModel(XLMRobertaConfig(**common))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _published_vision_state(width: int, depth: int, heads: int, patch: int, image: int) -> dict:
    """EVA02-CLIP vision tower keys as the publisher's EVAVisionTransformer names them (subln, SwiGLU,
    rotary, q/v biases), under `model_visual.visual.`; shapes from the tiny settings."""
    hidden = int(width * VISION["vision_mlp_ratio"])
    grid = image // patch
    head_dim = width // heads
    shapes = {
        "cls_token": (1, 1, width),
        "pos_embed": (1, grid * grid + 1, width),
        "patch_embed.proj.weight": (width, 3, patch, patch),
        "patch_embed.proj.bias": (width,),
        "rope.freqs_cos": (grid * grid, head_dim),
        "rope.freqs_sin": (grid * grid, head_dim),
        "norm.weight": (width,),
        "norm.bias": (width,),
        "head.weight": (16, width),  # the CLIP head (unused by Visualized-BGE)
        "head.bias": (16,),
    }
    for i in range(depth):
        b = f"blocks.{i}."
        shapes.update(
            {
                b + "norm1.weight": (width,),
                b + "norm1.bias": (width,),
                b + "attn.q_bias": (width,),
                b + "attn.v_bias": (width,),
                b + "attn.q_proj.weight": (width, width),
                b + "attn.k_proj.weight": (width, width),
                b + "attn.v_proj.weight": (width, width),
                b + "attn.inner_attn_ln.weight": (width,),
                b + "attn.inner_attn_ln.bias": (width,),
                b + "attn.proj.weight": (width, width),
                b + "attn.proj.bias": (width,),
                b + "attn.rope.freqs_cos": (grid * grid, head_dim),
                b + "attn.rope.freqs_sin": (grid * grid, head_dim),
                b + "norm2.weight": (width,),
                b + "norm2.bias": (width,),
                b + "mlp.w1.weight": (hidden, width),
                b + "mlp.w1.bias": (hidden,),
                b + "mlp.w2.weight": (hidden, width),
                b + "mlp.w2.bias": (hidden,),
                b + "mlp.ffn_ln.weight": (hidden,),
                b + "mlp.ffn_ln.bias": (hidden,),
                b + "mlp.w3.weight": (width, hidden),
                b + "mlp.w3.bias": (width,),
            }
        )
    gen = torch.Generator().manual_seed(2)
    state = {}
    for key, shape in shapes.items():
        value = torch.randn(shape, generator=gen) * 0.2
        if key.endswith(("norm1.weight", "norm2.weight", "ln.weight")):
            value = 1.0 + value  # LayerNorm gains near one, as trained ones are
        state["model_visual.visual." + key] = value
    return state


def published_checkpoint(path: Path, text_dir: Path) -> Path:
    """Visualized_*.pth for the tiny model: BGE weights from `text_dir`, random tower and projection."""
    from transformers import AutoModel

    text = AutoModel.from_pretrained(text_dir)
    state = {}
    for key, value in text.state_dict().items():
        part, _, rest = key.partition(".")
        state[f"bge_{part}.{rest}"] = value.clone()  # embeddings/encoder/pooler -> bge_embeddings/...
    state.update(
        _published_vision_state(
            VISION["vision_width"],
            VISION["vision_depth"],
            VISION["vision_heads"],
            VISION["patch_size"],
            VISION["image_size"],
        )
    )
    gen = torch.Generator().manual_seed(3)
    state["model_visual.logit_scale"] = torch.tensor(4.6)
    state["visual_proj.weight"] = torch.randn(TEXT_HIDDEN, VISION["vision_width"], generator=gen) * 0.2
    state["visual_proj.bias"] = torch.zeros(TEXT_HIDDEN)
    torch.save(state, path)
    return path
