"""SGR and SAF (Diao et al., "Similarity Reasoning and Filtration for Image-Text Matching", AAAI 2021), as
their public code builds them, written anew.

Images: precomputed region features -> linear -> L2 norm. Captions: word embedding -> (bi-)GRU -> L2 norm.
For every (image, caption) pair, each word attends to the regions (SCAN's text-to-image attention); the
squared differences between each word and its attended region context, plus the squared difference of
self-attended global vectors, are projected to similarity vectors ("nodes"); SGR reasons over them as a
graph, SAF filters them with a learned gate; a sigmoid of a linear read-out is the pair's similarity.

SGRAF scores one caption against all images per step. Here `caption_chunk` captions are scored at once,
padded and masked so that each pair's score is the one SGRAF's loop gives (in eval mode exactly; in
training SAF's batch norm takes its statistics over the chunk's pairs instead of one caption's).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence


def l2norm(x: torch.Tensor, dim: int = -1, eps: float = 1e-8) -> torch.Tensor:
    return x / (x.pow(2).sum(dim=dim, keepdim=True).sqrt() + eps)


def l1norm(x: torch.Tensor, dim: int = -1, eps: float = 1e-8) -> torch.Tensor:
    return x / (x.abs().sum(dim=dim, keepdim=True) + eps)


def xavier_linear(layer: nn.Linear) -> nn.Linear:
    """SGRAF's init: uniform in +-sqrt(6 / (fan_in + fan_out)), zero bias."""
    nn.init.xavier_uniform_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


class ImageEncoder(nn.Module):
    def __init__(self, img_dim: int, embed_size: int, normalize: bool = True):
        super().__init__()
        self.fc = xavier_linear(nn.Linear(img_dim, embed_size))
        self.normalize = normalize

    def forward(self, regions: torch.Tensor) -> torch.Tensor:
        emb = self.fc(regions)
        return l2norm(emb) if self.normalize else emb


