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
