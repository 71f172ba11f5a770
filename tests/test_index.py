"""CIRIndex: exact and FAISS search, save/load round trip, measured recall of the approximate backends."""

from __future__ import annotations

import json

import pytest
import torch

from facap_retrieval.index import IDS_FILE, CIRIndex, load_embeddings, recall_vs_exact, save_embeddings
from facap_retrieval.ranking import RetrievalError


def _unit(rows, dim, seed):
    generator = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(rows, dim, generator=generator), dim=1)


@pytest.fixture(scope="module")
def gallery():
    embeddings = _unit(2000, 16, seed=0)
    return embeddings, [f"img{i:05d}" for i in range(len(embeddings))]


def test_exact_search_matches_brute_force(gallery):
    embeddings, ids = gallery
    queries = _unit(7, 16, seed=1)
    result = CIRIndex.build(embeddings, ids).search(queries, 5)
    expected = torch.topk(queries @ embeddings.T, 5).indices
    assert torch.equal(result.indices, expected)
    assert result.ids[0] == [ids[i] for i in expected[0].tolist()]


def test_faiss_flat_equals_exact(gallery):
    pytest.importorskip("faiss")
    embeddings, ids = gallery
    queries = _unit(20, 16, seed=2)
    flat = CIRIndex.build(embeddings, ids, backend="faiss-flat")
    assert recall_vs_exact(flat, queries, 10) == 1.0
    exact = CIRIndex.build(embeddings, ids).search(queries, 10)
    torch.testing.assert_close(flat.search(queries, 10).scores, exact.scores)


@pytest.mark.parametrize("backend", ["faiss-ivf", "faiss-hnsw"])
def test_approximate_backends_have_measured_recall(gallery, backend):
    pytest.importorskip("faiss")
    embeddings, ids = gallery
    index = CIRIndex.build(embeddings, ids, backend=backend)
    recall = recall_vs_exact(index, _unit(50, 16, seed=3), 10)
    assert 0.8 <= recall <= 1.0


def test_save_load_round_trip(tmp_path, gallery):
    pytest.importorskip("faiss")
    embeddings, ids = gallery
    index = CIRIndex.build(embeddings, ids, backend="faiss-ivf", nlist=8, nprobe=2)
    index.save(tmp_path / "index")
    loaded = CIRIndex.load(tmp_path / "index")
    assert loaded.backend == "faiss-ivf" and loaded.options.nlist == 8 and loaded.ids == ids
    queries = _unit(5, 16, seed=4)
    assert torch.equal(loaded.search(queries, 3).indices, index.search(queries, 3).indices)
    assert CIRIndex.load(tmp_path / "index", backend="exact").backend == "exact"


def test_mismatched_ids_file_is_refused(tmp_path):
    save_embeddings(tmp_path, _unit(3, 4, seed=5), ["a", "b", "c"], {"note": "x"})
    assert load_embeddings(tmp_path)[2]["note"] == "x"
    (tmp_path / IDS_FILE).write_text(json.dumps(["a", "c", "b"]))
    with pytest.raises(RetrievalError, match="does not belong"):
        load_embeddings(tmp_path)
    with pytest.raises(RetrievalError, match="is missing"):
        load_embeddings(tmp_path / "nowhere")


def test_bad_index_input():
    vectors = _unit(3, 4, seed=6)
    with pytest.raises(RetrievalError, match="unknown index backend 'annoy'"):
        CIRIndex.build(vectors, ["a", "b", "c"], backend="annoy")
    with pytest.raises(RetrievalError, match="unique"):
        CIRIndex.build(vectors, ["a", "a", "c"])
    with pytest.raises(RetrievalError, match="2 ids for 3 embeddings"):
        CIRIndex.build(vectors, ["a", "b"])
    index = CIRIndex.build(vectors, ["a", "b", "c"])
    with pytest.raises(RetrievalError, match=r"k=4 must be between 1 and the index size \(3\)"):
        index.search(vectors, 4)
    with pytest.raises(RetrievalError, match=r"shape \(Q, 4\)"):
        index.search(torch.ones(2, 5), 1)
