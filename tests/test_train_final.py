"""Nothing is lost at the end of a run: evaluation options are checked against the data before step 1, cut-offs
above a gallery's size are dropped for that gallery (noted and recorded), and `final/` and the last checkpoint
are on disk before the final evaluation, whatever happens to it."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest

import facap_train.loop
import train_accelerate as ta
from facap_dataset.export import DatasetCardInfo, write_dataset
from facap_retrieval.ranking import RetrievalError
from facap_train.checkpoint import list_checkpoints, verify_checkpoint


@pytest.fixture(scope="module")
def gallery_of_35(synthetic_dir, tmp_path_factory) -> Path:
    """The synthetic dress config with a validation gallery of 35 images (the issue's case: R@50 > gallery)."""
    dress = datasets.load_dataset(str(synthetic_dir), "dress")
    gallery = datasets.load_dataset(str(synthetic_dir), "dress-gallery")
    validation = datasets.concatenate_datasets([gallery["validation"], gallery["train"].select(range(7))])
    assert len(validation) == 35 and len(set(validation["image_id"])) == 35
    return write_dataset(
        tmp_path_factory.mktemp("gallery35") / "data",
        {"dress": datasets.DatasetDict(train=dress["train"], validation=dress["validation"]),
         "dress-gallery": datasets.DatasetDict(validation=validation)},
        card=DatasetCardInfo(pretty_name="gallery35", description="", source="", license="other", build_command=""),
    )  # fmt: skip


def _argv(dataset: Path, output_dir: Path, *extra: str) -> list[str]:
    # The command, default --eval-k-values (1,5,10,50).
    return ["--dataset", str(dataset), "--configs", "dress", "--model", "tiny", "--max-steps", "3", "--batch-size", "4",
            "--output-dir", str(output_dir), "--num-workers", "0", "--save-steps", "100", *extra]  # fmt: skip


def test_cut_offs_above_the_gallery_are_dropped_noted_and_recorded(gallery_of_35, tmp_path, capsys):
    output_dir = tmp_path / "run"
    assert ta.main(_argv(gallery_of_35, output_dir)) == 0
    err = capsys.readouterr().err
    assert f"note: evaluation of {gallery_of_35}: dress: K=50 dropped, larger than its gallery of 35 images" in err
    records = [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]
    evaluation = next(r for r in records if "eval/average" in r)
    assert evaluation["step"] == 3 and evaluation["eval/dropped_k_values"] == {"dress": [50]}
    assert set(evaluation["eval/dress"]) == {"recall@1", "recall@5", "recall@10"}
    assert (output_dir / "final" / "model.safetensors").is_file() and (output_dir / "best" / "README.md").is_file()
    assert [p.name for p in list_checkpoints(output_dir)] == ["checkpoint-3"]


def test_a_failing_final_evaluation_leaves_final_and_the_last_checkpoint(gallery_of_35, tmp_path, capsys, monkeypatch):
    def broken(*args, **kwargs):
        raise RetrievalError("k=50 is larger than the gallery")

    monkeypatch.setattr(facap_train.loop, "evaluate", broken)
    output_dir = tmp_path / "run"
    code = ta.main(_argv(gallery_of_35, output_dir))
    err = capsys.readouterr().err
    assert code == 2 and "error: k=50 is larger than the gallery" in err and "Traceback" not in err
    assert (output_dir / "final" / "model.safetensors").is_file() and (output_dir / "final" / "README.md").is_file()
    (checkpoint,) = list_checkpoints(output_dir)
    assert checkpoint.name == "checkpoint-3" and verify_checkpoint(checkpoint).global_step == 3


def test_cut_offs_that_no_gallery_answers_are_refused_before_step_1(gallery_of_35, tmp_path, capsys):
    output_dir = tmp_path / "run"
    code = ta.main(_argv(gallery_of_35, output_dir, "--eval-k-values", "40,60"))
    err = capsys.readouterr().err
    assert code == 2 and "error: dress (validation): k=40 is larger than the gallery (35 images)" in err
    assert not list_checkpoints(output_dir) and not (output_dir / "final").exists()


def test_evaluating_during_training_does_not_change_the_training(synthetic_dir, tmp_path):
    """Checkpoints are saved before evaluating, so evaluation must leave the training randomness alone (its data
    loaders draw seeds from the global RNG that dropout uses): the same run with and without evaluations ends
    with the same weights."""
    import torch
    from safetensors.torch import load_file

    def run(name: str, *extra: str) -> dict:
        output_dir = tmp_path / name
        argv = ["--dataset", str(synthetic_dir), "--configs", "dress,shirt,toptee", "--model", "tiny", "--output-dir",
                str(output_dir), "--batch-size", "8", "--max-steps", "4", "--num-workers", "0", "--eval-batch-size",
                "32", "--eval-k-values", "1,5,10", "--save-steps", "2", *extra]  # fmt: skip
        assert ta.main(argv) == 0
        return load_file(output_dir / "final" / "model.safetensors")

    evaluated, plain = run("evaluated", "--eval-steps", "1"), run("plain", "--no-eval")
    assert evaluated.keys() == plain.keys()
    for name in plain:
        assert torch.equal(evaluated[name], plain[name]), name
