"""Text LLMs and vision-language models through transformers in this process (chat template, left padding,
batched; greedy or sampled; dtype and device from config). Weights load on first use
(`visa.generation.hf_loading`; a local GGUF file is converted once, `visa.generation.gguf`), so a fully
cached run loads no model.

Two things keep the question LLM cheap:
- structured generation: a prompt with a `layout` is generated under xgrammar's grammar mask
  (`visa.generation.structured`), so its reply always has that layout;
- shared-prefix reuse (`prefix_cache: true`): the tokens every prompt of a batch starts with (the question
  prompt's instructions and worked examples) are run through the model once, and their key/value cache is
  copied into every later batch that starts with them, the way a server's prefix cache works. Each row is laid
  out as [prefix][padding][own tokens], with the padding masked, so positions and replies are those of the
  prompt alone (the same replies at temperature 0; tests/test_prefix_reuse.py).
"""

from __future__ import annotations

import copy
import inspect
import json
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from visa.cache.cost import Cost
from visa.core.errors import VisaError
from visa.core.loading import check_dtype
from visa.core.prompt import Prompt
from visa.generation.chat import ChatSettings, MediaSettings
from visa.generation.gguf import converted_folder
from visa.generation.hf_loading import load_text_model, load_vision_model
from visa.generation.media import prompt_media
from visa.generation.sampling import PerPromptSampler, row_seed
from visa.generation.structured import GrammarCache, batch_layout
from visa.generation.yes_no import (
    first_step_logprobs,
    probs_from_logprobs,
    scoring_identity,
    yes_ratios,
)

# A prefix shorter than this many tokens is not worth a separate forward pass.
MIN_PREFIX_TOKENS = 16


def _cache_kwarg(lm) -> str:
    """The name `generate` and `forward` take a key/value cache under ("cache" from transformers 5.2x on)."""
    return "cache" if "cache" in inspect.signature(lm.forward).parameters else "past_key_values"


