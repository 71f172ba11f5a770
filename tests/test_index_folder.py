"""Index folders: IVF-PQ, the manifest (parameters, width, source), refusal of an index built by another model,
whole-folder writes, streaming builds and bad options."""

from __future__ import annotations

import json

import pytest
import torch

from facap_retrieval.index import (
    EMBEDDINGS_FILE,
    FAISS_FILE,
    MANIFEST_FILE,
    CIRIndex,
    IndexMismatchError,
    IndexOptions,
    IndexSource,
    build_index,
    check_index,
    recall_vs_exact,
    save_embeddings,
)
from facap_retrieval.ranking import RetrievalError
from test_index import _unit

SOURCE = IndexSource(model_fingerprint="a" * 64, model="tiny-model", dataset="synthetic", config="dress-gallery",
                     split="validation", gallery_fingerprint="b" * 64)  # fmt: skip


@pytest.fixture(scope="module")
def gallery():
    embeddings = _unit(3000, 24, seed=0)
    return embeddings, [f"img{i:05d}" for i in range(len(embeddings))]


def _near(embeddings, count, seed):
    """Queries that are noisy copies of gallery rows, as a composed query lands near its target."""
    generator = torch.Generator().manual_seed(seed)
    rows = embeddings[torch.randint(0, len(embeddings), (count,), generator=generator)]
    return torch.nn.functional.normalize(rows + 0.3 * torch.randn(rows.shape, generator=generator), dim=1)


def test_ivfpq_records_its_parameters_and_round_trips_without_embeddings(tmp_path, gallery):
    pytest.importorskip("faiss")
    embeddings, ids = gallery
    index = CIRIndex.build(embeddings, ids, backend="faiss-ivfpq", nlist=16, nprobe=16, m=8, nbits=6, source=SOURCE)
    queries = _near(embeddings, 40, seed=1)
    assert recall_vs_exact(index, queries, 10) >= 0.5  # 8 bytes a vector for 96: lossy, but far from random
    index.embeddings = None  # an IVF-PQ index as the streaming builder leaves it: codes only
    folder = index.save(tmp_path / "index")
    assert not (folder / EMBEDDINGS_FILE).exists() and (folder / FAISS_FILE).is_file()
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    assert manifest["backend"] == "faiss-ivfpq" and manifest["embedding_dim"] == 24 and manifest["count"] == 3000
    assert manifest["parameters"] == {"nlist": 16, "nprobe": 16, "m": 8, "nbits": 6, "rerank": 0}
    assert manifest["source"]["model_fingerprint"] == "a" * 64 and manifest["source"]["config"] == "dress-gallery"
    loaded = CIRIndex.load(folder, expect_model="a" * 64, expect_dim=24)
    assert loaded.embeddings is None and loaded.dim == 24 and loaded.source == SOURCE
    assert torch.equal(loaded.search(queries, 5).indices, index.search(queries, 5).indices)
    fewer = CIRIndex.load(folder, nprobe=1)  # a search parameter: no rebuild needed
    assert fewer.options.nprobe == 1 and recall_vs_exact(fewer, queries, 10, embeddings) < recall_vs_exact(loaded, queries, 10, embeddings)
    with pytest.raises(RetrievalError, match="keeps no embeddings, so it cannot be rebuilt as exact"):
        CIRIndex.load(folder, backend="exact")
    with pytest.raises(RetrievalError, match="needs the exact embeddings"):
        recall_vs_exact(loaded, queries, 10)


def test_ivfpq_codes_take_m_times_nbits_bits_a_vector(gallery):
    faiss = pytest.importorskip("faiss")
    embeddings, ids = gallery
    index = CIRIndex.build(embeddings, ids, backend="faiss-ivfpq", nlist=4, m=6, nbits=6)
    invlists = faiss.extract_index_ivf(index._faiss_index).invlists
    assert invlists.code_size == 5  # 6 codes of 6 bits (36 bits), against 24 * 4 = 96 bytes of fp32
    assert index.options.parameters() == {"nlist": 4, "nprobe": 16, "m": 6, "nbits": 6, "rerank": 0}


def test_defaults_are_chosen_from_the_gallery_and_recorded(gallery):
    pytest.importorskip("faiss")
    embeddings, ids = gallery
    options = IndexOptions("faiss-ivfpq").resolved(3000, 24)
    assert options.m == 8 and options.nbits == 8 and options.nlist == 3000 // 39 == 76
    assert IndexOptions("faiss-ivfpq").resolved(100, 3072).m == 1024  # one byte per 3 dimensions
    assert IndexOptions("faiss-ivfpq").resolved(40, 24).nbits == 5  # a small gallery cannot train 256 centroids
    small = CIRIndex.build(embeddings[:40], ids[:40], backend="faiss-ivfpq")
    assert small.options.nbits == 5 and small.search(embeddings[:3], 1).ids[0] == [ids[0]]


