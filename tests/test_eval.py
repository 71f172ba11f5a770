"""facap_eval (and eval_cir's command line) end to end on a small hand-made dataset and a random tiny FashionBLIP-2.

The dataset is built here (not the synthetic set) so that it holds the anomalies the protocol must report:
a target missing from the gallery, an empty caption, a test split without targets.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from datasets import Dataset, DatasetDict
from PIL import Image

import eval_cir
import facap_eval
from facap_eval import EvalError, Protocol, Runtime, format_results_table, load_model_and_processor
from facap_retrieval.ranking import RetrievalError
from facap_dataset.errors import DataError
from facap_dataset.export import DatasetCardInfo, write_dataset
from facap_dataset.images import encode_jpeg
from facap_dataset.schema import GALLERY_FEATURES, TRIPLET_FEATURES

GALLERY_SIZE = 60
NUM_TRIPLETS = 12
WORDS = ["is", "red", "blue", "longer", "shorter", "has", "stripes", "no", "sleeves", "and", "darker"]
PROTOCOL_KEYS = {
    "benchmark", "ties", "headline", "k_above_gallery", "dropped_k_values", "notes", "split", "configs", "query_mode", "caption_join", "caption_variants", "exclude_reference", "k_values",
    "tie_rule", "gallery_sizes", "num_queries", "num_triplets", "skipped_triplets", "missing_targets",
    "references_not_in_gallery", "empty_captions", "hidden_targets", "precision", "device", "batch_size",
    "model", "dataset", "gallery_cache",
}  # fmt: skip

PROTOCOL_FIELDS = {"split", "caption_join", "exclude_reference", "k_values", "k_above_gallery", "breakdowns"}


def _options(options: dict) -> tuple[Protocol, Runtime]:
    """Keyword options split into the Protocol and the Runtime they belong to."""
    protocol = {k: v for k, v in options.items() if k in PROTOCOL_FIELDS}
    runtime = {k: v for k, v in options.items() if k not in PROTOCOL_FIELDS}
    return Protocol(**protocol), Runtime(**runtime)


def evaluate(model, processor, dataset, configs, **options):
    return facap_eval.evaluate(model, processor, dataset, configs, *_options(options))


def evaluate_baseline(kind, processor, model, dataset, configs, **options):
    return facap_eval.evaluate_baseline(kind, model, processor, dataset, configs, *_options(options))


def _image(seed: int) -> dict:
    generator = torch.Generator().manual_seed(seed)
    pixels = (torch.rand(16, 16, 3, generator=generator) * 255).to(torch.uint8).numpy()
    return {"bytes": encode_jpeg(Image.fromarray(pixels).resize((32, 32))), "path": None}


def _captions(index: int) -> list[str]:
    first = " ".join(WORDS[(index + j) % len(WORDS)] for j in range(3))
    return ["" if index == 3 else first, f"is {WORDS[index % len(WORDS)]}"]


def _config(category: str, offset: int) -> dict[str, DatasetDict]:
    ids = [f"{category}{i:03d}" for i in range(GALLERY_SIZE)]
    images = {image_id: _image(offset + i) for i, image_id in enumerate(ids)}
    gallery = Dataset.from_dict(
        {"image_id": ids, "category": [category] * len(ids), "image": [images[i] for i in ids]},
        features=GALLERY_FEATURES,
    )
    references = [ids[2 * i] for i in range(NUM_TRIPLETS)]
    targets = [ids[2 * i + 1] for i in range(NUM_TRIPLETS)]
    targets[5] = f"{category}-not-in-gallery"  # its image exists, the gallery lacks it
    target_images = [images.get(t, _image(999)) for t in targets]

    def triplets(hidden: bool) -> Dataset:
        return Dataset.from_dict(
            {
                "reference_id": references,
                "target_id": [None] * NUM_TRIPLETS if hidden else targets,
                "captions": [_captions(i) for i in range(NUM_TRIPLETS)],
                "category": [category] * NUM_TRIPLETS,
                "reference_image": [images[r] for r in references],
                "target_image": [None] * NUM_TRIPLETS if hidden else target_images,
            },
            features=TRIPLET_FEATURES,
        )

    return {
        category: DatasetDict(validation=triplets(False), test=triplets(True)),
        f"{category}-gallery": DatasetDict(validation=gallery, test=gallery),
    }


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("evalset") / "data"
    card = DatasetCardInfo(
        pretty_name="eval test set", description="test", source="generated", license="mit",
        build_command="tests/test_eval.py", skipped={"missing image": 2},
    )  # fmt: skip
    return write_dataset(out, {**_config("dress", 0), **_config("shirt", 100)}, card=card)


def tiny_model_and_processor():
    """A random tiny FashionBLIP-2 whose images embed apart, and a processor for 32 px images and WORDS."""
    from modeling_fashionblip2 import FashionBlip2Config, FashionBlip2Model, FashionBlip2Processor

    torch.manual_seed(0)
    model = FashionBlip2Model(FashionBlip2Config.from_preset("tiny")).eval()
    with torch.no_grad():  # a freshly initialised tiny model embeds every image alike: spread its weights
        for parameter in model.parameters():
            if parameter.ndim >= 2:
                parameter.normal_(0.0, 0.3)
    return model, FashionBlip2Processor.from_texts(WORDS, image_size=32, max_text_length=32)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A random tiny model and its processor, plus the same saved as a model folder."""
    model, processor = tiny_model_and_processor()
    folder = tmp_path_factory.mktemp("model") / "tiny"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return model, processor, folder


