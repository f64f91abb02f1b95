"""A Hugging Face hub cache (`$HF_HOME/hub`) holding a tiny random-weight checkpoint under the real id of
every model the paper's experiment cells name, each in its published layout, and tiny copies of every
paper dataset in its published format: what `pytest -m rehearsal` runs the 12 cells on.

Where the model's own code cannot run here (InternVideo2's and EVA-CLIP-18B's hub code needs flash-attn
and a GPU; LoTLIP ships a fork of open_clip), the repository holds a stand-in with the same files: a
config.json whose auto_map names modelling code in the repository, or an open_clip_config.json, exposing
the methods our adapters call. Everything else is the library's own class built from a tiny config."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from helpers import tiny_models
from helpers.videos import make_video

COMMIT = "0123456789abcdef0123456789abcdef01234567"  # any 40-hex name; refs/main points at it
BGE_FIXTURE = Path(__file__).parents[1] / "fixtures" / "bge_lightweight" / "checkpoint"  # published layout


def hub_repo(hf_home: Path, repo_id: str) -> Path:
    """The snapshot folder of `repo_id` in the hub cache layout that `HF_HUB_OFFLINE=1` resolves."""
    repo = hf_home / "hub" / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(COMMIT)
    snapshot = repo / "snapshots" / COMMIT
    snapshot.mkdir(parents=True, exist_ok=True)
    return snapshot


# -- backbones --------------------------------------------------------------------------------------------


def siglip_open_clip(folder: Path, repo_id: str) -> None:
    """An `hf-hub:` open_clip SigLIP repository: open_clip_config.json naming the repository's own HF
    tokenizer, the weights, and the tokenizer files (timm/ViT-SO400M-14-SigLIP-384's layout, tiny)."""
    import open_clip
    from safetensors.torch import save_file

    tokenizer = tiny_models.word_tokenizer()
    tokenizer.save_pretrained(folder)
    # timm's own config.json, as in the real repository (the tokenizer lookup reads it)
    timm_cfg = {"architecture": "vit_so400m_patch14_siglip_384", "num_classes": 0}
    (folder / "config.json").write_text(json.dumps(timm_cfg))
    model_cfg = {
        "embed_dim": 16,
        "init_logit_bias": -10,
        "custom_text": True,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
        "text_cfg": {
            "context_length": 64,
            "vocab_size": len(tokenizer),
            "hf_tokenizer_name": repo_id,
            "tokenizer_kwargs": {"clean": "canonicalize"},
            "width": 32,
            "heads": 2,
            "layers": 1,
            "no_causal_mask": True,
            "proj_bias": True,
            "pool_type": "last",
            "norm_kwargs": {"eps": 1e-6},
        },
    }
    torch.manual_seed(0)
    net = open_clip.CustomTextCLIP(**{k: v for k, v in model_cfg.items() if k != "custom_text"})
    preprocess = {"mean": [0.5] * 3, "std": [0.5] * 3, "interpolation": "bicubic", "resize_mode": "squash"}
    (folder / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": model_cfg, "preprocess_cfg": preprocess})
    )
    save_file(
        {k: v.contiguous() for k, v in net.state_dict().items()}, folder / "open_clip_model.safetensors"
    )


_EVA_CONFIG_CODE = '''
from transformers import CLIPConfig


class StandInEvaClipConfig(CLIPConfig):
    """Stand-in for EVA-CLIP-18B's EvaCLIPConfig (its code needs a GPU and xformers)."""

    model_type = "clip"
'''
_EVA_MODEL_CODE = '''
import torch
from transformers import CLIPModel

from .configuration_standin import StandInEvaClipConfig


def _tensor(out):
    return out if isinstance(out, torch.Tensor) else out.pooler_output


class StandInEvaClip(CLIPModel):
    """Stand-in for EVA-CLIP-18B's EvaCLIPModel: the same encode_image / encode_text entry points."""

    config_class = StandInEvaClipConfig

    def encode_image(self, pixel_values):
        return _tensor(self.get_image_features(pixel_values=pixel_values))

    def encode_text(self, input_ids):
        return _tensor(self.get_text_features(input_ids=input_ids))
'''


def eva_clip_remote_code(folder: Path) -> None:
    """BAAI/EVA-CLIP-18B's layout: config.json with an auto_map to modelling code in the repository, the CLIP
    tokenizer files, no image processor (the model card's CLIP processor at 224 px is used)."""
    from transformers import CLIPConfig, CLIPModel

    tokenizer = tiny_models.word_tokenizer()
    text = {
        "vocab_size": len(tokenizer),
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "max_position_embeddings": 77,
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "bos_token_id": tokenizer.bos_token_id,
    }
    # 224 px as the real model sees, in 7x7 patches of 32 px: cheap, and no resizing of position embeddings
    vision = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2}
    vision.update(image_size=224, patch_size=32)
    torch.manual_seed(0)
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    add_eva_clip_code(folder)