def test_refuses_an_index_of_another_model_or_width_naming_both(tmp_path, gallery):
    embeddings, ids = gallery
    folder = CIRIndex.build(embeddings[:50], ids[:50], source=SOURCE).save(tmp_path / "index")
    with pytest.raises(IndexMismatchError) as width:
        CIRIndex.load(folder, expect_dim=32, expect_model="c" * 64, model="big-model")
    assert "24-d" in str(width.value) and "32-d" in str(width.value) and "tiny-model" in str(width.value)
    assert "big-model" in str(width.value) and "build_index" in str(width.value)
    with pytest.raises(IndexMismatchError) as model:
        check_index(folder, model_fingerprint="c" * 64, embedding_dim=24, model="other")
    assert "a" * 12 in str(model.value) and "c" * 12 in str(model.value) and "tiny-model" in str(model.value)
    with pytest.raises(IndexMismatchError, match=f"gallery synthetic/dress-gallery validation .*{'b' * 12}.*{'d' * 12}"):
        check_index(folder, gallery_fingerprint="d" * 64)
    assert check_index(folder, model_fingerprint="a" * 64, embedding_dim=24, gallery_fingerprint="b" * 64).count == 50


def test_an_embeddings_only_folder_loads_but_has_no_fingerprint_to_match(tmp_path, gallery):
    embeddings, ids = gallery
    save_embeddings(tmp_path / "old", embeddings[:10], ids[:10], {"backend": "exact", "options": {}})
    assert CIRIndex.load(tmp_path / "old", expect_dim=24).ids == ids[:10]
    with pytest.raises(IndexMismatchError, match=r"records no model fingerprint \(written by an older version\), not by the model in use \(fingerprint a{12}\)"):
        CIRIndex.load(tmp_path / "old", expect_model="a" * 64)


def test_a_failed_save_keeps_the_previous_index_whole(tmp_path, gallery, monkeypatch):
    pytest.importorskip("faiss")
    embeddings, ids = gallery
    folder = CIRIndex.build(embeddings[:100], ids[:100], source=SOURCE).save(tmp_path / "index")
    before = {path.name: path.read_bytes() for path in folder.iterdir()}
    replacement = CIRIndex.build(embeddings[:200], ids[:200], backend="faiss-flat")

    def killed(*_):
        raise KeyboardInterrupt

    monkeypatch.setattr("faiss.write_index", killed)
    with pytest.raises(KeyboardInterrupt):
        replacement.save(folder)
    assert {path.name: path.read_bytes() for path in folder.iterdir()} == before
    assert [path.name for path in tmp_path.iterdir()] == ["index"]  # no half-written sibling left behind
    monkeypatch.undo()
    assert len(CIRIndex.load(replacement.save(folder))) == 200


def test_never_replaces_a_folder_that_is_not_an_index(tmp_path, gallery):
    embeddings, ids = gallery
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "notes.txt").write_text("mine")
    with pytest.raises(RetrievalError, match="holds files that are not an index"):
        CIRIndex.build(embeddings[:5], ids[:5]).save(tmp_path / "home")
    assert (tmp_path / "home" / "notes.txt").read_text() == "mine"
    with pytest.raises(RetrievalError, match="is not an index folder"):
        CIRIndex.load(tmp_path / "home")


def test_streaming_build_equals_the_in_memory_build(gallery):
    embeddings, ids = gallery
    chunks = [(embeddings[i : i + 700], ids[i : i + 700]) for i in range(0, len(ids), 700)]
    streamed = build_index(chunks, 24, len(ids), IndexOptions())
    assert streamed.ids == ids and torch.equal(streamed.embeddings, embeddings)
    pytest.importorskip("faiss")
    options = IndexOptions("faiss-ivfpq", nlist=8, m=8, nbits=6)
    codes_only = build_index(iter(chunks), 24, len(ids), options, source=SOURCE)
    in_memory = CIRIndex.build(embeddings, ids, "faiss-ivfpq", nlist=8, m=8, nbits=6)
    assert codes_only.embeddings is None and codes_only.ids == ids and codes_only.source == SOURCE
    queries = _near(embeddings, 30, seed=2)
    assert recall_vs_exact(codes_only, queries, 10, embeddings) >= 0.5
    # The streamed index trained on the first chunks, the in-memory one on all: their codes differ a little.
    found = codes_only.search(queries, 1).indices
    assert (found == in_memory.search(queries, 1).indices).float().mean() >= 0.8


@pytest.mark.parametrize(
    ("options", "size", "message"),
    [
        (dict(backend="faiss-ivfpq", m=5), 100, "m=5 must divide the embedding width 24"),
        (dict(backend="faiss-ivfpq", nbits=8), 100, "nbits=8 trains 256 centroids .* gallery has 100 vectors; choose nbits <= 6"),
        (dict(backend="faiss-ivf", nlist=200), 100, r"nlist=200 exceeds the gallery size \(100\)"),
        (dict(backend="faiss-ivfpq", nprobe=0), 100, "nprobe=0 must be a positive integer"),
        (dict(backend="faiss-ivfpq", nbits=17), 100, "nbits=17 must be at most 16"),
    ],
)
def test_bad_options_name_the_option_and_the_limit(options, size, message):
    with pytest.raises(RetrievalError, match=message):
        IndexOptions(**options).resolved(size, 24)
