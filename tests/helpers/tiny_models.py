"""Tiny models with random weights, written to a folder in each real model's own format, so that tests (and
experiments/bench_models.py) run the same loading code, processors and chat templates as the real models,
offline. Nothing here is downloaded: configs come from the libraries' config classes, tokenizers are built
from a small word list."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

WORDS = (
    "a an the of in on at with and is are to it this that what how many there picture image video photo "
    "dog dogs cat cats man woman child people person car bus tree grass field snow water beach street red "
    "blue green white black small large two three running sitting standing playing holding riding walking "
    "answer question describe detail sentence uncertain yes no visible main subject objects colour colours "
    "color number place setting doing relate each other key phrases query questions"
).split()


def write_images(folder: Path, count: int, size: int = 48) -> list[Path]:
    """Random RGB images (PNG), different per index."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        pixels = rng.integers(0, 256, size=(size, size + 8 * (i % 3), 3), dtype=np.uint8)
        path = folder / f"img{i}.png"
        Image.fromarray(pixels).save(path)
        paths.append(path)
    return paths


def open_clip_dir(folder: Path, context_length: int = 77) -> Path:
    """A `local-dir:` open_clip model: open_clip_config.json + open_clip_pytorch_model.bin."""
    import open_clip

    model_cfg = {
        "embed_dim": 16,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
        "text_cfg": {
            "context_length": context_length,
            "vocab_size": 49408,
            "width": 32,
            "heads": 2,
            "layers": 1,
        },
    }
    torch.manual_seed(0)
    net = open_clip.CLIP(**model_cfg)
    folder.mkdir(parents=True, exist_ok=True)
    preprocess = {
        "mean": [0.5, 0.5, 0.5],
        "std": [0.5, 0.5, 0.5],
        "interpolation": "bicubic",
        "resize_mode": "shortest",
    }
    (folder / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": model_cfg, "preprocess_cfg": preprocess})
    )
    torch.save(net.state_dict(), folder / "open_clip_pytorch_model.bin")
    return folder


def word_tokenizer(
    specials: list[str] | None = None, chat_template: str | None = None, extra_words: tuple[str, ...] = ()
):
    """A fast tokenizer over WORDS (whitespace and punctuation split), with the given special tokens.
    `extra_words` join the vocabulary as they are: the split never produces those holding punctuation, but a
    model can emit them and they decode as written."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    base = ["<pad>", "<unk>", "<s>", "</s>"]
    words = sorted(set(WORDS) | set(".,?!:\"'-0123456789") | set(extra_words))
    vocab = {w: i for i, w in enumerate(base + words)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Whitespace(),
            pre_tokenizers.Punctuation(),
            pre_tokenizers.Digits(individual_digits=True),
        ]
    )
    return _as_transformers(tok, specials, chat_template)


def _as_transformers(tok, specials: list[str] | None, chat_template: str | None):
    """A `tokenizers` tokenizer as transformers' fast tokenizer, with the tiny models' special tokens."""
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        additional_special_tokens=specials or [],
    )
    if chat_template:
        fast.chat_template = chat_template
    return fast


def bpe_tokenizer(specials: list[str] | None = None, chat_template: str | None = None):
    """A byte-level BPE tokenizer (the GPT-2 / Qwen / SmolLM2 kind) trained here on WORDS in sentences: every
    string can be written with it, spaces and punctuation included, which a grammar-constrained model needs
    (the word-level tokenizer above cannot write a space)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    base = ["<pad>", "<unk>", "<s>", "</s>", *(specials or [])]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = [" ".join(WORDS[i : i + 7]) + " ?\n1. key phrases:\n- " for i in range(len(WORDS))]
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=base,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer)
    return _as_transformers(tok, specials, chat_template)


# A ChatML template like Qwen's, written for these tests; media become the model's placeholder tokens.
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif c['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% else %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CHAT_SPECIALS = [
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]


def _words_only(model, tokenizer, can_stop: bool = False) -> None:
    """A random model would mostly emit <unk> or special tokens, which decode to nothing: forbid them, so that
    replies are words and every reply runs to max_new_tokens (the same work per prompt). `can_stop`: the end
    of turn stays allowed (a grammar ends a reply with it)."""
    end = "<|im_end|>" if can_stop else None
    model.generation_config.suppress_tokens = [
        tokenizer.convert_tokens_to_ids(t) for t in tokenizer.all_special_tokens if t != end
    ]
    model.generation_config.eos_token_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    model.generation_config.pad_token_id = tokenizer.pad_token_id


