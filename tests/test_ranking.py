import numpy as np
import pytest
import torch

from visa.core.errors import VisaError
from visa.method.fusion import MinMaxFusion, minmax, rerank
from visa.method.metrics import recall_at_k
from visa.method.retrieval import topk_search


@pytest.mark.parametrize("chunk", [1, 3, 7, 1000])
def test_chunked_topk_equals_dense(chunk):
    gen = torch.Generator().manual_seed(0)
    q = torch.nn.functional.normalize(torch.randn(23, 8, generator=gen), dim=1)
    g = torch.nn.functional.normalize(torch.randn(31, 8, generator=gen), dim=1)
    scores, idx = topk_search(q, g, 5, chunk_size=chunk)
    dense = q @ g.T
    ref_scores, ref_idx = dense.topk(5, dim=1)
    torch.testing.assert_close(scores, ref_scores)
    assert torch.equal(idx, ref_idx)


def test_topk_larger_than_gallery_returns_whole_gallery():
    scores, idx = topk_search(torch.eye(3), torch.eye(3), 10, chunk_size=2)
    assert idx.shape == (3, 3) and torch.equal(idx[:, 0], torch.arange(3))


def test_minmax_rows_and_constant_rows():
    x = torch.tensor([[1.0, 3.0, 2.0], [5.0, 5.0, 5.0]])
    torch.testing.assert_close(minmax(x), torch.tensor([[0.0, 1.0, 0.5], [0.0, 0.0, 0.0]]))


def test_fusion_formula_and_bounds():
    base = torch.tensor([[0.9, 0.5, 0.1]])
    text = torch.tensor([[-3.0, 4.0, 0.5]])
    fused = MinMaxFusion(alpha=0.25)(base, text)
    expected = 0.75 * np.array([1.0, 0.5, 0.0]) + 0.25 * np.array([0.0, 1.0, 0.5])
    np.testing.assert_allclose(fused.numpy()[0], expected, rtol=1e-6)
    assert torch.equal(
        rerank(torch.tensor([[7, 8, 9]]), MinMaxFusion(0.0)(base, text)), torch.tensor([[7, 8, 9]])
    )
    assert torch.equal(
        rerank(torch.tensor([[7, 8, 9]]), MinMaxFusion(1.0)(base, text)), torch.tensor([[8, 9, 7]])
    )
    with pytest.raises(VisaError, match="fusion.alpha"):
        MinMaxFusion(1.5)


def test_rerank_keeps_base_order_beyond_k():
    candidates = torch.tensor([[10, 11, 12, 13, 14]])
    fused = torch.tensor([[0.1, 0.9]])  # K = 2: only the first two columns move
    assert rerank(candidates, fused).tolist() == [[11, 10, 12, 13, 14]]


def test_recall_at_k_counts_any_relevant_item():
    ranking = torch.tensor([[3, 1, 2, 0], [0, 1, 2, 3], [2, 3, 0, 1]])
    relevant = [(1,), (3, 0), (1,)]
    r = recall_at_k(ranking, relevant, [1, 2, 4])
    assert r == {
        "R@1": pytest.approx(100 / 3, abs=1e-3),
        "R@2": pytest.approx(200 / 3, abs=1e-3),
        "R@4": 100.0,
    }
