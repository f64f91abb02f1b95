"""The top-K engines: torch blocks (any block shape) and FAISS exact search find the same candidates."""

import sys

import pytest
import torch
from conftest import requires

from visa.core.errors import VisaError
from visa.method.retrieval import check_index, topk_search


def _embeddings(n_q: int, n_g: int, dim: int = 16):
    gen = torch.Generator().manual_seed(1)
    q = torch.nn.functional.normalize(torch.randn(n_q, dim, generator=gen), dim=1)
    g = torch.nn.functional.normalize(torch.randn(n_g, dim, generator=gen), dim=1)
    return q, g


@pytest.mark.parametrize("chunk, gallery_chunk", [(1, 1), (4, 7), (50, 3), (1000, 1000)])
def test_torch_blocks_equal_dense(chunk, gallery_chunk):
    q, g = _embeddings(37, 53)
    scores, idx = topk_search(q, g, 6, chunk, gallery_chunk_size=gallery_chunk)
    ref_scores, ref_idx = (q @ g.T).topk(6, dim=1)
    torch.testing.assert_close(scores, ref_scores)
    assert torch.equal(idx, ref_idx)


def test_faiss_equals_torch():
    requires("faiss", "faiss")
    q, g = _embeddings(41, 500, dim=32)
    t_scores, t_idx = topk_search(q, g, 10, 8, gallery_chunk_size=64)
    f_scores, f_idx = topk_search(q, g, 10, index="faiss")
    assert f_idx.dtype == torch.long and f_idx.shape == (41, 10)
    assert torch.equal(f_idx, t_idx)
    torch.testing.assert_close(f_scores, t_scores, atol=1e-5, rtol=1e-5)


def test_faiss_reads_half_precision_and_clamps_k():
    requires("faiss", "faiss")
    q, g = _embeddings(3, 5)
    scores, idx = topk_search(q.half(), g.half(), 50, index="faiss")
    assert idx.shape == (3, 5) and scores.dtype == torch.float32
    assert sorted(idx[0].tolist()) == [0, 1, 2, 3, 4]


def test_unknown_index_is_one_clear_error():
    q, g = _embeddings(2, 2)
    with pytest.raises(VisaError, match="retrieval.index='annoy' is not one of torch, faiss"):
        topk_search(q, g, 1, index="annoy")
    with pytest.raises(VisaError, match="gallery_chunk_size=0"):
        topk_search(q, g, 1, gallery_chunk_size=0)


def test_faiss_missing_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)  # import faiss -> ImportError
    with pytest.raises(VisaError, match=r"pip install 'visa-retrieval\[faiss\]'"):
        check_index("faiss")
