"""Normalisers of the base similarity: each against a small example computed by hand, the blocked search
against the dense formula of its paper, the reference bank (read, refused when it holds a test query), and
retrieve() with a tiny real backbone (the bank encoded through the cache, normalizer=none unchanged)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from conftest import REPO, SMALL_DEMO, read_run, run_cli
from helpers import tiny_models

from visa.backbones.open_clip import OpenClipBackbone
from visa.cache import SQLiteStore
from visa.core.errors import VisaError
from visa.data import Dataset, Item, Query
from visa.data.banks import Bank, read_bank
from visa.method.normalizers import DN, NNN, Blocks, NoNormalizer, QBNorm
from visa.method.retrieval import ranked_candidates, topk_search
from visa.method.retrieve import retrieve
from visa.method.settings import RetrievalSettings, Settings
from visa.method.stages import Run

G = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # two gallery items, orthogonal


def corrected(correction, queries, gallery):
    """The dense corrected scores of a Correction (what the blocked search must reproduce)."""
    q = correction.shift_queries(queries)
    scores = q @ gallery.T
    if correction.bias is not None:
        rows = torch.ones(len(q), dtype=torch.bool)
        if correction.gate is not None:
            rows = correction.gate[(queries @ gallery.T).argmax(1)]
        scores = torch.where(rows[:, None], scores + correction.bias, scores)
    offsets = correction.offsets(q)
    return scores if offsets is None else scores + offsets[:, None]


def test_nnn_subtracts_the_mean_of_each_items_top_k_bank_similarities():
    bank = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    # item 0 is close to two bank queries: its top-2 similarities are 1 and 1 (mean 1); item 1's are 1, 0
    correction = NNN(bank="demo", k=2, weight=1.0).correction(bank, G, Blocks())
    assert torch.allclose(correction.bias, torch.tensor([-1.0, -0.5]))
    query = torch.tensor([[0.6, 0.5]])  # raw: 0.6 vs 0.5, item 0 first; NNN: -0.4 vs 0.0, item 1 first
    scores, order = topk_search(query, G, 2, bias=correction.bias)
    assert order.tolist() == [[1, 0]] and torch.allclose(scores, torch.tensor([[0.0, -0.4]]))
    # k larger than the bank is capped at the bank's size; weight scales the bias
    capped = NNN(bank="demo", k=50, weight=0.5).correction(bank, G, Blocks()).bias
    assert torch.allclose(capped, torch.tensor([-0.5 * 2 / 3, -0.5 / 3]))


def test_qb_norm_normalises_only_queries_whose_top_item_is_in_the_activation_set():
    bank = torch.tensor([[1.0, 0.0], [1.0, 0.0]])  # both bank queries rank item 0 first
    beta = 1.0
    correction = QBNorm(bank="demo", beta=beta, k=1).correction(bank, G, Blocks(chunk_size=1))
    # log Z_0 = log(e^1 + e^1) = 1 + ln 2; log Z_1 = log(e^0 + e^0) = ln 2; bias = -log Z / beta
    assert torch.allclose(correction.bias, torch.tensor([-(1 + math.log(2)), -math.log(2)]))
    assert correction.gate.tolist() == [True, False]
    queries = torch.tensor([[0.9, 0.4], [0.1, 0.9]])
    # query 0's top-1 (item 0) is in the activation set: 0.9 - 1 - ln2 < 0.4 - ln2, item 1 moves first;
    # query 1's top-1 (item 1) is not: its scores stay 0.1 and 0.9
    rows = correction.gate[ranked_candidates(queries, G, 1)[1][:, 0]]
    scores, order = topk_search(queries, G, 2, bias=correction.bias, bias_rows=rows)
    assert order.tolist() == [[1, 0], [1, 0]]
    assert torch.allclose(scores[0], torch.tensor([0.4 - math.log(2), 0.9 - 1 - math.log(2)]))
    assert torch.allclose(scores[1], torch.tensor([0.9, 0.1]))


def test_dn_shifts_queries_and_items_by_half_their_means():
    bank = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # mean (0.5, 0.5)
    gallery = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])  # mean (2/3, 2/3)
    correction = DN(bank="demo", weight=0.5).correction(bank, gallery, Blocks())
    query = torch.tensor([[1.0, 0.0]])  # raw scores 1, 0, 1: items 0 and 2 tie
    # (q - (.25, .25)) . (g - (1/3, 1/3)): item 0: .75*2/3 + .25/3 = 7/12; item 1: -.25 - .5/3 = -5/12;
    # item 2: .75*2/3 - .25*2/3 = 1/3
    expected = torch.tensor([[7 / 12, -5 / 12, 1 / 3]])
    assert torch.allclose(corrected(correction, query, gallery), expected)
    shifted = correction.shift_queries(query)
    scores, order = topk_search(shifted, gallery, 3)
    scores = scores + correction.offsets(shifted)[:, None]
    assert order.tolist() == [[0, 2, 1]] and torch.allclose(scores, torch.tensor([[7 / 12, 1 / 3, -5 / 12]]))


def _dense_qb_norm_order(bank, queries, gallery, beta):
    """QB-Norm as the paper's code writes it, on the full matrices: exp(beta s) / sum over the bank, for the
    queries whose top-1 item is some bank query's top-1 item."""
    train, test = (bank @ gallery.T).double(), (queries @ gallery.T).double()
    active = set(train.argmax(1).tolist())
    normalised = torch.exp(beta * test) / torch.exp(beta * train).sum(0)
    rows = torch.tensor([int(i) in active for i in test.argmax(1)])
    return torch.where(rows[:, None], normalised, test).argsort(dim=1, descending=True)