def qwen2_text_dir(folder: Path, extra_words: tuple[str, ...] = (), bpe: bool = False) -> Path:
    """A tiny Qwen2 causal LM (the Qwen2.5-Instruct architecture) with a ChatML tokenizer: word-level, or
    with `bpe` a byte-level BPE one whose model may also end its reply (what structured generation needs)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    if bpe:
        tokenizer = bpe_tokenizer(CHAT_SPECIALS, CHATML)
    else:
        tokenizer = word_tokenizer(CHAT_SPECIALS, CHATML, extra_words)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
        bos_token_id=tokenizer.bos_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config)
    _words_only(model, tokenizer, can_stop=bpe)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def qwen2_vl_dir(folder: Path) -> Path:
    """A tiny Qwen2-VL (image and video) with its real processor classes and a ChatML chat template."""
    from transformers import (
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        Qwen2VLImageProcessor,
        Qwen2VLProcessor,
        Qwen2VLVideoProcessor,
    )

    tokenizer = word_tokenizer(CHAT_SPECIALS, CHATML)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in CHAT_SPECIALS}
    config = Qwen2VLConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 4096,
            "rope_scaling": {"type": "mrope", "mrope_section": [1, 1, 2]},
            "rope_theta": 10000.0,
            "pad_token_id": tokenizer.pad_token_id,
            "eos_token_id": ids["<|im_end|>"],
            "tie_word_embeddings": True,
        },
        vision_config={
            "depth": 1,
            "embed_dim": 32,
            "hidden_size": 32,
            "num_heads": 2,
            "mlp_ratio": 2,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "in_channels": 3,
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    model = Qwen2VLForConditionalGeneration(config)
    _words_only(model, tokenizer)
    model.save_pretrained(folder)
    pixels = {"shortest_edge": 56 * 56, "longest_edge": 112 * 112}
    processor = Qwen2VLProcessor(
        image_processor=Qwen2VLImageProcessor(size=pixels),
        video_processor=Qwen2VLVideoProcessor(size=pixels),
        tokenizer=tokenizer,
        chat_template=CHATML,
    )
    processor.save_pretrained(folder)
    return folder


def hf_dual_dir(folder: Path, family: str = "clip") -> Path:
    """A tiny transformers CLIP or SigLIP (AutoModel) with its image processor and a word-level tokenizer."""
    from transformers import (
        CLIPConfig,
        CLIPImageProcessor,
        CLIPModel,
        SiglipConfig,
        SiglipImageProcessor,
        SiglipModel,
    )

    tokenizer = word_tokenizer()
    text = {
        "vocab_size": len(tokenizer),
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "max_position_embeddings": 24,
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "bos_token_id": tokenizer.bos_token_id,
    }
    vision = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "image_size": 32,
        "patch_size": 8,
    }
    torch.manual_seed(0)
    if family == "clip":
        model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16))
        processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    else:
        model = SiglipModel(SiglipConfig(text_config=text, vision_config=vision))
        processor = SiglipImageProcessor(size={"height": 32, "width": 32})
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def cross_encoder_dir(folder: Path) -> Path:
    """A tiny XLM-RoBERTa sequence classifier (bge-reranker-v2-m3's architecture), one logit."""
    from transformers import XLMRobertaConfig, XLMRobertaForSequenceClassification

    tokenizer = word_tokenizer()
    config = XLMRobertaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=600,
        num_labels=1,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    XLMRobertaForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def qwen3_vl_dir(folder: Path) -> Path:
    """A tiny Qwen3-VL (Qwen3-VL-Reranker's architecture: Qwen3VLForConditionalGeneration with its real
    processor classes, 16-pixel patches) with a ChatML chat template and a word-level tokenizer."""
    from transformers import (
        Qwen2VLImageProcessor,
        Qwen3VLConfig,
        Qwen3VLForConditionalGeneration,
        Qwen3VLProcessor,
        Qwen3VLVideoProcessor,
    )

    tokenizer = word_tokenizer(CHAT_SPECIALS, CHATML)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in CHAT_SPECIALS}
    config = Qwen3VLConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": 8,
            "max_position_embeddings": 4096,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [1, 1, 2]},
            "pad_token_id": tokenizer.pad_token_id,
        },
        vision_config={
            "depth": 2,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 2,
            "patch_size": 16,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "out_hidden_size": 32,
            "num_position_embeddings": 64,
            "deepstack_visual_indexes": [1],
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    torch.manual_seed(0)
    model = Qwen3VLForConditionalGeneration(config)
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(folder)
    pixels = {"shortest_edge": 32 * 32 * 4, "longest_edge": 64 * 64 * 4}
    processor = Qwen3VLProcessor(
        image_processor=Qwen2VLImageProcessor(size=pixels, patch_size=16, merge_size=2),
        video_processor=Qwen3VLVideoProcessor(size=pixels, patch_size=16, merge_size=2),
        tokenizer=tokenizer,
        chat_template=CHATML,
    )
    processor.save_pretrained(folder)
    return folder


def blip2_itm_dir(folder: Path) -> Path:
    """A tiny BLIP-2 image-text matching model (Blip2ForImageTextRetrieval, Salesforce/blip2-itm-vit-g's
    class): tiny ViT, Q-Former with its ITM head, BLIP image processor and a word-level tokenizer."""
    from transformers import (
        Blip2Config,
        Blip2ForImageTextRetrieval,
        Blip2Processor,
        BlipImageProcessor,
    )

    tokenizer = word_tokenizer()
    config = Blip2Config(
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "image_size": 32,
            "patch_size": 8,
        },
        qformer_config={
            "vocab_size": len(tokenizer) + 1,  # and the processor's <image> token
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "encoder_hidden_size": 32,
            "cross_attention_frequency": 1,
            "max_position_embeddings": 64,
            "use_qformer_text_input": True,  # the text branch ITM runs, as in the real checkpoint
            "pad_token_id": tokenizer.pad_token_id,
        },
        text_config={
            "model_type": "opt",
            "vocab_size": len(tokenizer),
            "hidden_size": 32,
            "ffn_dim": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "word_embed_proj_dim": 32,
        },
        num_query_tokens=4,
        image_text_hidden_size=16,
    )
    torch.manual_seed(0)
    model = Blip2ForImageTextRetrieval(config)
    with torch.no_grad():  # at the default init, the pixels barely reach the tiny ViT's output
        model.vision_model.embeddings.patch_embedding.weight.normal_(0.0, 0.5)
        model.query_tokens.normal_(0.0, 1.0)
    model.save_pretrained(folder)
    image_processor = BlipImageProcessor(size={"height": 32, "width": 32})
    Blip2Processor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)
    return folder