class TextEncoder(nn.Module):
    def __init__(
        self,
        vocab_size: int,
        word_dim: int,
        embed_size: int,
        num_layers: int = 1,
        bidirectional: bool = True,
        normalize: bool = True,
    ):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, word_dim)
        nn.init.uniform_(self.embed.weight, -0.1, 0.1)
        self.dropout = nn.Dropout(0.4)
        self.rnn = nn.GRU(word_dim, embed_size, num_layers, batch_first=True, bidirectional=bidirectional)
        self.bidirectional, self.normalize = bidirectional, normalize

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """[B, L] ids -> [B, L, d]; positions past a caption's length are zero vectors."""
        words = self.dropout(self.embed(tokens))
        packed = pack_padded_sequence(words, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, _ = pad_packed_sequence(self.rnn(packed)[0], batch_first=True, total_length=tokens.shape[1])
        if self.bidirectional:  # the two directions are averaged
            forward, backward = out.chunk(2, dim=-1)
            out = (forward + backward) / 2
        return l2norm(out) if self.normalize else out


class SelfAttentionPool(nn.Module):
    """A global vector as an attention-weighted sum of the local ones, guided by their mean (VisualSA /
    TextSA in SGRAF). The image branch has batch norms over its fixed number of regions; text has none."""

    def __init__(self, embed_size: int, num_regions: int | None = None, dropout: float = 0.4):
        super().__init__()

        def branch(norm: nn.Module | None) -> nn.Sequential:
            layers: list[nn.Module] = [xavier_linear(nn.Linear(embed_size, embed_size))]
            if norm is not None:
                layers.append(norm)
            return nn.Sequential(*layers, nn.Tanh(), nn.Dropout(dropout))

        self.local = branch(nn.BatchNorm1d(num_regions) if num_regions else None)
        self.mean = branch(nn.BatchNorm1d(embed_size) if num_regions else None)
        self.common = xavier_linear(nn.Linear(embed_size, 1))

    def forward(self, local: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """local [n, L, d] -> [n, d]; `mask` [n, L] marks the real words of padded captions."""
        if mask is None:
            mean = local.mean(1)
        else:
            mean = (local * mask.unsqueeze(2)).sum(1) / mask.sum(1, keepdim=True)
        weights = self.common(self.local(local) * self.mean(mean).unsqueeze(1)).squeeze(2)
        if mask is not None:
            weights = weights.masked_fill(~mask, float("-inf"))
        return l2norm((weights.softmax(dim=1).unsqueeze(2) * local).sum(1))


def attend_regions(words: torch.Tensor, regions: torch.Tensor, smooth: float = 9.0) -> torch.Tensor:
    """SCAN's text-to-image attention: for each word of each caption, the softmax-weighted sum of each
    image's regions. words [m, L, d] (padding words are zero vectors), regions [n, R, d] -> [n, m, L, d]."""
    attn = F.leaky_relu(torch.einsum("nrd,mld->nmrl", regions, words), 0.1)
    attn = l2norm(attn, dim=3)  # over the words, as SCAN does (zero padding words add nothing)
    attn = torch.softmax(attn.transpose(2, 3) * smooth, dim=3)  # over the regions: [n, m, L, R]
    return l2norm(torch.einsum("nmlr,nrd->nmld", attn, regions))


class GraphReasoning(nn.Module):
    def __init__(self, sim_dim: int):
        super().__init__()
        self.query = xavier_linear(nn.Linear(sim_dim, sim_dim))
        self.key = xavier_linear(nn.Linear(sim_dim, sim_dim))
        self.update = xavier_linear(nn.Linear(sim_dim, sim_dim))

    def forward(self, nodes: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """nodes [p, N, s]; mask [p, N] marks real nodes (padding nodes are never attended to)."""
        logits = self.query(nodes) @ self.key(nodes).transpose(1, 2)
        edges = torch.softmax(logits.masked_fill(~mask.unsqueeze(1), float("-inf")), dim=-1)
        return torch.relu(self.update(edges @ nodes))


class AttentionFiltration(nn.Module):
    def __init__(self, sim_dim: int):
        super().__init__()
        self.gate = xavier_linear(nn.Linear(sim_dim, 1))
        self.bn = nn.BatchNorm1d(1)

    def forward(self, nodes: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """nodes [p, N, s] -> [p, s]: gate weights (sigmoid of a batch-normed score, L1-normalised over
        the real nodes) pool the nodes. In training the norm's statistics are those of the real nodes."""
        gate = self.gate(nodes).squeeze(2)  # [p, N]
        if self.training:
            real = gate[mask]
            self.bn(real.detach().view(-1, 1))  # only to update the running statistics
            normed = (gate - real.mean()) / torch.sqrt(real.var(unbiased=False) + self.bn.eps)
        else:
            mean, var = self.bn.running_mean, self.bn.running_var
            if mean is None or var is None:  # BatchNorm1d(1) tracks them unless told not to
                raise RuntimeError("AttentionFiltration's batch norm has no running statistics")
            normed = (gate - mean) / torch.sqrt(var + self.bn.eps)
        weights = l1norm(torch.sigmoid(normed * self.bn.weight + self.bn.bias) * mask, dim=-1)
        return l2norm((weights.unsqueeze(1) @ nodes).squeeze(1))


class RegionMatcher(nn.Module):
    """SGR (`module="SGR"`) or SAF (`module="SAF"`): similarity of every image with every caption."""

    def __init__(
        self,
        vocab_size: int,
        module: str = "SGR",
        img_dim: int = 2048,
        num_regions: int = 36,
        word_dim: int = 300,
        embed_size: int = 1024,
        sim_dim: int = 256,
        num_layers: int = 1,
        bi_gru: bool = True,
        sgr_step: int = 3,
        smooth: float = 9.0,
        img_norm: bool = True,
        txt_norm: bool = True,
        caption_chunk: int = 16,
    ):
        super().__init__()
        if module not in ("SGR", "SAF"):
            raise ValueError(f"module={module!r}: expected SGR or SAF")
        self.module_name, self.smooth, self.caption_chunk = module, smooth, caption_chunk
        self.vocab_size, self.img_dim, self.num_regions = vocab_size, img_dim, num_regions  # what it takes
        self.image_encoder = ImageEncoder(img_dim, embed_size, img_norm)
        self.text_encoder = TextEncoder(vocab_size, word_dim, embed_size, num_layers, bi_gru, txt_norm)
        self.image_pool = SelfAttentionPool(embed_size, num_regions)
        self.text_pool = SelfAttentionPool(embed_size)
        self.local_proj = xavier_linear(nn.Linear(embed_size, sim_dim))
        self.global_proj = xavier_linear(nn.Linear(embed_size, sim_dim))
        self.readout = xavier_linear(nn.Linear(sim_dim, 1))
        if module == "SGR":
            self.reasoning = nn.ModuleList(GraphReasoning(sim_dim) for _ in range(sgr_step))
        else:
            self.filtration = AttentionFiltration(sim_dim)

    def encode_images(self, regions: torch.Tensor) -> torch.Tensor:
        return self.image_encoder(regions)

    def encode_texts(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.text_encoder(tokens, lengths)

    def similarity(self, images: torch.Tensor, captions: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """[n_images, n_captions] similarities in (0, 1) from encoded images [n, R, d] and captions
        [m, L, d] (zero-padded). `caption_chunk` captions are scored against all images at once: working
        memory grows as n x caption_chunk x L x d."""
        image_global = self.image_pool(images)
        lengths = lengths.to(captions.device)
        columns = []
        for start in range(0, captions.shape[0], self.caption_chunk):
            lens = lengths[start : start + self.caption_chunk]
            words = captions[start : start + self.caption_chunk, : int(lens.max())]
            word_mask = torch.arange(words.shape[1], device=words.device)[None, :] < lens[:, None]  # [m, L]
            words = words * word_mask.unsqueeze(2)
            text_global = self.text_pool(words, word_mask)  # [m, d]
            context = attend_regions(words, images, self.smooth)  # [n, m, L, d]
            local = l2norm(self.local_proj((context - words.unsqueeze(0)).pow(2)))
            globl = l2norm(self.global_proj((image_global[:, None] - text_global[None]).pow(2)))
            n, m, length, dim = local.shape
            nodes = torch.cat([globl.unsqueeze(2), local], dim=2).reshape(n * m, length + 1, dim)
            node_mask = torch.cat([word_mask.new_ones(m, 1), word_mask], dim=1)
            node_mask = node_mask.unsqueeze(0).expand(n, -1, -1).reshape(n * m, length + 1)
            if self.module_name == "SGR":
                for step in self.reasoning:
                    nodes = step(nodes, node_mask)
                vector = nodes[:, 0]
            else:
                vector = self.filtration(nodes, node_mask)
            columns.append(torch.sigmoid(self.readout(vector)).view(n, m))
        return torch.cat(columns, dim=1)

    def forward(self, regions: torch.Tensor, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.similarity(self.encode_images(regions), self.encode_texts(tokens, lengths), lengths)