def add_eva_clip_code(folder: Path) -> None:
    """Turn a saved transformers CLIP folder into EVA-CLIP-18B's remote-code layout: the stand-in modelling
    files beside the weights and a config.json whose auto_map names them."""
    (folder / "configuration_standin.py").write_text(_EVA_CONFIG_CODE)
    (folder / "modeling_standin.py").write_text(_EVA_MODEL_CODE)
    config = json.loads((folder / "config.json").read_text())
    config["architectures"] = ["StandInEvaClip"]
    config["auto_map"] = {
        "AutoConfig": "configuration_standin.StandInEvaClipConfig",
        "AutoModel": "modeling_standin.StandInEvaClip",
    }
    (folder / "config.json").write_text(json.dumps(config))


_IV2_CODE = '''
import torch
from transformers import PretrainedConfig, PreTrainedModel


class StandInInternVideo2Config(PretrainedConfig):
    model_type = "standin_internvideo2"

    def __init__(self, embed_dim=16, vocab_size=512, **kwargs):
        self.embed_dim, self.vocab_size = embed_dim, vocab_size
        super().__init__(**kwargs)


class StandInInternVideo2(PreTrainedModel):
    """Stand-in for InternVideo2-Stage2_6B's remote code (which needs flash-attn and a GPU): the same
    get_vid_feat([B, T, 3, H, W]) and get_txt_feat(str) entry points, returning L2-normalised features."""

    config_class = StandInInternVideo2Config

    def __init__(self, config):
        super().__init__(config)
        self.patch = torch.nn.Conv2d(3, config.embed_dim, kernel_size=16, stride=16)
        self.words = torch.nn.EmbeddingBag(config.vocab_size, config.embed_dim)
        self.post_init()

    def get_vid_feat(self, frames):
        b, t = frames.shape[:2]
        x = self.patch(frames.flatten(0, 1)).mean(dim=(2, 3)).view(b, t, -1).mean(dim=1)
        return torch.nn.functional.normalize(x, dim=-1)

    def get_txt_feat(self, text):
        ids = [sum(map(ord, w)) % self.config.vocab_size for w in text.lower().split()] or [0]
        x = self.words(torch.tensor([ids], device=self.patch.weight.device))
        return torch.nn.functional.normalize(x, dim=-1)
'''