@pytest.mark.parametrize("index", ["torch", "faiss"])
def test_blocked_search_equals_the_dense_formulas(index):
    torch.manual_seed(0)
    unit = lambda *shape: torch.nn.functional.normalize(torch.randn(*shape), dim=-1)  # noqa: E731
    queries, gallery, bank = unit(23, 16), unit(57, 16), unit(40, 16)
    blocks = Blocks(chunk_size=7, gallery_chunk_size=10)
    search = {"chunk_size": 5, "gallery_chunk_size": 9, "index": index}
    # NNN: the paper's formula on the dense matrix
    nnn = NNN(bank="b", k=5, weight=0.75).correction(bank, gallery, blocks)
    dense_bias = -0.75 * (gallery @ bank.T).topk(5, dim=1).values.mean(1)
    assert torch.allclose(nnn.bias, dense_bias, atol=1e-6)
    scores, order = topk_search(queries, gallery, 10, bias=nnn.bias, **search)
    dense = queries @ gallery.T + dense_bias
    assert torch.equal(order, dense.topk(10, dim=1).indices) and torch.allclose(scores, dense.topk(10).values)
    # QB-Norm: the same order as exp(beta s) / Z for the gated queries
    qb = QBNorm(bank="b", beta=20.0).correction(bank, gallery, blocks)
    rows = qb.gate[ranked_candidates(queries, gallery, 1, **search)[1][:, 0]]
    assert 0 < int(rows.sum()) < len(queries)  # some queries normalised, some not
    _, order = topk_search(queries, gallery, 57, bias=qb.bias, bias_rows=rows, **search)
    assert torch.equal(order, _dense_qb_norm_order(bank, queries, gallery, 20.0))
    # DN
    dn = DN(bank="b").correction(bank, gallery, blocks)
    shifted = dn.shift_queries(queries)
    scores, order = topk_search(shifted, gallery, 10, **search)
    dense = (queries - 0.5 * bank.mean(0)) @ (gallery - 0.5 * gallery.mean(0)).T
    assert torch.equal(order, dense.topk(10, dim=1).indices)
    assert torch.allclose(scores + dn.offsets(shifted)[:, None], dense.topk(10).values, atol=1e-6)


def test_bias_follows_the_gallery_groups_and_exclusions():
    torch.manual_seed(1)
    queries = torch.nn.functional.normalize(torch.randn(4, 8), dim=1)
    gallery = torch.nn.functional.normalize(torch.randn(10, 8), dim=1)
    bias = torch.linspace(-0.5, 0.5, 10)
    groups = {"a": [0, 2, 4, 6, 8], "b": [1, 3, 5, 7, 9]}
    exclude = [(0,), (), (), (1,)]
    scores, idx = ranked_candidates(
        queries, gallery, 3, exclude=exclude, groups=groups, query_groups=["a", "b", "b", "a"], bias=bias
    )
    dense = queries @ gallery.T + bias
    for q, g in enumerate(["a", "b", "b", "a"]):
        members = [m for m in groups[g] if m not in exclude[q]]
        best = sorted(members, key=lambda m: -dense[q, m].item())[:3]
        assert idx[q].tolist() == best and torch.allclose(scores[q], dense[q, best])


