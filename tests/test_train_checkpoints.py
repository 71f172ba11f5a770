"""Checkpoints record their files (size, SHA-256) when written and are verified before a resume: an incomplete or
altered checkpoint is refused with one line naming the file and the newest checkpoint that verifies."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import train_accelerate as ta
from facap_train.checkpoint import list_checkpoints, verify_checkpoint
from facap_train.loop import last_good_checkpoint


def _argv(dataset: Path, output_dir: Path, *extra: str) -> list[str]:
    return ["--dataset", str(dataset), "--configs", "dress,shirt,toptee", "--model", "tiny", "--output-dir",
            str(output_dir), "--batch-size", "8", "--max-steps", "4", "--save-steps", "2", "--no-eval",
            "--num-workers", "0", *extra]  # fmt: skip


@pytest.fixture(scope="module")
def two_checkpoints(synthetic_dir, tmp_path_factory) -> Path:
    output_dir = tmp_path_factory.mktemp("ckpt") / "run"
    assert ta.main(_argv(synthetic_dir, output_dir)) == 0
    return output_dir


def _zero_4kb(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[1000:1000 + 4096] = bytes(4096)
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


CORRUPTIONS = {
    "random_states_0.pkl deleted": ("random_states_0.pkl", lambda p: p.unlink(), "is missing"),
    "4 KB of model.safetensors zeroed": ("model.safetensors", _zero_4kb, "was altered since it was written"),
    "model.safetensors truncated": ("model.safetensors", _truncate, "(truncated?)"),
    "optimizer.bin truncated": ("optimizer.bin", _truncate, "(truncated?)"),
    "scheduler.bin truncated": ("scheduler.bin", _truncate, "(truncated?)"),
    "trainer_state.json not JSON": ("trainer_state.json", lambda p: p.write_text("{not json"), "is unreadable"),
    "trainer_state.json without file records": (
        "trainer_state.json",
        lambda p: p.write_text(json.dumps({**json.loads(p.read_text()), "files": {}})),
        "records no files",
    ),
}


def test_checkpoints_record_every_file_with_size_and_sha256(two_checkpoints):
    state = verify_checkpoint(two_checkpoints / "checkpoints" / "checkpoint-4")
    assert set(state.files) == {"model.safetensors", "optimizer.bin", "scheduler.bin", "random_states_0.pkl"}
    model = two_checkpoints / "checkpoints" / "checkpoint-4" / "model.safetensors"
    assert state.files["model.safetensors"]["size"] == model.stat().st_size
    assert len(state.files["model.safetensors"]["sha256"]) == 64


@pytest.mark.parametrize("case", list(CORRUPTIONS))
def test_an_altered_checkpoint_is_refused_naming_the_file_and_the_newest_good_one(
    two_checkpoints, synthetic_dir, tmp_path, capsys, case
):
    run = tmp_path / "run"
    shutil.copytree(two_checkpoints, run)
    name, corrupt, problem = CORRUPTIONS[case]
    corrupt(run / "checkpoints" / "checkpoint-4" / name)
    code = ta.main(_argv(synthetic_dir, run, "--resume-from-checkpoint", "latest", "--max-steps", "6"))
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert str(run / "checkpoints" / "checkpoint-4" / name) in lines[0] and problem in lines[0]
    assert f"the newest checkpoint that verifies is {run / 'checkpoints' / 'checkpoint-2'}" in lines[0]
    assert not (run / "checkpoints" / "checkpoint-6").exists()


def test_the_nan_message_names_only_a_checkpoint_that_verifies(two_checkpoints, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(two_checkpoints, run)
    assert last_good_checkpoint(run, None) == run / "checkpoints" / "checkpoint-4"
    _zero_4kb(run / "checkpoints" / "checkpoint-4" / "model.safetensors")
    assert last_good_checkpoint(run, None) == run / "checkpoints" / "checkpoint-2"
    _truncate(run / "checkpoints" / "checkpoint-2" / "optimizer.bin")
    assert last_good_checkpoint(run, None) is None
    assert [p.name for p in list_checkpoints(run)] == ["checkpoint-2", "checkpoint-4"]
