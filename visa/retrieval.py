"""Top-K search without the full query x gallery score matrix: queries and gallery are scored in chunks."""

from __future__ import annotations

import torch


@torch.no_grad()
def topk_search(
    queries: torch.Tensor, gallery: torch.Tensor, k: int, chunk_size: int = 1024
) -> tuple[torch.Tensor, torch.Tensor]:
    """(scores, indices), each [num_queries, min(k, num_gallery)], best first, by dot product.

    Peak extra memory is one [chunk_size x chunk_size] block plus the running top-k, whatever the sizes.
    """
    k = min(k, gallery.shape[0])
    all_scores, all_indices = [], []
    for q_start in range(0, queries.shape[0], chunk_size):
        q = queries[q_start : q_start + chunk_size]
        best_scores = torch.full((q.shape[0], 0), float("-inf"), dtype=torch.float32, device=q.device)
        best_indices = torch.zeros((q.shape[0], 0), dtype=torch.long, device=q.device)
        for g_start in range(0, gallery.shape[0], chunk_size):
            block = (q @ gallery[g_start : g_start + chunk_size].T).float()
            s, i = block.topk(min(k, block.shape[1]), dim=1)
            merged_scores = torch.cat([best_scores, s], dim=1)
            merged_indices = torch.cat([best_indices, i + g_start], dim=1)
            best_scores, order = merged_scores.topk(min(k, merged_scores.shape[1]), dim=1)
            best_indices = merged_indices.gather(1, order)
        all_scores.append(best_scores.cpu())
        all_indices.append(best_indices.cpu())
    return torch.cat(all_scores), torch.cat(all_indices)


@torch.no_grad()
def ranked_candidates(
    queries: torch.Tensor,
    gallery: torch.Tensor,
    depth: int,
    chunk_size: int = 1024,
    exclude: list[tuple[int, ...]] | None = None,
    groups: dict[str, list[int]] | None = None,
    query_groups: list[str | None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`topk_search` for hybrid-modal datasets: (scores, gallery indices) [num_queries, depth'], best first.

    `exclude[q]`: gallery indices left out of query q's ranking (CIRR: its reference image). `groups`: named
    parts of the gallery; query q ranks only the part `query_groups[q]` (FashionIQ: its category). depth'
    is `depth`, or less when a part (minus exclusions) is smaller.
    """
    n = queries.shape[0]
    exclude = exclude or [()] * n
    if groups is None:
        parts = [(list(range(n)), list(range(gallery.shape[0])))]
    else:
        assert query_groups is not None
        parts = [([q for q in range(n) if query_groups[q] == g], members) for g, members in groups.items()]
    results: list[tuple[list[int], torch.Tensor, torch.Tensor]] = []
    for query_rows, members in parts:
        if not query_rows:
            continue
        extra = max(len(exclude[q]) for q in query_rows)
        member_index = torch.as_tensor(members, dtype=torch.long)
        scores, local = topk_search(queries[query_rows], gallery[member_index], depth + extra, chunk_size)
        indices = member_index[local]
        keep = min(depth, len(members) - extra)
        rows_s, rows_i = [], []
        for row, q in enumerate(query_rows):
            mask = ~torch.isin(indices[row], torch.as_tensor(exclude[q], dtype=torch.long))
            rows_s.append(scores[row][mask][:keep])
            rows_i.append(indices[row][mask][:keep])
        results.append((query_rows, rows_s, rows_i))
    width = min(len(r) for _, rows_s, _ in results for r in rows_s)
    out_s = torch.empty((n, width), dtype=torch.float32)
    out_i = torch.empty((n, width), dtype=torch.long)
    for query_rows, rows_s, rows_i in results:
        for q, s, i in zip(query_rows, rows_s, rows_i):
            out_s[q], out_i[q] = s[:width], i[:width]
    return out_s, out_i