@pytest.fixture(scope="module")
def results(tiny, dataset_dir):
    model, processor, _ = tiny
    return evaluate(model, processor, dataset_dir, ["dress", "shirt"], progress=False, batch_size=5)


def test_results_schema_and_protocol(results, dataset_dir):
    assert set(results["configs"]) == {"dress", "shirt"}
    for metrics in results["configs"].values():
        assert set(metrics) == {"recall@1", "recall@5", "recall@10", "recall@50", "num_queries", "gallery_size"}
        assert metrics["num_queries"] == NUM_TRIPLETS  # one query per triplet, none dropped
        assert metrics["gallery_size"] == GALLERY_SIZE
        assert 0 <= metrics["recall@1"] <= metrics["recall@10"] <= metrics["recall@50"] <= 100
        assert metrics["recall@50"] <= 100 * (NUM_TRIPLETS - 1) / NUM_TRIPLETS + 1e-9  # the missing target misses
    protocol = results["protocol"]
    assert set(protocol) == PROTOCOL_KEYS
    for key in ("gallery_sizes", "num_queries", "missing_targets", "empty_captions", "skipped_triplets"):
        assert set(protocol[key]) == {"dress", "shirt"}
    assert protocol["missing_targets"] == {"dress": 1, "shirt": 1}
    assert protocol["empty_captions"] == {"dress": 1, "shirt": 1}
    assert protocol["dataset"]["skipped_at_build"] == {"missing image": 2}
    assert protocol["dataset"]["name_or_path"] == str(dataset_dir)
    assert len(protocol["model"]["fingerprint"]) == 64
    average = results["average"]
    assert average["recall@10"] == pytest.approx(
        (results["configs"]["dress"]["recall@10"] + results["configs"]["shirt"]["recall@10"]) / 2
    )
    assert average["mean"] == pytest.approx((average["recall@10"] + average["recall@50"]) / 2)
    json.dumps(results)  # serialisable as results.json