def internvideo2_remote_code(folder: Path) -> None:
    """OpenGVLab/InternVideo2-Stage2_6B's layout: config.json with an auto_map to code in the repository."""
    (folder / "modeling_standin.py").write_text(_IV2_CODE)
    import importlib.util

    spec = importlib.util.spec_from_file_location("standin_iv2", folder / "modeling_standin.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    torch.manual_seed(0)
    model = module.StandInInternVideo2(module.StandInInternVideo2Config())
    model.save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    config["architectures"] = ["StandInInternVideo2"]
    config["auto_map"] = {
        "AutoConfig": "modeling_standin.StandInInternVideo2Config",
        "AutoModel": "modeling_standin.StandInInternVideo2",
    }
    (folder / "config.json").write_text(json.dumps(config))


# -- generators -----------------------------------------------------------------------------------------

# What the tiny question LLM replies, in the reference's layout ("questions:", numbered items ending in "?"),
# as byte-level tokens ("Ġ" is a leading space) that join the tiny vocabulary: tokenizing never produces
# them (the tiny BPE has no merges), but the model can emit them and they decode as written.
QUESTIONS_REPLY = [
    "questions:", "Ġ1.", "Ġwhat", "Ġcolour", "Ġis", "Ġthe", "Ġdog", "?", "Ġ2.", "Ġhow", "Ġmany", "Ġpeople",
    "Ġare", "Ġthere", "?", "Ġ3.", "Ġis", "Ġit", "Ġa", "Ġpicture", "Ġof", "Ġa", "Ġstreet", "?",
]  # fmt: skip


def spell_reply(folder: Path, tokens: list[str]) -> str:
    """Make the generator in `folder` reply `tokens` then end its turn, whatever the prompt: its
    generation_config.json gets a sequence bias favouring each token strongly after the two before it,
    starting from how every prompt ends. The generator honours the repository's generation_config as it would
    the real one's. Returns the reply as the tokenizer decodes it."""
    from transformers import AutoConfig, AutoTokenizer, GenerationConfig

    tokenizer = AutoTokenizer.from_pretrained(folder)  # the class the generator loads
    chat = tokenizer.apply_chat_template(
        [{"role": "user", "content": "x"}], add_generation_prompt=True, tokenize=False
    )
    start = tokenizer(chat, add_special_tokens=False)["input_ids"][-2:]
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    reply = tokenizer.convert_tokens_to_ids(tokens)
    assert tokenizer.unk_token_id not in reply, tokens
    ids = start + reply + [end]
    config = GenerationConfig.from_pretrained(folder)
    config.sequence_bias = [[ids[i - 2 : i + 1], 100.0] for i in range(2, len(ids))]
    config.suppress_tokens = None  # it may end its turn
    config.eos_token_id = end
    config.pad_token_id = AutoConfig.from_pretrained(folder).get_text_config().pad_token_id
    config.save_pretrained(folder)
    return tokenizer.decode(reply, skip_special_tokens=True)


def qwen_question_llm(folder: Path) -> None:
    """Qwen2.5-Instruct's architecture and ChatML, replying QUESTIONS_REPLY (spell_reply) so that the
    rehearsal's questions parse and the answer stage runs: a random model's replies never parse, and a
    query whose questions fell back skips the answer stage."""
    from visa.method.replies import parse_questions

    tiny_models.qwen2_text_dir(folder, extra_words=tuple(QUESTIONS_REPLY))
    text = spell_reply(folder, QUESTIONS_REPLY)
    assert parse_questions(text, 3).parsed, f"the taught reply does not parse: {text!r}"


def qwen2_vl(folder: Path) -> None:
    """Qwen2-VL-Instruct's architecture and processor (tests/tiny_models.py), answering "yes" and ending its
    turn: a random model runs every reply to max_new_tokens, which only makes the rehearsal slow."""
    tiny_models.qwen2_vl_dir(folder)
    spell_reply(folder, ["yes"])


_LLAVA_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<image>\n{% else %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def llava_next(folder: Path) -> None:
    """llava-hf/llava-v1.6-34b-hf's layout: LlavaNextForConditionalGeneration (CLIP vision tower, Llama-family
    language model), LlavaNextProcessor with its any-resolution image grid, ChatML with an <image> token."""
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaNextConfig,
        LlavaNextForConditionalGeneration,
        LlavaNextImageProcessor,
        LlavaNextProcessor,
    )

    tokenizer = tiny_models.word_tokenizer(["<|im_start|>", "<|im_end|>", "<image>"], _LLAVA_TEMPLATE)
    image_token = tokenizer.convert_tokens_to_ids("<image>")
    grid = [[32, 64], [64, 32], [64, 64]]
    config = LlavaNextConfig(
        vision_config=CLIPVisionConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
            projection_dim=16,
        ),
        text_config=LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=2048,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
        ),
        image_token_index=image_token,
        image_grid_pinpoints=grid,
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
    )
    torch.manual_seed(0)
    model = LlavaNextForConditionalGeneration(config)
    model.save_pretrained(folder)
    image_processor = LlavaNextImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}, image_grid_pinpoints=grid
    )
    processor = LlavaNextProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=8,
        vision_feature_select_strategy="default",
        chat_template=_LLAVA_TEMPLATE,
        image_token="<image>",
        num_additional_image_tokens=1,  # the CLIP tower's CLS token, as llava-hf's processor_config says
    )
    processor.save_pretrained(folder)
    spell_reply(folder, ["a", "dog", "on", "the", "grass"])  # a short description, then the end of its turn