def _common_length(a: list[int] | tuple[int, ...], b: list[int] | tuple[int, ...]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


class PrefixCache:
    """Key/value caches of prompt prefixes (batch of one), the most recent `keep`, reused by every batch whose
    prompts all start with one of them (cropped to the part they share)."""

    def __init__(self, keep: int = 4):
        self.keep = keep
        self._entries: OrderedDict[tuple[int, ...], Any] = OrderedDict()
        self._owner: int | None = None
        self.reused_tokens = 0  # prompt tokens not run again thanks to a cached prefix
        self.computed_tokens = 0  # prefix tokens run through the model

    def take(
        self, lm, rows: list[list[int]], extra: dict | None = None, after: int = 0
    ) -> tuple[int, Any] | None:
        """(length, a private copy of the cache of rows' shared first `length` tokens), or None when they
        share fewer than MIN_PREFIX_TOKENS, or not the first `after` tokens (a media prefix must hold all the
        media tokens). Every row keeps at least one token of its own after the prefix. `extra`: more inputs of
        the prefix's forward pass (a vision model's pixels; per-token ones are cut to the prefix)."""
        if self._owner != id(lm):
            self._entries.clear()
            self._owner = id(lm)
        shared = min(len(r) for r in rows) - 1
        for row in rows[1:]:
            shared = min(shared, _common_length(rows[0], row))
        if shared < max(MIN_PREFIX_TOKENS, after):
            return None
        wanted = tuple(rows[0][:shared])
        best, best_len = None, 0
        for ids in self._entries:
            common = _common_length(ids, wanted)
            if common > best_len:
                best, best_len = ids, common
        if best is not None and best_len >= MIN_PREFIX_TOKENS and not extra:
            self._entries.move_to_end(best)
            cache = copy.deepcopy(self._entries[best])
            if best_len < len(best):
                cache.crop(best_len - len(best))  # transformers 5 crops by the tokens to remove
            self.reused_tokens += best_len * len(rows)
            return best_len, cache
        prefix_ids = torch.tensor([list(wanted)], device=lm.device)
        inputs = {
            k: v[..., :shared] if k.endswith("token_type_ids") and v.shape[-1] == len(rows[0]) else v
            for k, v in (extra or {}).items()
        }
        out = lm(input_ids=prefix_ids, attention_mask=torch.ones_like(prefix_ids), use_cache=True, **inputs)
        cache = out["cache"] if "cache" in out else out["past_key_values"]
        self.computed_tokens += shared
        self.reused_tokens += shared * (len(rows) - 1)
        if not extra:  # a media prefix belongs to one item: not kept for later batches
            self._entries[wanted] = cache
            while len(self._entries) > self.keep:
                self._entries.popitem(last=False)
            cache = copy.deepcopy(cache)
        return shared, cache


def _with_prefix(lm, rows: list[list[int]], length: int, cache, pad_id: int) -> dict[str, Any]:
    """generate() inputs for rows that start with a cached prefix of `length` tokens: each row laid out as
    [prefix][padding][own tokens], the padding masked (positions come from the mask, so every row's own
    tokens sit right after the prefix, as in the prompt alone); the cache copied to every row."""
    own = [r[length:] for r in rows]
    width = max(len(o) for o in own)
    ids, mask = [], []
    for row, tail in zip(rows, own):
        pad = width - len(tail)
        ids.append(row[:length] + [pad_id] * pad + tail)
        mask.append([1] * length + [0] * pad + [1] * len(tail))
    cache.batch_repeat_interleave(len(rows))
    return {
        "input_ids": torch.tensor(ids, device=lm.device),
        "attention_mask": torch.tensor(mask, device=lm.device),
        _cache_kwarg(lm): cache,
    }


def _noise(gen: ChatSettings) -> dict[str, str]:
    """Identity of a sampling generator: its replies draw noise per prompt (`visa.generation.sampling`),
    unlike the batch-shared stream of earlier versions, whose cached replies are not reused."""
    return {"noise": "per_prompt"} if gen.temperature > 0 else {}


def _complete(
    gen: ChatSettings,
    lm,
    enc,
    tokenizer,
    prompts: list[Prompt],
    grammars: GrammarCache | None = None,
) -> tuple[list[str], list[Cost]]:
    """Generate after the prompts in `enc` (left-padded, or laid out by `_with_prefix`); the new tokens
    decoded, per prompt, and each prompt's cost in tokens (the prompt's, a cached prefix included; the
    generated ones, padding left out).

    Sampling is what the settings say, never the model's generation_config: top_k off, top_p only when
    sampling, each prompt with noise of its own (`visa.generation.sampling`: a reply never depends on its
    batch-mates); the repetition penalty is the model's own unless `repetition_penalty` is set. A batch whose
    prompts carry a `layout` is generated under that layout's grammar."""
    layout = batch_layout(prompts)
    processors: list[Any] = (
        [grammars.processor(layout, tokenizer, lm)] if layout is not None and grammars else []
    )
    rows = [gen.sampling_of(p) for p in prompts]  # (temperature, seed) of each prompt
    if any(temperature > 0 for temperature, _ in rows):
        seeds = [
            row_seed(json.dumps(p.as_key(), sort_keys=True), seed) for p, (_, seed) in zip(prompts, rows)
        ]
        processors.append(PerPromptSampler([t for t, _ in rows], seeds, gen.top_p))
    penalty = {} if gen.repetition_penalty is None else {"repetition_penalty": gen.repetition_penalty}
    try:
        out = lm.generate(
            **enc,
            max_new_tokens=gen.max_new_tokens,
            do_sample=False,  # greedy over the scores PerPromptSampler perturbed, per prompt
            temperature=None,
            top_p=None,
            top_k=None,
            pad_token_id=tokenizer.pad_token_id,
            logits_processor=processors or None,
            **penalty,
        )
    except torch.OutOfMemoryError as e:
        raise VisaError(
            f"out of memory generating with {gen.model} at batch_size={gen.batch_size}; lower this "
            "generator's batch_size (question_llm.batch_size, answer_mllm.batch_size or describer.batch_size)"
        ) from e
    new = out[:, enc["input_ids"].shape[1] :]
    replies = tokenizer.batch_decode(new, skip_special_tokens=True)
    tokens_in = enc["attention_mask"].sum(dim=1).tolist()
    tokens_out = (new != tokenizer.pad_token_id).sum(dim=1).tolist()
    costs = [Cost(tokens_in=int(i), tokens_out=int(o)) for i, o in zip(tokens_in, tokens_out)]
    return [t.strip() for t in replies], costs


@dataclass(kw_only=True, eq=False)
class HFGeneratorBase:
    """What both transformers generators share: where and how the weights load, the prefix and grammar caches,
    the last batch's costs and P(Yes) from `first_token_probs` (each class reads its own model)."""

    dtype: str = "float32"  # float32 | float16 | bfloat16
    device: str = "auto"  # auto: all visible GPUs (device_map), else CPU
    trust_remote_code: bool = False
    # Reuse the key/value cache of the tokens the prompts of a batch start with (same replies, less work): a
    # question prompt's instructions, or one item's media for all the questions about it
    prefix_cache: bool = True
    prefixes: PrefixCache = field(default_factory=PrefixCache, init=False, repr=False)
    grammars: GrammarCache = field(default_factory=GrammarCache, init=False, repr=False)
    costs: list[Cost] = field(default_factory=list, init=False, repr=False)  # of the last generate()

    def __post_init__(self) -> None:
        super().__post_init__()  # type: ignore[misc]  # ChatSettings', next in the generator's MRO
        check_dtype(self.dtype)

    def last_costs(self) -> list[Cost]:
        """Tokens in and out of each prompt of the last generate() (`visa.cache.cost.CostReporting`)."""
        return self.costs

    def first_token_probs(self, prompts: list[Prompt], words: Sequence[str]) -> list[list[float]]:
        raise NotImplementedError

    def yes_no_identity(self, yes: str, no: str) -> dict:
        return scoring_identity(self.identity(), yes, no)  # type: ignore[attr-defined]

    def yes_no(self, prompts: list[Prompt], yes: str = "Yes", no: str = "No") -> list[float]:
        return yes_ratios(self.first_token_probs(prompts, (yes, no)))


@dataclass(kw_only=True, eq=False)
class HFTextGenerator(HFGeneratorBase, ChatSettings):
    """A text-only chat LLM (AutoModelForCausalLM, or a GGUF file read by transformers). With
    `uses_context: true` it answers questions about an item from the item's description (a "Socratic"
    answerer), which is how the demo answers without a vision-language model."""

    generator = "hf-text"

    gguf_file: str | None = None  # a GGUF file inside `model` (a folder or hub repo)

    def identity(self) -> dict:
        return {**super().identity(), "gguf_file": self.gguf_file, "dtype": self.dtype, **_noise(self)}

    def counters(self) -> dict[str, int]:
        """Prompt tokens that a cached prefix spared the model, and prefix tokens it ran."""
        return {
            "prefix_tokens/reused": self.prefixes.reused_tokens,
            "prefix_tokens/computed": self.prefixes.computed_tokens,
        }

    def prepare(self) -> str:
        """Load the model now (a GGUF file is converted once into the model cache); where it is kept."""
        load_text_model(self.model, self.gguf_file, self.dtype, self.device, self.trust_remote_code)
        folder = converted_folder(self.model, self.gguf_file) if self.gguf_file else None
        return f"{self.model} kept as {folder}" if folder is not None else f"{self.model} loaded"

    def _refuse_media(self, prompts: list[Prompt]) -> None:
        for p in prompts:
            if self.sees_media(p):
                raise VisaError(
                    f"{self.model} is a text-only model and cannot see {p.media_kind}s; "
                    "use a vision-language model or set uses_context: true to answer from descriptions"
                )

    @torch.no_grad()
    def generate(self, prompts: list[Prompt]) -> list[str]:
        self._refuse_media(prompts)
        tokenizer, lm = load_text_model(
            self.model, self.gguf_file, self.dtype, self.device, self.trust_remote_code
        )
        texts = [
            tokenizer.apply_chat_template(self.messages(p), tokenize=False, add_generation_prompt=True)
            for p in prompts
        ]
        enc = None
        if self.prefix_cache:
            rows = tokenizer(texts, add_special_tokens=False)["input_ids"]
            found = self.prefixes.take(lm, rows)
            if found is not None:
                enc = _with_prefix(lm, rows, *found, tokenizer.pad_token_id)
        if enc is None:
            enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(lm.device)
        replies, self.costs = _complete(self, lm, enc, tokenizer, prompts, self.grammars)
        return replies

    # -- P(Yes) (`visa.generation.YesNoScorer`) ------------------------------------------------------------
    @torch.no_grad()
    def first_token_probs(self, prompts: list[Prompt], words: Sequence[str]) -> list[list[float]]:
        """Each word's probability as the first token of the reply, one prompt a forward pass (a context
        reader reads each item's description, as `generate` does). Alone, because a padded batch rounds
        differently from one prompt (a 1e-7 difference, tests/test_yes_no.py): a score must not depend on
        its batch-mates (one config, one result). A served model batches."""
        self._refuse_media(prompts)
        tokenizer, lm = load_text_model(
            self.model, self.gguf_file, self.dtype, self.device, self.trust_remote_code
        )
        out: list[list[float]] = []
        for prompt in prompts:
            text = tokenizer.apply_chat_template(
                self.messages(prompt), tokenize=False, add_generation_prompt=True
            )
            enc = tokenizer([text], return_tensors="pt", add_special_tokens=False).to(lm.device)
            logprobs = first_step_logprobs(lm, enc, tokenizer.pad_token_id)
            out += probs_from_logprobs(logprobs, tokenizer, words, self.model)
        return out


@dataclass(kw_only=True, eq=False)
class HFVisionGenerator(HFGeneratorBase, MediaSettings):
    """A vision-language chat model (Qwen2-VL, Qwen2.5-VL, LLaVA-NeXT, ...) through its own processor and
    chat template (AutoProcessor + AutoModelForImageTextToText): images as images, videos as frames sampled
    at `video_fps`. Media come before the text in each message, so the questions about one item share a
    prefix."""

    generator = "hf-vision"

    batch_size: int = 8
    media_encoded: int = field(default=0, init=False)  # images and videos given to the vision encoder

    def identity(self) -> dict:
        # "gguf_file": None keeps the identities (and so the caches) of the former single generator class.
        return {**super().identity(), "gguf_file": None, "dtype": self.dtype, **_noise(self)}

    def counters(self) -> dict[str, int]:
        """Images and videos encoded, prompt tokens a cached prefix spared the model, prefix tokens it ran."""
        return {
            "media_encoded": self.media_encoded,
            "prefix_tokens/reused": self.prefixes.reused_tokens,
            "prefix_tokens/computed": self.prefixes.computed_tokens,
        }

    def _chat(self, processor, p: Prompt) -> tuple[str, list, list]:
        """(chat text, images, video frame lists) of one prompt."""
        item_images: list[Any] = []
        item_videos: list[Any] = []
        if self.sees_media(p):
            item_images, item_videos = prompt_media(p, self)
        parts = [{"type": "image"} for _ in item_images] + [{"type": "video"} for _ in item_videos]
        text = processor.apply_chat_template(
            self.messages(p, parts, typed=True), add_generation_prompt=True, tokenize=False
        )
        return text, item_images, item_videos

    def _encode(self, processor, lm, texts: list[str], images: list, videos: list):
        if videos and getattr(processor, "video_processor", None) is None:
            raise VisaError(
                f"{self.model} has no video processor; pick a video-capable model (e.g. Qwen2-VL)"
            )
        media = {"images": images or None, "videos": videos or None}
        enc = processor(
            text=texts, padding=True, return_tensors="pt", **{k: v for k, v in media.items() if v}
        )
        enc = enc.to(lm.device)
        if "pixel_values" in enc and enc["pixel_values"].is_floating_point():
            enc["pixel_values"] = enc["pixel_values"].to(lm.dtype)
        if "pixel_values_videos" in enc and enc["pixel_values_videos"].is_floating_point():
            enc["pixel_values_videos"] = enc["pixel_values_videos"].to(lm.dtype)
        return enc

    def _with_shared_prefix(self, processor, lm, chats: list[tuple[str, list, list]], media: bool):
        """generate() inputs for prompts that share their media (or have none) and start alike: the shared
        part, the media included, runs once (its pixels encoded once); None when they share too little."""
        enc = self._encode(processor, lm, [chats[0][0]], chats[0][1], chats[0][2])
        rows = [enc["input_ids"][0].tolist()]
        for text, _, _ in chats[1:]:  # every row's tokens, its media expanded as in the first row
            rows.append(
                self._encode(processor, lm, [text], chats[0][1], chats[0][2])["input_ids"][0].tolist()
            )
        media_ids = {getattr(lm.config, k, None) for k in ("image_token_id", "video_token_id")} - {None}
        last_media = max((i for i, t in enumerate(rows[0]) if t in media_ids), default=-1)
        extra = None
        if media:
            extra = {k: v for k, v in enc.items() if k not in ("input_ids", "attention_mask")}
        found = self.prefixes.take(lm, rows, extra, after=last_media + 1)
        if found is None:
            return None
        if hasattr(getattr(lm, "model", None), "rope_deltas") and not media:
            # M-RoPE models (Qwen2-VL) keep the position offset of the last prompt's media; text has none
            lm.model.rope_deltas = torch.zeros(1, 1, dtype=torch.long, device=lm.device)
        self.media_encoded += len(chats[0][1]) + len(chats[0][2]) if media else 0
        return _with_prefix(lm, rows, *found, processor.tokenizer.pad_token_id)

    @torch.no_grad()
    def generate(self, prompts: list[Prompt]) -> list[str]:
        processor, lm = load_vision_model(self.model, self.dtype, self.device, self.trust_remote_code)
        chats = [self._chat(processor, p) for p in prompts]
        replies: list[str | None] = [None] * len(prompts)
        costs: list[Cost] = [Cost() for _ in prompts]
        rest = list(range(len(prompts)))
        if self.prefix_cache:
            # prompts about one item (or without media) run together, from their shared prefix
            groups: dict[tuple, list[int]] = {}
            for i, p in enumerate(prompts):
                groups.setdefault((p.media, p.media_kind) if self.sees_media(p) else (), []).append(i)
            rest = []
            for key, members in groups.items():
                enc = None
                if key == () or len(members) > 1:
                    enc = self._with_shared_prefix(processor, lm, [chats[i] for i in members], key != ())
                if enc is None:
                    rest += members
                    continue
                group, group_costs = _complete(
                    self, lm, enc, processor.tokenizer, [prompts[i] for i in members], self.grammars
                )
                for i, reply, cost in zip(members, group, group_costs):
                    replies[i], costs[i] = reply, cost
        if rest:
            rest.sort()
            images = [im for i in rest for im in chats[i][1]]
            videos = [v for i in rest for v in chats[i][2]]
            enc = self._encode(processor, lm, [chats[i][0] for i in rest], images, videos)
            self.media_encoded += len(images) + len(videos)
            done, done_costs = _complete(
                self, lm, enc, processor.tokenizer, [prompts[i] for i in rest], self.grammars
            )
            for i, reply, cost in zip(rest, done, done_costs):
                replies[i], costs[i] = reply, cost
        self.costs = costs
        return replies  # type: ignore[return-value]

    # -- P(Yes) (`visa.generation.YesNoScorer`) ------------------------------------------------------------
    @torch.no_grad()
    def first_token_probs(self, prompts: list[Prompt], words: Sequence[str]) -> list[list[float]]:
        """Each word's probability as the first token of the reply, one prompt a forward pass (its media
        encoded with it, as `generate` sends them). Alone, as in `HFTextGenerator.first_token_probs`: a
        padded batch, and a vision encoder's products over several items' patches, round differently from
        one prompt."""
        processor, lm = load_vision_model(self.model, self.dtype, self.device, self.trust_remote_code)
        out: list[list[float]] = []
        for prompt in prompts:
            text, images, videos = self._chat(processor, prompt)
            enc = self._encode(processor, lm, [text], images, videos)
            self.media_encoded += len(images) + len(videos)
            logprobs = first_step_logprobs(lm, enc, processor.tokenizer.pad_token_id)
            out += probs_from_logprobs(logprobs, processor.tokenizer, words, self.model)
        return out
