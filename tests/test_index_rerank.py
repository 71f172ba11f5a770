"""IVF-PQ re-ranking from memory-mapped embeddings, the streamed safetensors row files it reads, and the
builder's spill of the rows it keeps."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from facap_retrieval.index import EMBEDDINGS_FILE, MANIFEST_FILE, CIRIndex, IndexBuilder, IndexOptions, build_index, recall_vs_exact
from facap_retrieval.ranking import RetrievalError, rank_gallery
from facap_retrieval.vectors import map_rows, write_rows
from test_index import _unit

faiss = pytest.importorskip("faiss")

# Coarse codes (6 bytes for 32 dimensions) on unstructured vectors: the top 10 are near-ties that the codes
# order badly, which is what re-ranking is for.
CODES = dict(nlist=4, nprobe=4, m=8, nbits=6)


@pytest.fixture(scope="module")
def problem():
    embeddings = _unit(4000, 32, seed=3)
    generator = torch.Generator().manual_seed(4)
    targets = torch.randint(0, len(embeddings), (40,), generator=generator)
    queries = torch.nn.functional.normalize(embeddings[targets] + 0.5 * torch.randn(40, 32, generator=generator), dim=1)
    return embeddings, [f"p{i}" for i in range(len(embeddings))], queries


def _mapped(path: Path) -> bool:
    return str(path.resolve()) in Path("/proc/self/maps").read_text()


def test_rerank_restores_the_exact_top_k_the_codes_miss(problem):
    embeddings, ids, queries = problem
    codes = CIRIndex.build(embeddings, ids, "faiss-ivfpq", **CODES)
    reranked = CIRIndex.build(embeddings, ids, "faiss-ivfpq", rerank=30, **CODES)
    without, with_rerank = recall_vs_exact(codes, queries, 10), recall_vs_exact(reranked, queries, 10)
    assert without < 0.5 and with_rerank >= 0.95, (without, with_rerank)
    found = reranked.search(queries, 10)
    exact_scores = torch.einsum("qkd,qd->qk", embeddings[found.indices], queries)
    assert torch.allclose(found.scores, exact_scores, atol=1e-6)  # scored exactly, not by code
    assert torch.all(found.scores[:, :-1] >= found.scores[:, 1:])  # best first
    # with a shortlist as long as the gallery, re-ranking is exact search
    whole = CIRIndex.build(embeddings, ids, "faiss-ivfpq", rerank=400, **CODES)
    assert torch.equal(whole.search(queries, 10).indices, rank_gallery(queries, embeddings, 10).indices)


def test_a_saved_reranking_index_maps_its_embeddings_and_searches_the_same(tmp_path, problem):
    embeddings, ids, queries = problem
    chunks = [(embeddings[i : i + 900], ids[i : i + 900]) for i in range(0, len(ids), 900)]
    built = build_index(chunks, 32, len(ids), IndexOptions("faiss-ivfpq", rerank=20, **CODES), scratch_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []  # the spill is an unlinked file: nothing to leave behind
    assert torch.equal(built.embeddings, embeddings)
    folder = built.save(tmp_path / "index")
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    assert manifest["has_embeddings"] and manifest["parameters"]["rerank"] == 20
    loaded = CIRIndex.load(folder)
    if Path("/proc/self/maps").is_file():
        assert _mapped(folder / EMBEDDINGS_FILE)  # read through a mapping, not into memory
    assert torch.equal(loaded.search(queries, 10).indices, built.search(queries, 10).indices)
    assert CIRIndex.load(folder, rerank=0).options.rerank == 0  # a search parameter: changed without a rebuild
    exact = CIRIndex.load(folder, backend="exact")  # rebuilt from the kept rows; rerank is not carried over
    assert exact.backend == "exact" and torch.equal(exact.search(queries, 10).indices, rank_gallery(queries, embeddings, 10).indices)
    with safe_open(folder / EMBEDDINGS_FILE, framework="pt") as handle:  # the streamed file is plain safetensors
        assert torch.equal(handle.get_tensor("embeddings"), embeddings)


def test_rerank_needs_kept_embeddings(tmp_path, problem):
    embeddings, ids, _ = problem
    with pytest.raises(RetrievalError, match="rerank=5 re-scores with the embeddings: the index must keep them"):
        IndexBuilder(32, IndexOptions("faiss-ivfpq", rerank=5, **CODES), len(ids), keep_embeddings=False)
    with pytest.raises(RetrievalError, match="rerank=2 applies to faiss-ivfpq only"):
        IndexOptions("faiss-hnsw", rerank=2)
    with pytest.raises(RetrievalError, match="rerank=-1 must be 0"):
        IndexOptions("faiss-ivfpq", rerank=-1)
    codes_only = build_index([(embeddings, ids)], 32, len(ids), IndexOptions("faiss-ivfpq", **CODES))
    folder = codes_only.save(tmp_path / "codes")
    with pytest.raises(RetrievalError, match="keeps no embeddings, so it cannot re-rank"):
        CIRIndex.load(folder, rerank=10)


def test_row_files_refuse_wrong_counts_and_damaged_files(tmp_path):
    rows = _unit(10, 6, seed=1)
    path = tmp_path / "rows.safetensors"
    with pytest.raises(RetrievalError, match="9 rows written for a \\(10, 6\\) tensor"):
        write_rows(path, [rows[:9]], (10, 6), torch.float32, key="embeddings", metadata={})
    write_rows(path, [rows[:4], rows[4:]], (10, 6), torch.float32, key="embeddings", metadata={"who": "test"})
    mapped, metadata = map_rows(path, key="embeddings")
    assert metadata == {"who": "test"} and torch.equal(torch.from_numpy(mapped), rows)
    path.write_bytes(path.read_bytes()[:-8])
    with pytest.raises(RetrievalError, match="truncated or damaged"):
        map_rows(path, key="embeddings")
    path.write_bytes(b"\xff" * 16)
    with pytest.raises(RetrievalError, match="not a safetensors file"):
        map_rows(path, key="embeddings")