def bge_lightweight(folder: Path) -> None:
    """BAAI/bge-reranker-v2.5-gemma2-lightweight's layout with its published depth: 42 decoder layers and
    score heads for layers 8..42 (so the cell's cutoff_layers [28] and compress_layers [24, 40] exist),
    the tiny widths, tokenizer and weight names of tests/fixtures/bge_lightweight (checked there against
    FlagEmbedding)."""
    import shutil

    from safetensors.torch import load_file, save_file

    config = json.loads((BGE_FIXTURE / "config.json").read_text())
    config.update(num_hidden_layers=42, start_layer=8, layer_sep=1)
    fixture = {}
    for shard in sorted(BGE_FIXTURE.glob("*.safetensors")):
        fixture.update(load_file(shard))
    g = torch.Generator().manual_seed(0)
    weights = {k: v for k, v in fixture.items() if not k.startswith(("model.layers.", "lm_head."))}
    layer0 = {
        k.removeprefix("model.layers.0."): v for k, v in fixture.items() if k.startswith("model.layers.0.")
    }
    for i in range(config["num_hidden_layers"]):
        for name, t in layer0.items():
            weights[f"model.layers.{i}.{name}"] = torch.randn(t.shape, generator=g) * 0.3
    head = fixture["lm_head.0.linear_head.weight"]
    for k in range(config["num_hidden_layers"] - config["start_layer"] + 1):
        weights[f"lm_head.{k}.linear_head.weight"] = torch.randn(head.shape, generator=g) * 0.5
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(config))
    for f in BGE_FIXTURE.iterdir():
        if f.name.startswith("tokenizer") or f.name == "special_tokens_map.json":
            shutil.copy(f, folder / f.name)


# -- datasets --------------------------------------------------------------------------------------------

CAPTIONS = [
    ["A dog runs on the grass.", "A brown dog playing in a field."],
    ["Two people walking on a street.", "A man and a woman walk in the city."],
    ["A red bus parked by a tree.", "A large red bus on the road."],
]


