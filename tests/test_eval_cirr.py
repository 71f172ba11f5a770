"""The CIRR protocol on a tiny CIRR-shaped dataset folder (the schema of `build cirr`): Recall@K over the split
gallery with the reference excluded and Recall_subset@K over each query's image set, both against a hand
computation, and the test-split files in the format of CIRR's evaluation server."""

from __future__ import annotations

import json

import pytest
import torch
from datasets import Dataset, DatasetDict, List, Value

import eval_cir
import facap_eval
from facap_dataset.export import DatasetCardInfo, write_dataset
from facap_dataset.schema import GALLERY_FEATURES, triplet_features
from facap_eval import Protocol, Runtime
from test_eval import WORDS, _image, tiny_model_and_processor

GALLERY_SIZE = 60
SET_SIZE = 6
CIRR_FEATURES = triplet_features({"pair_id": Value("int64"), "img_set_members": List(Value("string"))})
# (reference, target) rows of the gallery; each triplet's image set is the block of 6 holding its reference
PAIRS = [(0, 1), (2, 5), (4, 3), (6, 7), (8, 11), (10, 9), (12, 13), (14, 17), (16, 15), (1, 0)]
TIED = 59  # the gallery's last image has the same bytes as image 1, a target: a tie the protocol must not reward


def _ids() -> list[str]:
    return [f"dev-{i:03d}-img" for i in range(GALLERY_SIZE)]


def _triplets(hidden: bool) -> Dataset:
    ids = _ids()
    images = [_image(500 + (1 if i == TIED else i)) for i in range(GALLERY_SIZE)]
    rows = {name: [] for name in CIRR_FEATURES}
    for pair, (reference, target) in enumerate(PAIRS):
        block = reference // SET_SIZE * SET_SIZE
        rows["reference_id"].append(ids[reference])
        rows["target_id"].append(None if hidden else ids[target])
        rows["captions"].append([" ".join(WORDS[(pair + j) % len(WORDS)] for j in range(4))])
        rows["category"].append("cirr")
        rows["reference_image"].append(images[reference])
        rows["target_image"].append(None if hidden else images[target])
        rows["pair_id"].append(1000 + pair)
        rows["img_set_members"].append(ids[block : block + SET_SIZE])
    return Dataset.from_dict(rows, features=CIRR_FEATURES)


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
    ids = _ids()
    images = [_image(500 + (1 if i == TIED else i)) for i in range(GALLERY_SIZE)]
    gallery = Dataset.from_dict({"image_id": ids, "category": ["cirr"] * len(ids), "image": images}, features=GALLERY_FEATURES)
    configs = {
        "cirr": DatasetDict(validation=_triplets(False), test=_triplets(True)),
        "cirr-gallery": DatasetDict(validation=gallery, test=gallery),
    }
    card = DatasetCardInfo(pretty_name="tiny cirr", description="t", source="t", license="mit", build_command="t")
    return write_dataset(tmp_path_factory.mktemp("cirr") / "data", configs, card=card)


@pytest.fixture(scope="module")
def tiny():
    return tiny_model_and_processor()


def _hand_ranks(tiny, dataset_dir):
    """Pessimistic ranks by brute force: over the gallery minus the reference, and over the set minus it."""
    import datasets

    model, processor = tiny
    gallery = datasets.load_dataset(str(dataset_dir), "cirr-gallery", split="validation")
    triplets = datasets.load_dataset(str(dataset_dir), "cirr", split="validation")
    with torch.no_grad():
        candidates = model.get_candidate_embeddings(processor(images=gallery["image"])["pixel_values"])
        inputs = processor(images=triplets["reference_image"], text=[c[0] for c in triplets["captions"]])
        queries = model.get_query_embeddings(inputs["pixel_values"], inputs["input_ids"], inputs["attention_mask"])
    scores = (queries @ candidates.T).tolist()
    ids = gallery["image_id"]
    full, subset = [], []
    for row, triplet in zip(scores, triplets):
        score = dict(zip(ids, row))
        target, reference = triplet["target_id"], triplet["reference_id"]
        others = [i for i in ids if i not in (target, reference)]
        full.append(sum(score[i] >= score[target] for i in others))
        members = [m for m in triplet["img_set_members"] if m not in (target, reference)]
        subset.append(sum(score[m] >= score[target] for m in members))
    return full, subset, scores