def test_recall_matches_brute_force_scores(tiny, dataset_dir, results):
    """Re-derive R@K from the model's own embeddings and a full score matrix."""
    import datasets

    model, processor, _ = tiny
    gallery = datasets.load_dataset(str(dataset_dir), "dress-gallery", split="validation")
    triplets = datasets.load_dataset(str(dataset_dir), "dress", split="validation")
    from facap_dataset.captions import join_captions

    with torch.no_grad():
        candidates = model.get_candidate_embeddings(processor(images=gallery["image"])["pixel_values"])
        texts = [join_captions(c) for c in triplets["captions"]]
        inputs = processor(images=triplets["reference_image"], text=texts)
        queries = model.get_query_embeddings(inputs["pixel_values"], inputs["input_ids"], inputs["attention_mask"])
    scores = queries @ candidates.T
    ids = gallery["image_id"]
    hits = {k: 0 for k in (1, 5, 10, 50)}
    for row, target in zip(scores, triplets["target_id"]):
        if target not in ids:
            continue
        rank = int((row > row[ids.index(target)]).sum())  # random floats: no ties here
        for k in hits:
            hits[k] += rank < k
    for k, count in hits.items():
        assert results["configs"]["dress"][f"recall@{k}"] == pytest.approx(100 * count / NUM_TRIPLETS, abs=1e-4)


def test_training_mode_is_restored(tiny, dataset_dir):
    model, processor, _ = tiny
    model.train()
    try:
        evaluate(model, processor, dataset_dir, "dress", progress=False, k_values=[1])
        assert model.training
    finally:
        model.eval()


def test_exclude_reference_and_both_orders(tiny, dataset_dir, results):
    model, processor, _ = tiny
    excluded = evaluate(model, processor, dataset_dir, "dress", progress=False, exclude_reference=True)
    assert excluded["protocol"]["exclude_reference"] is True
    assert excluded["configs"]["dress"]["recall@10"] >= results["configs"]["dress"]["recall@10"]
    both = evaluate(model, processor, dataset_dir, "dress", progress=False, caption_join="both-orders")
    assert both["configs"]["dress"]["num_queries"] == NUM_TRIPLETS
    assert "averaged" in both["protocol"]["caption_variants"]


def test_baselines(tiny, dataset_dir):
    model, processor, _ = tiny
    image_only = evaluate_baseline("image-only", processor, model, dataset_dir, "dress", progress=False)
    assert image_only["protocol"]["query_mode"] == "image-only"
    text_only = evaluate_baseline("text-only", processor, model, dataset_dir, "dress", progress=False)
    assert text_only["configs"]["dress"]["num_queries"] == NUM_TRIPLETS
    with pytest.raises(EvalError, match="unknown baseline 'random'"):
        evaluate_baseline("random", processor, model, dataset_dir, "dress")
    with pytest.raises(EvalError, match="needs a model"):
        evaluate_baseline("image-only", None, None, dataset_dir, "dress")


def test_cache_is_reused_and_invalidated_by_a_changed_model(tiny, dataset_dir, tmp_path, monkeypatch):
    model, processor, _ = tiny
    first = evaluate(model, processor, dataset_dir, "dress", progress=False, cache_dir=tmp_path)
    assert first["protocol"]["gallery_cache"] == {"dress": "miss"}
    encoded = []
    original = facap_eval.encoding.Encoder.gallery
    monkeypatch.setattr(facap_eval.encoding.Encoder, "gallery", lambda *a, **kw: encoded.append(1) or original(*a, **kw))
    again = evaluate(model, processor, dataset_dir, "dress", progress=False, cache_dir=tmp_path)
    assert again["protocol"]["gallery_cache"] == {"dress": "hit"} and not encoded
    assert again["configs"] == first["configs"]
    changed = copy.deepcopy(model)
    with torch.no_grad():
        changed.query_tokens.add_(0.5)  # changes every candidate embedding
    third = evaluate(changed, processor, dataset_dir, "dress", progress=False, cache_dir=tmp_path)
    assert third["protocol"]["gallery_cache"] == {"dress": "miss"} and encoded
    assert third["protocol"]["model"]["fingerprint"] != first["protocol"]["model"]["fingerprint"]
    assert len([p for p in tmp_path.iterdir() if not p.name.startswith(".")]) == 2