def test_settings_are_checked():
    with pytest.raises(VisaError, match="normalizer=nnn needs a reference bank"):
        NNN(bank=None)
    with pytest.raises(VisaError, match="normalizer.beta=0"):
        QBNorm(bank="demo", beta=0)
    with pytest.raises(VisaError, match="bank_limit=0"):
        DN(bank="demo", bank_limit=0)
    assert NoNormalizer().bank is None


# -- the reference bank -------------------------------------------------------------------------------------
def _dataset(texts: list[str], bank: str | None = None) -> Dataset:
    return Dataset("toy", [Item("a", "/a.jpg")], [Query(t, (0,)) for t in texts], bank=bank)


def _no_split(split: str) -> list[Query]:
    raise AssertionError("no split is read here")


def test_bank_from_a_file_the_shipped_demo_and_auto(tmp_path):
    test = _dataset(["A dog on a beach.", "A cat on a sofa."], bank="demo")
    captions = tmp_path / "bank.txt"
    captions.write_text("# comment\nA red car.\n\n  A  blue   boat. \n")
    bank = read_bank(str(captions), test, _no_split, None)
    assert [q.text for q in bank.queries] == ["A red car.", "A blue boat."] and bank.spec == str(captions)
    (tmp_path / "bank.csv").write_text("id,caption\n1,A red car.\n2,A green tree.\n")
    assert [q.text for q in read_bank(str(tmp_path / "bank.csv"), test, _no_split, 1).queries] == [
        "A red car."
    ]
    (tmp_path / "bank.jsonl").write_text('{"captions": ["x y", "z"]}\n{"text": "w"}\n')
    assert [q.text for q in read_bank(str(tmp_path / "bank.jsonl"), test, _no_split, None).queries] == [
        "x y",
        "z",
        "w",
    ]
    shipped = read_bank("auto", test, _no_split, None)
    assert shipped.spec == "demo" and len(shipped.queries) > 100
    with pytest.raises(VisaError, match="names no reference bank"):
        read_bank("auto", _dataset(["q"]), _no_split, None)
    with pytest.raises(VisaError, match="no such file"):
        read_bank(str(tmp_path / "missing.txt"), test, _no_split, None)


def test_a_bank_that_contains_a_test_query_is_refused(tmp_path):
    test = _dataset(["A dog on a beach.", "A cat on a sofa."])
    captions = tmp_path / "bank.txt"
    captions.write_text("A red car.\na cat  on a SOFA.\n")  # a test query, case and spaces aside
    with pytest.raises(VisaError) as error:
        read_bank(str(captions), test, _no_split, None)
    message = str(error.value)
    assert "contains 1 of the test queries" in message and "'a cat on a SOFA.'" in message
    assert "\n" not in message
    # a split of the dataset that is the test split itself
    with pytest.raises(VisaError, match="contains 2 of the test queries"):
        read_bank("split:test", test, lambda split: list(test.queries), None)
    other = read_bank("split:train", test, lambda split: [Query("A horse.", (3,))], None)
    assert other.spec == "split:train" and [q.text for q in other.queries] == ["A horse."]
    # the shipped demo bank holds none of the demo's queries
    from visa.data.demo import DemoDataset

    demo = DemoDataset().load()
    assert len(read_bank("demo", demo, _no_split, None).queries) == 177


# -- retrieve() with a tiny real backbone --------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("normalizers")
    backbone = OpenClipBackbone(model=f"local-dir:{tiny_models.open_clip_dir(root / 'oc')}", device="cpu")
    paths = tiny_models.write_images(root / "images", 6)
    gallery = [Item(f"img{i}", str(p)) for i, p in enumerate(paths)]
    words = ["red", "blue", "dog", "cat", "tree", "car"]
    queries = [Query(f"a {w} photo", (i,)) for i, w in enumerate(words)]
    return backbone, Dataset("tiny", gallery, queries), root