def _image(path: Path, seed: int, size: tuple[int, int] = (40, 32)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def _video(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    make_video(path)


def write_datasets(data_dir: Path) -> None:
    """Three items with two captions each, per paper dataset, at `${data_dir}/<name>` in the layout its
    conf/dataset yaml expects."""
    # COCO and Flickr30K: Karpathy's dataset_*.json (a train image too, which the test split leaves out)
    for name, media, folder in (("coco", "images", "val2014"), ("flickr30k", "flickr30k-images", "")):
        root = data_dir / name
        rows = []
        for i, caps in enumerate(CAPTIONS + [["Not a test image."]]):
            filename = f"{name}_{i}.jpg"
            rows.append(
                {
                    "filepath": folder,
                    "filename": filename,
                    "split": "test" if i < len(CAPTIONS) else "train",
                    "imgid": i,
                    "sentences": [{"raw": c, "tokens": c.lower().split()} for c in caps],
                }
            )
            _image(root / media / folder / filename, i)
        root.mkdir(parents=True, exist_ok=True)
        (root / f"dataset_{name}.json").write_text(json.dumps({"images": rows, "dataset": name}))
    # MSRVTT 1k-A: CLIP4Clip's csv (pandas index column first)
    root = data_dir / "msrvtt"
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "MSRVTT_JSFUSION_test.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["", "key", "vid_key", "video_id", "sentence"])
        for i, caps in enumerate(CAPTIONS):
            writer.writerow([i, f"ret{i}", f"msr{7000 + i}", f"video{7000 + i}", caps[0]])
            _video(root / "videos/all" / f"video{7000 + i}.mp4")
    # LSMDC, DiDeMo, MSVD: InternVideo2's retrieval json
    for name, annotation, ext in (
        ("lsmdc", "lsmdc_ret_test_1000.json", ".avi"),
        ("didemo", "didemo_ret_test.json", ".mp4"),
        ("msvd", "msvd_ret_test.json", ".avi"),
    ):
        root = data_dir / name
        entries = [{"video": f"clip{i}{ext}", "caption": caps} for i, caps in enumerate(CAPTIONS)]
        root.mkdir(parents=True, exist_ok=True)
        (root / annotation).write_text(json.dumps(entries))
        for i in range(len(CAPTIONS)):
            _video(root / "videos" / f"clip{i}{ext}")
    # DCI: splits.json + one annotation json per photo
    dci = data_dir / "dci" / "densely_captioned_images"
    (dci / "annotations").mkdir(parents=True, exist_ok=True)
    names = [f"sa_{i}.json" for i in range(len(CAPTIONS))]
    (dci / "splits.json").write_text(json.dumps({"train": [], "valid": [], "test": names}))
    for i, (name, caps) in enumerate(zip(names, CAPTIONS)):
        entry = {"image": f"sa_{i}.jpg", "short_caption": caps[0], "extra_caption": caps[1], "mask_data": {}}
        (dci / "annotations" / name).write_text(json.dumps(entry))
        _image(dci / "photos" / f"sa_{i}.jpg", 10 + i)
    # IIW as LoTLIP evaluates it: DOCCI_Test, IIW-400, DCI_Test subsets with their image folders
    root = data_dir / "iiw"
    subsets = {"DOCCI_Test": "docci", "IIW-400": "docci_aar", "DCI_Test": "dci"}
    for s, (subset, images) in enumerate(subsets.items()):
        (root / "imageinwords" / subset).mkdir(parents=True, exist_ok=True)
        key = f"{images}_test_{s}"
        line = {"image/key": key, "IIW": CAPTIONS[s][0] + "\n" + CAPTIONS[s][1]}
        (root / "imageinwords" / subset / "data.jsonl").write_text(json.dumps(line) + "\n")
        _image(root / images / f"{key}.jpg", 20 + s)
    # Urban1k: image/ and caption/ folders paired by name
    root = data_dir / "urban1k"
    for i, caps in enumerate(CAPTIONS):
        _image(root / "image" / f"{i + 1}.jpg", 30 + i)
        (root / "caption").mkdir(parents=True, exist_ok=True)
        (root / "caption" / f"{i + 1}.txt").write_text(" ".join(caps) + "\n")
    # ShareGPT4V: LoTLIP's share4v_sam_10k.json (conversations; the gpt turn is the caption)
    root = data_dir / "sharegpt4v"
    entries = []
    for i, caps in enumerate(CAPTIONS):
        image = f"sa_000000/images/sa_{i}.jpg"
        _image(root / image, 40 + i)
        turns = [{"from": "human", "value": "<image>\nDescribe."}, {"from": "gpt", "value": " ".join(caps)}]
        entries.append({"id": str(i), "image": image, "conversations": turns})
    (root / "share4v_sam_10k.json").write_text(json.dumps(entries))
