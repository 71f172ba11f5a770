"""`app.py --index DIR` serves an IVF-PQ index built by the index-building command (`python -m
facap_eval.build_index`), without encoding the gallery, and refuses one built by another model, naming both."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from facap_app import ui
from facap_app.errors import AppError
from facap_app.options import parse_args
from facap_app.startup import create_app
from facap_eval.build_index import main as build_index_main
from facap_retrieval.cache import model_fingerprint
from modeling_fashionblip2 import FashionBlip2Config, FashionBlip2Model, load_pretrained

pytest.importorskip("faiss")

CONFIG = "dress-gallery"


def saved_index(model_dir, dataset_dir, folder, backend: str, *extra: str) -> Path:
    """An index folder written by the index-building command (`python -m facap_eval.build_index`)."""
    code = build_index_main(["--model", str(model_dir), "--dataset", str(dataset_dir), "--config", CONFIG,
                             "--split", "validation", "--out", str(folder), "--backend", backend, "--block-size", "8",
                             "--no-progress", *extra])  # fmt: skip
    assert code == 0
    return folder


def serve_args(model_dir, dataset_dir, index_dir, tmp_path):
    return parse_args(["--model", str(model_dir), "--dataset", str(dataset_dir), "--config", CONFIG,
                       "--index", str(index_dir), "--cache-dir", str(tmp_path / "cache"), "--num-examples", "0"])  # fmt: skip


def test_app_serves_an_ivfpq_index_without_encoding_the_gallery(tiny_model_dir, synthetic_dir, tmp_path):
    folder = saved_index(tiny_model_dir, synthetic_dir, tmp_path / "ivfpq", "faiss-ivfpq")
    _, engine = create_app(serve_args(tiny_model_dir, synthetic_dir, folder, tmp_path), tmp_path / "files")
    catalogue = engine.catalogues["dress"]
    assert catalogue.index.backend == "faiss-ivfpq" and catalogue.index.embeddings is None
    assert catalogue.index_source == f"loaded from {folder} (faiss-ivfpq)"
    assert not (tmp_path / "cache").exists()  # nothing was encoded
    reference = tmp_path / "reference.png"
    catalogue.image(0).save(reference)
    results, status = ui.DemoActions(engine).search(str(reference), "is red with long sleeves", "dress", 5)
    shown = [item["caption"].split(" · ")[-1] for item in results.value]
    query, _ = engine.encode_query(catalogue.image(0), "is red with long sleeves")
    assert shown == [i for i in catalogue.index.search(query, 5).ids[0] if i is not None]
    assert len(shown) == 5 and set(shown) <= set(catalogue.ids)


def test_app_serves_a_reranking_ivfpq_index_with_the_exact_ranking(tiny_model_dir, synthetic_dir, tmp_path):
    folder = saved_index(tiny_model_dir, synthetic_dir, tmp_path / "ivfpq", "faiss-ivfpq", "--rerank", "100")
    _, engine = create_app(serve_args(tiny_model_dir, synthetic_dir, folder, tmp_path), tmp_path / "files")
    index = engine.catalogues["dress"].index
    assert index.options.rerank == 100 and index.embeddings is not None  # mapped from the folder
    query, _ = engine.encode_query(engine.catalogues["dress"].image(1), "is blue")
    # a shortlist of 100 k covers the small gallery: the served top 5 is exact search's
    exact = torch.topk(index.embeddings @ query[0], 5).indices.tolist()
    assert index.search(query, 5).ids[0] == [index.ids[i] for i in exact]


def test_index_of_another_model_is_refused_naming_both(tiny_model_dir, synthetic_dir, tmp_path, tiny_processor):
    torch.manual_seed(1)
    other_dir = tmp_path / "other-model"
    FashionBlip2Model(FashionBlip2Config.from_preset("tiny")).save_pretrained(other_dir)
    tiny_processor.save_pretrained(other_dir)
    folder = saved_index(other_dir, synthetic_dir, tmp_path / "other-index", "faiss-ivfpq")
    ours = model_fingerprint(*load_pretrained(tiny_model_dir))[:12]
    theirs = model_fingerprint(*load_pretrained(other_dir))[:12]
    with pytest.raises(AppError, match=rf"was built by {other_dir} \(fingerprint {theirs}.*not by {tiny_model_dir} \(fingerprint {ours}"):
        create_app(serve_args(tiny_model_dir, synthetic_dir, folder, tmp_path), tmp_path / "files")