def test_test_split_predictions(tiny, dataset_dir, tmp_path):
    model, processor, _ = tiny
    with pytest.raises(EvalError, match="no targets: pass a predictions folder"):
        evaluate(model, processor, dataset_dir, "dress", split="test", progress=False)
    results = evaluate(model, processor, dataset_dir, "dress", split="test", progress=False, predictions_dir=tmp_path)
    assert results["average"] is None and results["protocol"]["hidden_targets"] == {"dress": True}
    assert "recall@1" not in results["configs"]["dress"]
    entries = json.loads((tmp_path / "cap.dress.test.predictions.json").read_text())
    assert len(entries) == NUM_TRIPLETS
    assert set(entries[0]) == {"candidate", "captions", "ranking"}
    assert len(entries[0]["ranking"]) == 50 and len(set(entries[0]["ranking"])) == 50
    assert "headline" not in format_results_table(results)


def test_validation_predictions_agree_with_recall(tiny, dataset_dir, tmp_path, results):
    evaluate_module = pytest.importorskip("evaluate")
    model, processor, _ = tiny
    evaluate(model, processor, dataset_dir, "dress", progress=False, predictions_dir=tmp_path)
    entries = json.loads((tmp_path / "cap.dress.validation.predictions.json").read_text())
    assert entries[0]["target"] and entries[0]["candidate"] == "dress000"
    metric = evaluate_module.load(str(Path(__file__).resolve().parent.parent / "metrics" / "cir_recall"))
    computed = metric.compute(
        predictions=[e["ranking"] for e in entries], references=[e["target"] for e in entries], k_values=[1, 5, 10, 50]
    )
    dress = results["configs"]["dress"]
    assert computed == pytest.approx({k: v for k, v in dress.items() if k.startswith("recall@")})


def test_report(tiny, dataset_dir, tmp_path):
    model, processor, _ = tiny
    report = tmp_path / "report"
    evaluate(model, processor, dataset_dir, "dress", progress=False, report_dir=report, report_samples=4)
    page = (report / "index.html").read_text()
    pngs = sorted((report / "png").iterdir())
    assert len(pngs) == 4 and all(p.stat().st_size > 0 for p in pngs)
    assert page.count("<figure") == 4 and "miss: target not in the top 10" in page
    first_figure = page.index("<figure")
    assert page[first_figure : first_figure + 30].startswith('<figure class="miss"')  # failures first


def test_table(results):
    table = format_results_table(results)
    lines = table.splitlines()
    assert lines[0].split()[:5] == ["config", "R@1", "R@5", "R@10", "R@50"]
    assert lines[1].startswith("dress") and lines[3].startswith("average")
    assert f"{results['average']['mean']:.2f}" in table
    assert "exclude_reference=False" in table and "missing_targets=2" in table


def test_cli(tiny, dataset_dir, tmp_path, capsys):
    _, _, folder = tiny
    output = tmp_path / "results.json"
    code = eval_cir.main(
        ["--model", str(folder), "--dataset", str(dataset_dir), "--configs", "dress", "--output", str(output),
         "--device", "cpu", "--no-progress", "--k-values", "1,10"]
    )  # fmt: skip
    assert code == 0
    written = json.loads(output.read_text())
    assert set(written["configs"]["dress"]) == {"recall@1", "recall@10", "num_queries", "gallery_size"}
    assert "dress" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--configs", "skirt"], "has no config 'skirt'"),
        (["--split", "train"], "no split 'train'"),
        (["--k-values", "1,61"], "k=61 is larger than the gallery (60 images)"),
        (["--exclude-reference", "--k-values", "60"], "one per query excluded as the reference"),
        (["--k-values", "ten"], "expected a comma-separated list of integers, got 'ten'"),
        (["--batch-size", "0"], "batch size must be >= 1"),
        (["--device", "tpu9"], "'tpu9' is not a torch device"),
    ],
)
def test_cli_bad_input(tiny, dataset_dir, capsys, argv, message):
    _, _, folder = tiny
    base = ["--model", str(folder), "--dataset", str(dataset_dir), "--configs", "dress", "--no-progress"]
    try:
        code = eval_cir.main(base + argv)
    except SystemExit as exit:  # argparse's own checks
        code = exit.code
    assert code == 2
    last_line = capsys.readouterr().err.strip().splitlines()[-1]  # earlier lines: transformers' load progress
    assert "error: " in last_line and message in last_line