@pytest.fixture(scope="module")
def results(tiny, dataset_dir):
    model, processor = tiny
    return facap_eval.evaluate(model, processor, dataset_dir, ["cirr"], Protocol(), Runtime(progress=False))


def test_recall_and_recall_subset_equal_a_hand_computation(tiny, dataset_dir, results):
    full, subset, scores = _hand_ranks(tiny, dataset_dir)
    metrics = results["configs"]["cirr"]
    for k in (1, 5, 10, 50):
        assert metrics[f"recall@{k}"] == pytest.approx(100 * sum(r < k for r in full) / len(PAIRS))
    for k in (1, 2, 3):
        assert metrics[f"recall_subset@{k}"] == pytest.approx(100 * sum(r < k for r in subset) / len(PAIRS))
    assert scores[0][1] == scores[0][TIED]  # the tie is real, and counted against the target
    average = results["average"]
    assert average["mean"] == pytest.approx((average["recall@5"] + average["recall_subset@1"]) / 2)


def test_protocol_block_records_cirr(results):
    protocol = results["protocol"]
    assert protocol["benchmark"] == "cirr" and protocol["exclude_reference"] is True
    assert protocol["subset_k_values"] == [1, 2, 3] and protocol["ties"] == "pessimistic"
    assert protocol["headline"] == "(R@5 + R_subset@1) / 2 of the config average"
    assert protocol["subset_members_not_in_gallery"] == {"cirr": 0}
    assert "Rs@1" in facap_eval.format_results_table(results)


def test_reference_is_never_retrieved(tiny, dataset_dir, tmp_path):
    model, processor = tiny
    run = Runtime(progress=False, predictions_dir=tmp_path)
    facap_eval.evaluate(model, processor, dataset_dir, "cirr", Protocol(split="test"), run)
    recall = json.loads((tmp_path / "cirr.test.recall.json").read_text())
    subset = json.loads((tmp_path / "cirr.test.recall_subset.json").read_text())
    assert (recall.pop("version"), recall.pop("metric")) == ("rc2", "recall")
    assert (subset.pop("version"), subset.pop("metric")) == ("rc2", "recall_subset")
    assert set(recall) == set(subset) == {str(1000 + pair) for pair in range(len(PAIRS))}
    ids = _ids()
    for pair, (reference, _) in enumerate(PAIRS):
        names, best = recall[str(1000 + pair)], subset[str(1000 + pair)]
        assert len(names) == 50 == len(set(names)) and ids[reference] not in names
        block = reference // SET_SIZE * SET_SIZE
        assert len(best) == 3 and set(best) <= set(ids[block : block + SET_SIZE]) - {ids[reference]}


def test_cli_test_split_needs_predictions_and_writes_server_files(tiny, dataset_dir, tmp_path, capsys):
    model, processor = tiny
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    base = ["--model", str(folder), "--dataset", str(dataset_dir), "--configs", "cirr", "--device", "cpu",
            "--no-progress", "--split", "test"]  # fmt: skip
    assert eval_cir.main(base) == 2
    assert "no targets: pass a predictions folder" in capsys.readouterr().err
    assert eval_cir.main(base + ["--predictions", str(tmp_path / "server")]) == 0
    assert sorted(p.name for p in (tmp_path / "server").iterdir()) == ["cirr.test.recall.json", "cirr.test.recall_subset.json"]
    validation = [arg if arg != "test" else "validation" for arg in base]
    assert eval_cir.main(validation + ["--report", str(tmp_path / "report"), "--report-samples", "3"]) == 0
    assert (tmp_path / "report" / "index.html").is_file() and len(list((tmp_path / "report" / "png").iterdir())) == 3
