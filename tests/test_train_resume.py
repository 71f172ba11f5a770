"""Resume the way Accelerate tests it: run, stop (here: SIGKILL), resume, and the result neither repeats nor
skips work — the final weights and the logged losses equal those of an uninterrupted run."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import train_accelerate as ta
from facap_train.checkpoint import list_checkpoints

REPO = Path(__file__).resolve().parent.parent


# 81 triplets / batch 8 = 10 batches per epoch. Killed at the first checkpoint: step 3 (inside epoch 1; the 11
# steps cross an epoch boundary after the resume point) or step 12 (inside epoch 2: the resumed loader skips
# batches of an epoch whose caption augmentation differs from epoch 1's).
KILL_POINTS = {"in epoch 1": ("11", "3"), "in epoch 2": ("24", "12")}


def _argv(dataset: Path, output_dir: Path, kill_point: str, *extra: str) -> list[str]:
    max_steps, save_steps = KILL_POINTS[kill_point]
    # One DataLoader worker, so that resuming is also checked through worker processes.
    return ["--dataset", str(dataset), "--configs", "dress,shirt,toptee", "--model", "tiny", "--output-dir",
            str(output_dir), "--batch-size", "8", "--max-steps", max_steps, "--save-steps", save_steps, "--no-eval",
            "--num-workers", "1", "--learning-rate", "1e-3", "--adapter-learning-rate", "1e-3", "--logging-steps", "1",
            *extra]  # fmt: skip


def _losses(output_dir: Path) -> dict[int, float]:
    lines = (output_dir / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    steps = [r["step"] for r in records]
    assert len(steps) == len(set(steps)), f"repeated steps in metrics.jsonl: {steps}"
    return {r["step"]: r["train/loss"] for r in records}


def _assert_same_weights(first: Path, second: Path) -> None:
    a, b = load_file(first / "final" / "model.safetensors"), load_file(second / "final" / "model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0, msg=f"{name} differs")


@pytest.mark.parametrize("kill_point", list(KILL_POINTS))
def test_sigkill_then_resume_latest_equals_an_uninterrupted_run(synthetic_dir, tmp_path, kill_point):
    killed = tmp_path / "killed"
    with (tmp_path / "killed.log").open("w") as log:
        process = subprocess.Popen([sys.executable, "train_accelerate.py", *_argv(synthetic_dir, killed, kill_point)],
                                   cwd=REPO, stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
        deadline = time.monotonic() + 240
        while not list_checkpoints(killed) and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert process.returncode == -signal.SIGKILL, (tmp_path / "killed.log").read_text()[-2000:]
    assert list_checkpoints(killed) and not (killed / "final").exists(), "the run was not killed mid-way"

    uninterrupted = tmp_path / "uninterrupted"
    assert ta.main(_argv(synthetic_dir, uninterrupted, kill_point)) == 0
    assert ta.main(_argv(synthetic_dir, killed, kill_point, "--resume-from-checkpoint", "latest")) == 0

    _assert_same_weights(uninterrupted, killed)
    assert _losses(killed) == _losses(uninterrupted)  # no step repeated or skipped, same batches and captions
