"""bge-reranker-v2.5-gemma2-lightweight, run natively on the Gemma 2 modules of the installed transformers.

The published checkpoint (BAAI/bge-reranker-v2.5-gemma2-lightweight, `model_type: cost_wise_gemma`) is a
Gemma 2 decoder plus one score head per usable layer (`lm_head.<k>.linear_head.weight`, a 1 x hidden
vector; layers `start_layer, start_layer + layer_sep, ..., num_hidden_layers`). A (query, passage) pair is
read as

    <bos> "A: {query}" "\\n" "B: {passage}" "\\n" "{prompt}"

and the score is the raw logit of a head applied to the last token's normalised hidden state at a cutoff layer
(no sigmoid). Two options make it cheaper, as in FlagEmbedding's LightweightLLMReranker, whose behaviour this
module reproduces (tests/test_bge_lightweight.py checks it against FlagEmbedding's own scores):
- `cutoff_layers`: stop the stack at that layer; layers past the deepest cutoff are not even loaded. As in
  FlagEmbedding's model code, the k-th requested cutoff layer (in depth order) is scored by
  head `lm_head.k`; with one cutoff layer (the method's 28) that is `lm_head.0`.
- `compress_ratio` + `compress_layers`: before each listed layer (the deepest cutoff ends the stack first) the
  passage tokens are mean-pooled in windows of `compress_ratio` (the last window over the tokens it has), the
  query and prompt tokens kept, and positions renumbered.

Budgets: the query (with "A: ") is cut to `query_max_length` tokens, the passage (with "B: ") to `max_length`,
then the passage again so that <bos> + query + "\\n" + passage fits `pair_max_length` (FlagEmbedding's
default: `max_length` + the separator and prompt tokens). Cuts are counted in `truncated_queries` and
`truncated_passages` (pairs scored by this object).

Attention is eager so that Gemma 2's attention-logit soft-capping applies. FlagEmbedding's own class, and the
paper's step-3 script, ask transformers 4.x for SDPA attention, which skips the soft-capping:
`attention_softcapping=False` reproduces those numbers, with torch's SDPA kernel too.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import torch

from visa.core.devices import resolve_device
from visa.core.errors import VisaError
from visa.core.loading import DTYPES, check_dtype, load_once, load_pretrained, oom_hint, short_name

DEFAULT_PROMPT = "Predict whether passage B contains an answer to query A."
SEPARATOR = "\n"
# config.json keys of the published checkpoint that are not Gemma 2's
_LIGHTWEIGHT_KEYS = ("start_layer", "layer_sep", "layer_wise")
_NOT_GEMMA2 = (
    "model_type",
    "architectures",
    "auto_map",
    "_name_or_path",
    "transformers_version",
    "torch_dtype",
)


class LightweightGemma(torch.nn.Module):
    """A stock transformers `Gemma2Model` with the light-weight re-ranker's score heads, cutoff and token
    compression. `heads[k]` is the checkpoint's `lm_head.k.linear_head.weight`."""

    def __init__(self, decoder, heads: torch.Tensor):
        super().__init__()
        self.decoder = decoder
        self.register_buffer("heads", heads)
        self.final_softcap = decoder.config.final_logit_softcapping
        self.sliding_window = decoder.config.sliding_window
        self.layer_types = decoder.config.layer_types

    def _masks(self, attention_mask: torch.Tensor, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        """Additive masks (batch, 1, length, length): causal, padded keys hidden, and for the sliding layers
        keys at least `sliding_window` positions back hidden too."""
        length = attention_mask.shape[1]
        pos = torch.arange(length, device=attention_mask.device)
        back = pos[:, None] - pos[None, :]
        allowed = (back >= 0)[None] & attention_mask.bool()[:, None, :]
        sliding = allowed & (back < self.sliding_window)[None] if self.sliding_window else allowed
        lowest = torch.finfo(dtype).min

        def additive(ok):
            return torch.zeros(ok.shape, dtype=dtype, device=ok.device).masked_fill(~ok, lowest)[:, None]

        return {"full_attention": additive(allowed), "sliding_attention": additive(sliding)}

    def _head(self, hidden: torch.Tensor, attention_mask: torch.Tensor, k: int) -> torch.Tensor:
        last = attention_mask.sum(dim=1) - 1  # right padding: the last real token of each row
        pooled = self.decoder.norm(hidden[torch.arange(hidden.shape[0], device=hidden.device), last])
        head: torch.Tensor = self.heads[k]  # type: ignore[index]  # a registered buffer, a tensor
        logits = pooled @ head.to(pooled.dtype)
        if self.final_softcap is not None:
            logits = torch.tanh(logits / self.final_softcap) * self.final_softcap
        return logits.float()

    @torch.no_grad()
    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        query_lengths: list[int],
        prompt_lengths: list[int],
        cutoff_layers: list[int],
        compress_ratio: int = 1,
        compress_layers: tuple[int, ...] = (),
    ) -> list[torch.Tensor]:
        """One score tensor (batch,) per cutoff layer, shallowest first."""
        deepest = max(cutoff_layers)
        hidden = self.decoder.embed_tokens(input_ids)  # scaled by sqrt(hidden_size) inside, as Gemma does
        positions, rotary, masks = self._geometry(hidden, attention_mask)
        scores: list[torch.Tensor] = []
        for idx in range(deepest + 1):  # idx: how many layers have run
            if idx in cutoff_layers:
                scores.append(self._head(hidden, attention_mask, len(scores)))
            if idx == deepest:
                break
            if compress_ratio > 1 and idx in compress_layers and idx != 0:
                hidden, attention_mask = compress_passages(
                    hidden, attention_mask, query_lengths, prompt_lengths, compress_ratio
                )
                positions, rotary, masks = self._geometry(hidden, attention_mask)
            hidden = self.decoder.layers[idx](
                hidden,
                attention_mask=masks[self.layer_types[idx]],
                position_embeddings=rotary,
                position_ids=positions,
            )
        return scores

    def _geometry(self, hidden: torch.Tensor, attention_mask: torch.Tensor):
        positions = torch.arange(hidden.shape[1], device=hidden.device)[None]
        rotary = self.decoder.rotary_emb(hidden, positions)
        return positions, rotary, self._masks(attention_mask, hidden.dtype)


