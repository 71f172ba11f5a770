"""CIRR from a generated release of the real file layout, through the commands a user runs: `build cirr`, then
`eval_cir.py` (Recall and Recall_subset equal to a hand computation) and `train_accelerate.py --configs cirr`
(the trainer, unchanged, trains and evaluates on it)."""

from __future__ import annotations

import json

import pytest

import eval_cir
import train_accelerate
from cirr_release import write_cirr_release
from facap_dataset.cli import main as facap_dataset_main
from test_eval import tiny_model_and_processor
from test_eval_cirr import _hand_ranks

K_VALUES = (1, 5, 10)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("cirr-release")
    write_cirr_release(root / "raw", num_sets=4, num_unused=2)
    assert facap_dataset_main(["build", "cirr", "--raw-dir", str(root / "raw"), "--out", str(root / "cirr")]) == 0
    return root / "cirr"


def test_build_then_eval_cir_equals_a_hand_computation(built, tmp_path):
    model, processor = tiny = tiny_model_and_processor()
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    output = tmp_path / "results.json"
    code = eval_cir.main(["--model", str(folder), "--dataset", str(built), "--configs", "cirr", "--split", "validation",
                          "--k-values", ",".join(map(str, K_VALUES)), "--device", "cpu", "--no-progress",
                          "--output", str(output)])  # fmt: skip
    assert code == 0
    metrics = json.loads(output.read_text())["configs"]["cirr"]
    full, subset, _ = _hand_ranks(tiny, built)
    for k in K_VALUES:
        assert metrics[f"recall@{k}"] == pytest.approx(100 * sum(r < k for r in full) / len(full))
    for k in (1, 2, 3):
        assert metrics[f"recall_subset@{k}"] == pytest.approx(100 * sum(r < k for r in subset) / len(subset))


def test_the_trainer_trains_on_cirr_unchanged(built, tmp_path):
    argv = ["--dataset", str(built), "--configs", "cirr", "--model", "tiny", "--output-dir", str(tmp_path / "run"),
            "--batch-size", "4", "--max-steps", "2", "--num-workers", "0", "--eval-batch-size", "16",
            "--eval-k-values", "1,5,10"]  # fmt: skip
    assert train_accelerate.main(argv) == 0
    assert (tmp_path / "run" / "final" / "model.safetensors").is_file()
    evaluation = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
                  if "eval/cirr" in line]
    assert evaluation and "recall_subset@1" in evaluation[-1]["eval/cirr"]
