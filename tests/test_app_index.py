"""`app.py --index DIR` serves whatever backend the index folder was built with (IVF-PQ included), and refuses a
folder built by another model, naming both models."""

from __future__ import annotations

import pytest
import torch

from facap_app import ui
from facap_app.errors import AppError
from facap_app.options import parse_args
from facap_app.startup import create_app
from facap_dataset.loading import open_dataset
from facap_eval import Runtime, gallery_embeddings
from facap_retrieval.cache import model_fingerprint
from facap_retrieval.index import IndexOptions, IndexSource, build_index
from modeling_fashionblip2 import FashionBlip2Config, FashionBlip2Model, load_pretrained

pytest.importorskip("faiss")

CONFIG = "dress-gallery"


def saved_index(model_dir, dataset_dir, folder, backend: str):
    """An index folder as the index-building command writes it: the gallery encoded by the model in `model_dir`,
    streamed into `backend` in chunks (no fp32 copy kept), recording the model and gallery it came from."""
    model, processor = load_pretrained(model_dir)
    gallery = open_dataset(dataset_dir).load_split(CONFIG, "validation")
    with torch.inference_mode():
        embedded = gallery_embeddings(model, processor, gallery, name=CONFIG, run=Runtime(progress=False))
    chunks = [(embedded.embeddings[i : i + 8], embedded.ids[i : i + 8]) for i in range(0, len(embedded.ids), 8)]
    source = IndexSource(model_fingerprint(model, processor), str(model_dir), str(dataset_dir), CONFIG, "validation",
                         embedded.fingerprint)  # fmt: skip
    index = build_index(chunks, embedded.embeddings.shape[1], len(embedded.ids), IndexOptions(backend), source=source)
    return index.save(folder)


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