def compress_passages(
    hidden: torch.Tensor,
    attention_mask: torch.Tensor,
    query_lengths: list[int],
    prompt_lengths: list[int],
    ratio: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row is [query | passage | prompt | padding]: mean-pool the passage in windows of `ratio` tokens
    (the last window averages the tokens it has), keep the query and prompt, and right-pad the rows again."""
    rows = []
    for row, mask, q, p in zip(hidden, attention_mask, query_lengths, prompt_lengths):
        n = int(mask.sum()) - q - p
        kept = -(-n // ratio)
        passage = torch.zeros(kept * ratio, hidden.shape[-1], dtype=hidden.dtype, device=hidden.device)
        passage[:n] = row[q : q + n]
        # weights 1/count per token, then a sum: the same arithmetic as the reference implementation
        counts = torch.full((kept, 1), ratio, dtype=hidden.dtype, device=hidden.device)
        if n % ratio:
            counts[-1] = n % ratio
        weights = (1 / counts).repeat_interleave(ratio, dim=0)
        weights[n:] = 0
        pooled = (passage * weights).view(kept, ratio, -1).sum(dim=1)
        rows.append(torch.cat([row[:q], pooled, row[q + n : q + n + p]]))
    length = max(len(r) for r in rows)
    new_hidden = hidden.new_zeros(len(rows), length, hidden.shape[-1])
    new_mask = attention_mask.new_zeros(len(rows), length)
    for i, r in enumerate(rows):
        new_hidden[i, : len(r)] = r
        new_mask[i, : len(r)] = 1
    return new_hidden, new_mask


def _checkpoint_folder(model: str) -> Path:
    from transformers.utils import cached_file

    try:
        found = cached_file(model, "config.json")
        if found is None:
            raise OSError(f"{model} has no config.json")
        return Path(found).parent
    except (OSError, ValueError) as e:
        raise VisaError(
            f"cannot find scorer model {model!r} ({str(e).splitlines()[0][:160]}); download it on a "
            f"connected machine (`hf download {model}`), point HF_HOME at that cache, or set scorer.model to "
            "a local folder"
        ) from e


def _read_heads(folder: Path, count: int) -> torch.Tensor:
    """The score heads `lm_head.<k>.linear_head.weight` stacked (count, hidden), from the safetensors."""
    from safetensors import safe_open

    index = folder / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif (folder / "model.safetensors").is_file():
        files = ["model.safetensors"]
    else:
        raise VisaError(f"no safetensors weights in {folder}; the light-weight re-ranker reads safetensors")
    found = {}
    for name in files:
        with safe_open(str(folder / name), framework="pt") as f:
            for key in f.keys():
                if key.startswith("lm_head.") and key.endswith(".linear_head.weight"):
                    found[int(key.split(".")[1])] = f.get_tensor(key).float().reshape(-1)
    if sorted(found) != list(range(count)):
        raise VisaError(f"{folder} has score heads {sorted(found)}; its config.json asks for {count}")
    return torch.stack([found[k] for k in range(count)])


@contextlib.contextmanager
def _transformers_errors_only():
    """transformers warns that a `cost_wise_gemma` checkpoint is not Gemma 2 and that its heads are unused:
    both expected here (the heads are read apart), and only noise to a user."""
    import transformers

    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    try:
        yield
    finally:
        transformers.logging.set_verbosity(verbosity)


@load_once(maxsize=1)
def load_lightweight(model: str, dtype: str, device: str, deepest_layer: int, softcapping: bool):
    """(tokenizer, LightweightGemma) with only the layers below `deepest_layer`."""
    from transformers import AutoTokenizer, Gemma2Config, Gemma2Model

    class Decoder(Gemma2Model):
        # the score heads are read apart; the layers past the deepest cutoff are not built
        _keys_to_ignore_on_load_unexpected = [r"^lm_head\.", r"^model\.layers\.\d+\."]

    folder = _checkpoint_folder(model)
    raw = json.loads((folder / "config.json").read_text())
    if not raw.get("layer_wise") or any(k not in raw for k in _LIGHTWEIGHT_KEYS):
        raise VisaError(
            f"{model!r} is not a layer-wise light-weight re-ranker (its config.json lacks layer_wise, "
            "start_layer or layer_sep); use a BAAI/bge-reranker-v2.5-gemma2-lightweight checkpoint"
        )
    start, sep, layers = raw["start_layer"], raw["layer_sep"], raw["num_hidden_layers"]
    gemma2 = {k: v for k, v in raw.items() if k not in _NOT_GEMMA2 + _LIGHTWEIGHT_KEYS}
    # the stack never runs past the deepest cutoff layer: build (and load) only the layers below it
    config = Gemma2Config(**{**gemma2, "num_hidden_layers": max(deepest_layer, 1)})
    placement = resolve_device(device)
    with _transformers_errors_only():
        decoder, info = load_pretrained(
            Decoder,
            str(folder),
            config=config,
            dtype=DTYPES[dtype],
            attn_implementation="eager",
            device_map=str(placement),
            output_loading_info=True,
        )
        tokenizer = load_pretrained(AutoTokenizer, str(folder))
    if info["missing_keys"]:
        missing = sorted(info["missing_keys"])[0]
        raise VisaError(f"{model!r} lacks Gemma 2 weights ({missing}, ...); is the download complete?")
    if not softcapping:
        # without the soft-cap, attention is plain scaled dot-product attention: torch's fused kernel computes
        # it without materialising the attention matrices (the numbers of FlagEmbedding's SDPA default)
        for layer in decoder.layers:
            layer.self_attn.attn_logit_softcapping = None
        decoder.config._attn_implementation = "sdpa"
    heads = _read_heads(folder, len(range(start, layers + 1, sep)))
    return tokenizer, LightweightGemma(decoder, heads.to(placement)).eval()


class BGELightweightReranker:
    def __init__(
        self,
        model: str = "BAAI/bge-reranker-v2.5-gemma2-lightweight",
        cutoff_layers: list[int] | None = None,
        compress_ratio: int = 1,
        compress_layers: list[int] | None = None,
        query_max_length: int = 768,
        max_length: int = 1024,
        pair_max_length: int | None = None,
        attention_softcapping: bool = True,
        dtype: str = "float16",
        device: str = "auto",
        batch_size: int = 32,
        prompt: str | None = None,
    ):
        check_dtype(dtype, "scorer.dtype")
        if compress_ratio not in (1, 2, 4, 8):
            raise VisaError(f"scorer.compress_ratio={compress_ratio} is not one of 1, 2, 4, 8")
        if not 0 < query_max_length <= max_length:
            raise VisaError(
                f"scorer.query_max_length={query_max_length} must be between 1 and "
                f"scorer.max_length={max_length}"
            )
        if pair_max_length is not None and pair_max_length < query_max_length + 8:
            raise VisaError(
                f"scorer.pair_max_length={pair_max_length} leaves no room for a passage after a query of "
                f"scorer.query_max_length={query_max_length} tokens; raise it or set it to null"
            )
        if cutoff_layers is not None and not cutoff_layers:
            raise VisaError("scorer.cutoff_layers is empty; give a layer, or null for the last one")
        self.model, self.compress_ratio = model, compress_ratio
        self.cutoff_layers = sorted(set(cutoff_layers)) if cutoff_layers else None
        self.compress_layers = list(compress_layers) if compress_layers is not None else [8]
        self.query_max_length, self.max_length = query_max_length, max_length
        self.pair_max_length = pair_max_length
        self.attention_softcapping, self.dtype, self.device = attention_softcapping, dtype, device
        self.batch_size, self.prompt = batch_size, prompt
        self.truncated_queries = 0
        self.truncated_passages = 0

    def identity(self) -> dict:
        return {
            "scorer": "bge-lightweight",
            "model": short_name(self.model),
            "cutoff_layers": self.cutoff_layers,
            "compress_ratio": self.compress_ratio,
            "compress_layers": self.compress_layers,
            "query_max_length": self.query_max_length,
            "max_length": self.max_length,
            "pair_max_length": self.pair_max_length,
            "attention_softcapping": self.attention_softcapping,
            "dtype": self.dtype,
            "prompt": self.prompt,
        }

    def counters(self) -> dict[str, int]:
        return {"truncated_queries": self.truncated_queries, "truncated_passages": self.truncated_passages}

    def _net(self):
        folder = _checkpoint_folder(self.model)
        raw = json.loads((folder / "config.json").read_text())
        layers = raw.get("num_hidden_layers", 0)
        usable = list(range(raw.get("start_layer", 0), layers + 1, raw.get("layer_sep", 1)))
        cutoff = self.cutoff_layers or [layers]
        wrong = [c for c in cutoff if c not in usable]
        if wrong:
            raise VisaError(
                f"scorer.cutoff_layers {wrong} are not scored by {self.model!r}; it has heads for layers "
                f"{usable[0]}..{usable[-1]} (step {raw.get('layer_sep', 1)})"
            )
        device = str(resolve_device(self.device))
        loaded = load_lightweight(self.model, self.dtype, device, max(cutoff), self.attention_softcapping)
        return cutoff, loaded

    def encode(self, tokenizer, pairs: list[tuple[str, str]]) -> list[tuple[list[int], int, int, bool, bool]]:
        """For each pair: (input ids, query part length, prompt part length, query cut, passage cut)."""

        def ids(texts):
            return tokenizer(texts, add_special_tokens=False)["input_ids"]

        sep = ids([SEPARATOR])[0]
        prompt = ids([self.prompt or DEFAULT_PROMPT])[0]
        pair_budget = self.pair_max_length or self.max_length + len(sep) + len(prompt)
        queries = ids([f"A: {q}" for q, _ in pairs])
        passages = ids([f"B: {p}" for _, p in pairs])
        out = []
        for query, passage in zip(queries, passages):
            kept_query = query[: self.query_max_length]
            room = pair_budget - 1 - len(kept_query) - len(sep)
            kept_passage = passage[: min(self.max_length, room)]
            head = [tokenizer.bos_token_id, *kept_query, *sep]
            tail = [*sep, *prompt]
            out.append(
                (
                    head + kept_passage + tail,
                    len(head),
                    len(tail),
                    len(kept_query) < len(query),
                    len(kept_passage) < len(passage),
                )
            )
        return out

    def score(self, pairs: list[tuple[str, str]]) -> list[float]:
        """Raw logits; with several cutoff layers, the deepest layer's."""
        return self.score_per_layer(pairs)[-1]

    def score_per_layer(self, pairs: list[tuple[str, str]]) -> list[list[float]]:
        """Raw logits at each cutoff layer, shallowest first."""
        cutoff, (tokenizer, net) = self._net()
        encoded = self.encode(tokenizer, pairs)
        self.truncated_queries += sum(e[3] for e in encoded)
        self.truncated_passages += sum(e[4] for e in encoded)
        device = net.heads.device
        # longest first so that each batch pads little; scores go back to the input order
        order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i][0]))
        scores = [[0.0] * len(encoded) for _ in cutoff]
        for start in range(0, len(order), self.batch_size):
            rows = order[start : start + self.batch_size]
            batch = [encoded[i] for i in rows]
            length = -(-max(len(e[0]) for e in batch) // 8) * 8  # padded to a multiple of 8, as the reference
            input_ids = torch.full((len(batch), length), tokenizer.pad_token_id or 0, dtype=torch.long)
            attention_mask = torch.zeros((len(batch), length), dtype=torch.long)
            for row, e in enumerate(batch):
                input_ids[row, : len(e[0])] = torch.tensor(e[0])
                attention_mask[row, : len(e[0])] = 1
            try:
                per_layer = net(
                    input_ids.to(device),
                    attention_mask.to(device),
                    [e[1] for e in batch],
                    [e[2] for e in batch],
                    cutoff,
                    self.compress_ratio,
                    tuple(self.compress_layers),
                )
            except torch.OutOfMemoryError as e:
                raise oom_hint(e, self.model, "scorer.batch_size") from e
            for layer_scores, values in zip(scores, per_layer):
                for i, v in zip(rows, values.cpu().tolist()):
                    layer_scores[i] = float(v)
        return scores
