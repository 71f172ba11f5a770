"""`--breakdown text-length` and `--breakdown num-changes`: per-bucket recall and counts in results.json."""

from __future__ import annotations

import json

import pytest
from datasets import DatasetDict, Value

import eval_cir
import facap_eval
from facap_dataset.captions import join_captions
from facap_dataset.export import DatasetCardInfo, write_dataset
from facap_dataset.schema import triplet_features
from facap_eval import Protocol, Runtime
from facap_eval.breakdowns import text_length_bucket, text_length_buckets
from test_eval import NUM_TRIPLETS, _config, tiny_model_and_processor

EDGES = (3, 5)
K_VALUES = (1, 5, 10)


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
    """test_eval's two configs with a `num_changes` column (1, 2 or 3 changes)."""
    configs = {}
    for category, offset in (("dress", 0), ("shirt", 100)):
        for name, splits in _config(category, offset).items():
            if name.endswith("-gallery"):
                configs[name] = splits
                continue
            features = triplet_features({"num_changes": Value("int32")})
            configs[name] = DatasetDict(
                {
                    split: rows.add_column("num_changes", [1 + i % 3 for i in range(len(rows))]).cast(features)
                    for split, rows in splits.items()
                }
            )
    card = DatasetCardInfo(pretty_name="breakdowns", description="t", source="t", license="mit", build_command="t")
    return write_dataset(tmp_path_factory.mktemp("breakdowns") / "data", configs, card=card)


@pytest.fixture(scope="module")
def tiny():
    return tiny_model_and_processor()


@pytest.fixture(scope="module")
def evaluated(tiny, dataset_dir, tmp_path_factory):
    model, processor = tiny
    predictions = tmp_path_factory.mktemp("predictions")
    protocol = Protocol(k_values=K_VALUES, breakdowns=("text-length", "num-changes"), text_length_edges=EDGES)
    results = facap_eval.evaluate(
        model, processor, dataset_dir, ["dress", "shirt"], protocol, Runtime(progress=False, predictions_dir=predictions)
    )
    return results, predictions


def test_bucket_labels():
    assert text_length_buckets((8, 12, 16)) == ["0-7", "8-11", "12-15", "16+"]
    assert [text_length_bucket(n, (8, 12, 16)) for n in (0, 7, 8, 15, 16, 40)] == ["0-7", "0-7", "8-11", "12-15", "16+", "16+"]


def _hits(predictions, config: str) -> list[dict[int, bool]]:
    """Per query, hit at each K, from the prediction files (targets ordered after their ties)."""
    entries = json.loads((predictions / f"cap.{config}.validation.predictions.json").read_text())
    return [{k: e["target"] in e["ranking"][:k] for k in K_VALUES} for e in entries]


def _labels(dataset_dir, config: str, kind: str) -> list[str]:
    import datasets

    triplets = datasets.load_dataset(str(dataset_dir), config, split="validation")
    if kind == "num-changes":
        return [str(n) for n in triplets["num_changes"]]
    return [text_length_bucket(len(join_captions(c).split()), EDGES) for c in triplets["captions"]]


@pytest.mark.parametrize("kind", ["text-length", "num-changes"])
def test_bucket_recall_equals_a_hand_count(evaluated, dataset_dir, kind):
    results, predictions = evaluated
    block = results["breakdowns"][kind]
    assert block["buckets"] == (["0-2", "3-4", "5+"] if kind == "text-length" else ["1", "2", "3"])
    assert block["edges"] == (list(EDGES) if kind == "text-length" else None)
    pooled = {b: [] for b in block["buckets"]}
    for config in ("dress", "shirt"):
        hits, labels = _hits(predictions, config), _labels(dataset_dir, config, kind)
        assert sum(v["num_queries"] for v in block["configs"][config].values()) == NUM_TRIPLETS
        for bucket in block["buckets"]:
            mine = [h for h, label in zip(hits, labels) if label == bucket]
            pooled[bucket] += mine
            cell = block["configs"][config][bucket]
            assert cell["num_queries"] == len(mine)
            for k in K_VALUES:
                expected = 100 * sum(h[k] for h in mine) / len(mine) if mine else None
                assert cell[f"recall@{k}"] == pytest.approx(expected)
    for bucket, hits in pooled.items():  # the average pools every query of a bucket over the configs
        cell = block["average"][bucket]
        assert cell["num_queries"] == len(hits)
        for k in K_VALUES:
            assert cell[f"recall@{k}"] == pytest.approx(100 * sum(h[k] for h in hits) / len(hits) if hits else None)
    assert any(block["average"][b]["num_queries"] for b in block["buckets"][1:])  # not everything in one bucket


def test_buckets_weigh_up_to_the_config_recall(evaluated):
    results, _ = evaluated
    for config, cells in results["breakdowns"]["text-length"]["configs"].items():
        for k in K_VALUES:
            weighted = sum(c["num_queries"] * (c[f"recall@{k}"] or 0) for c in cells.values()) / NUM_TRIPLETS
            assert weighted == pytest.approx(results["configs"][config][f"recall@{k}"])


def test_cli_breakdown(tiny, dataset_dir, tmp_path):
    model, processor = tiny
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    output = tmp_path / "results.json"
    argv = ["--model", str(folder), "--dataset", str(dataset_dir), "--configs", "dress", "--device", "cpu",
            "--no-progress", "--k-values", "1,10", "--breakdown", "text-length,num-changes",
            "--text-length-edges", "4", "--output", str(output)]  # fmt: skip
    assert eval_cir.main(argv) == 0
    breakdowns = json.loads(output.read_text())["breakdowns"]
    assert set(breakdowns) == {"text-length", "num-changes"}
    assert breakdowns["text-length"]["buckets"] == ["0-3", "4+"]
    assert set(breakdowns["text-length"]["average"]["4+"]) == {"num_queries", "recall@1", "recall@10"}