def test_not_a_model(tmp_path):
    from transformers import BertConfig, BertModel

    config = BertConfig(vocab_size=10, hidden_size=8, num_hidden_layers=1, num_attention_heads=1, intermediate_size=8)
    BertModel(config).save_pretrained(tmp_path / "bert")
    with pytest.raises(EvalError, match=r"\(model_type='bert'\) is not a FashionBLIP-2-compatible model"):
        load_model_and_processor(tmp_path / "bert", "cpu")
    with pytest.raises(EvalError, match="cannot load a model from"):
        load_model_and_processor(tmp_path / "missing", "cpu")


def test_dataset_without_gallery(tiny, tmp_path):
    model, processor, _ = tiny
    configs = _config("dress", 0)
    del configs["dress-gallery"]["test"]
    configs["toptee"] = configs["dress"]
    card = DatasetCardInfo(pretty_name="partial", description="t", source="t", license="mit", build_command="t")
    folder = write_dataset(tmp_path / "partial", configs, card=card)
    with pytest.raises(DataError, match="has no config 'toptee-gallery'"):
        evaluate(model, processor, folder, "toptee", progress=False)
    with pytest.raises(DataError, match="config 'dress-gallery': no split 'test'"):
        evaluate(model, processor, folder, "dress", split="test", progress=False, predictions_dir=tmp_path / "p")
    assert not (tmp_path / "p").exists()  # nothing half-written


def test_fp16_embeddings(tiny, dataset_dir, tmp_path, results):
    model, processor, _ = tiny
    half = evaluate(model, processor, dataset_dir, "dress", progress=False, precision="fp16", cache_dir=tmp_path)
    assert half["protocol"]["precision"] == "fp16"
    assert half["configs"]["dress"]["recall@50"] == pytest.approx(results["configs"]["dress"]["recall@50"], abs=10)
    from facap_retrieval.index import load_embeddings

    (entry,) = [p for p in tmp_path.iterdir() if not p.name.startswith(".")]
    assert load_embeddings(entry)[0].dtype == torch.float16


def test_bad_options(tiny, dataset_dir):
    model, processor, _ = tiny
    with pytest.raises(EvalError, match="unknown caption join 'third'"):
        evaluate(model, processor, dataset_dir, "dress", caption_join="third")
    with pytest.raises(EvalError, match="unknown precision"):
        evaluate(model, processor, dataset_dir, "dress", precision="int4")
    with pytest.raises(EvalError, match="configs must be distinct names, got 'dress,dress'"):
        evaluate(model, processor, dataset_dir, "dress,dress")
    with pytest.raises(EvalError, match="expected a comma-separated list of configs"):
        evaluate(model, processor, dataset_dir, [])
    with pytest.raises(EvalError, match="unknown breakdown 'colour'"):
        evaluate(model, processor, dataset_dir, "dress", breakdowns=("colour",))
    with pytest.raises(DataError, match="no dataset folder"):
        evaluate(model, processor, dataset_dir / "nowhere", "dress")
    assert issubclass(RetrievalError, facap_eval.errors.FacapError) and issubclass(EvalError, ValueError)