def test_retrieve_with_each_normalizer_and_none_unchanged(tiny, tmp_path):
    backbone, dataset, _ = tiny
    settings = Settings(retrieval=RetrievalSettings(top_k=3), recall_at=[1], progress=False)
    bank = Bank("test", [Query(f"a photo of {w}", ()) for w in ("sky", "grass", "house", "road")])
    store = SQLiteStore(tmp_path / "cache")
    plain = retrieve(Run(dataset, settings, store), backbone)
    none = retrieve(Run(dataset, settings, store), backbone, NoNormalizer(), None)
    assert torch.equal(plain.scores, none.scores) and torch.equal(plain.candidates, none.candidates)
    assert none.metrics == {}
    # the dense reference of each normaliser, from the same (cached) embeddings
    queries = torch.from_numpy(
        np.stack(Run(dataset, settings, store).encode_text(backbone, [q.text for q in dataset.queries]))
    )
    gallery = torch.from_numpy(
        np.stack(Run(dataset, settings, store).encode_visual(backbone, dataset.gallery))
    )
    bank_emb = torch.from_numpy(
        np.stack(Run(dataset, settings, store).encode_text(backbone, [q.text for q in bank.queries]))
    )
    for normalizer in (NNN(bank="test", k=2), QBNorm(bank="test"), DN(bank="test")):
        run = Run(dataset, settings, store)
        got = retrieve(run, backbone, normalizer, bank)
        expected = corrected(normalizer.correction(bank_emb, gallery, Blocks()), queries, gallery)
        assert torch.equal(got.candidates, expected.topk(3, dim=1).indices)
        assert torch.allclose(got.scores, expected.topk(3).values, atol=1e-5)
        assert got.metrics["calls/encode_bank/computed"] + got.metrics["calls/encode_bank/cached"] == 4
        assert run.runner.stats["normalize"].seconds >= 0
    # the bank's embeddings are cached under the encode_text keys: the last run computed none
    assert got.metrics["calls/encode_bank/computed"] == 0


def test_normalizer_with_candidates_given_by_the_dataset(tiny, tmp_path):
    backbone, dataset, _ = tiny
    given = Dataset("given", dataset.gallery, dataset.queries[:2], candidates=[(0, 1, 2), (5, 4, 3)])
    settings = Settings(retrieval=RetrievalSettings(top_k=2), recall_at=[1], progress=False)
    store = SQLiteStore(tmp_path / "cache")
    bank = Bank("test", [Query("a photo of sky", ())])
    got = retrieve(Run(given, settings, store), backbone, NNN(bank="test", k=1), bank)
    assert got.candidates.shape == (2, 3)  # every candidate ranked, none from outside the list
    assert sorted(got.candidates[0].tolist()) == [0, 1, 2] and sorted(got.candidates[1].tolist()) == [3, 4, 5]
    assert bool((got.scores[:, :-1] >= got.scores[:, 1:]).all())


# -- the command line ----------------------------------------------------------------------------------
def test_demo_run_with_nnn_records_the_normalizer_and_its_bank(session_cache, tmp_path):
    result = run_cli(*SMALL_DEMO, "normalizer=nnn", cache=session_cache, run_dir=tmp_path / "nnn")
    assert result.returncode == 0, result.stderr[-3000:]
    metrics, results = read_run(tmp_path / "nnn")
    assert metrics["normalizer"] == "nnn" and metrics["normalizer/bank"] == "demo"
    assert metrics["normalizer/bank_size"] == 177  # visa/data/banks/demo.txt
    assert metrics["calls/encode_bank/computed"] + metrics["calls/encode_bank/cached"] == 177
    assert metrics["time/normalize"] >= 0 and 0 <= metrics["rerank/R@1"] <= 100
    assert all(len(r["base_top"]) == 2 for r in results)


def test_command_line_refuses_a_bank_with_a_test_query(session_cache, tmp_path):
    bank = tmp_path / "bank.txt"
    demo = json.loads((REPO / "visa" / "data" / "demo_images.json").read_text())
    bank.write_text(f"A red car.\n{demo[0]['captions'][0]}\n")
    result = run_cli(
        *SMALL_DEMO,
        "normalizer=qb_norm",
        f"normalizer.bank={bank}",
        cache=session_cache,
        run_dir=tmp_path / "r",
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        f"error: normalizer.bank={bank} contains 1 of the test queries"
    )