def test_synthetic_set_one_query_per_triplet(tiny_model_dir, synthetic_dir):
    import datasets

    model, processor = load_model_and_processor(tiny_model_dir, "cpu")
    configs = ["dress", "shirt", "toptee"]
    results = evaluate(model, processor, synthetic_dir, configs, k_values=[1, 5, 10], progress=False)
    for config in configs:
        triplets = datasets.load_dataset(str(synthetic_dir), config, split="validation")
        gallery = datasets.load_dataset(str(synthetic_dir), f"{config}-gallery", split="validation")
        assert results["configs"][config]["num_queries"] == len(triplets)
        assert results["configs"][config]["gallery_size"] == len(gallery)
    assert results["protocol"]["missing_targets"] == {c: 0 for c in configs}
    with pytest.raises(RetrievalError, match="k=50 is larger than the gallery"):
        evaluate(model, processor, synthetic_dir, "dress", progress=False)


def test_max_matching_model(dataset_dir, tiny):
    """`matching="max"` keeps per-token candidate embeddings and ranks through `model.score`."""
    from modeling_fashionblip2 import FashionBlip2Config, FashionBlip2Model

    _, processor, _ = tiny
    torch.manual_seed(1)
    model = FashionBlip2Model(FashionBlip2Config.from_preset("tiny", matching="max")).eval()
    results = evaluate(model, processor, dataset_dir, "dress", progress=False, caption_join="both-orders")
    assert results["configs"]["dress"]["num_queries"] == NUM_TRIPLETS
    with pytest.raises(EvalError, match="image-only baseline needs"):
        evaluate_baseline("image-only", processor, model, dataset_dir, "dress", progress=False)


def test_worker_processes_give_the_same_numbers(tiny, dataset_dir, results):
    model, processor, _ = tiny
    with_workers = evaluate(model, processor, dataset_dir, "dress", progress=False, num_workers=1, batch_size=5)
    assert with_workers["configs"]["dress"] == pytest.approx(results["configs"]["dress"])


def test_k_above_gallery_dropped_with_a_note(tiny_model_dir, synthetic_dir):
    """Training-time rule: a K larger than a gallery is dropped for it, with the note in the results."""
    model, processor = load_model_and_processor(tiny_model_dir, "cpu")
    results = evaluate(model, processor, synthetic_dir, ["dress", "shirt"], progress=False, k_above_gallery="drop")
    assert set(results["configs"]["dress"]) == {"recall@1", "recall@5", "recall@10", "num_queries", "gallery_size"}
    assert results["protocol"]["dropped_k_values"] == {"dress": [50], "shirt": [50]}
    assert results["protocol"]["notes"] == [
        "dress: K=50 dropped, larger than its gallery of 28 images",
        "shirt: K=50 dropped, larger than its gallery of 28 images",
    ]
    assert "recall@50" not in results["average"] and results["average"]["mean"] is None
    assert "note: dress: K=50 dropped" in format_results_table(results)
    with pytest.raises(RetrievalError, match="k=50 is larger than the gallery"):
        evaluate(model, processor, synthetic_dir, "dress", progress=False, k_values=[50], k_above_gallery="drop")


def test_gallery_embeddings_share_the_cache_with_evaluate(tiny, dataset_dir, tmp_path, results):
    import datasets

    model, processor, _ = tiny
    gallery = datasets.load_dataset(str(dataset_dir), "dress-gallery", split="validation")
    run = Runtime(progress=False, cache_dir=tmp_path)
    with torch.inference_mode():
        first = facap_eval.gallery_embeddings(model, processor, gallery, name="dress", run=run)
    assert isinstance(first, facap_eval.GalleryEmbeddings) and first.cache == "miss"
    assert first.embeddings.shape[0] == GALLERY_SIZE and first.ids == tuple(gallery["image_id"])
    assert first.fingerprint == results["protocol"]["dataset"]["gallery_fingerprints"]["dress"]
    again = evaluate(model, processor, dataset_dir, "dress", progress=False, cache_dir=tmp_path)
    assert again["protocol"]["gallery_cache"] == {"dress": "hit"}
    assert again["configs"]["dress"] == results["configs"]["dress"]
    with pytest.raises(DataError, match="duplicate image id 'dress000'"):
        facap_eval.gallery_embeddings(model, processor, datasets.concatenate_datasets([gallery, gallery]), run=run)
