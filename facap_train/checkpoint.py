"""Crash-safe checkpoints for `train_accelerate.py`.

A checkpoint is `OUT/checkpoints/checkpoint-<step>/`: Accelerate's `save_state` (model, optimizer,
scheduler, RNG states of every process) plus `trainer_state.json` (step, data position, best metric).
It is written into a hidden temporary folder and renamed into place only when complete, so a run killed
at any moment leaves either the whole checkpoint or none of it; `latest` means the highest complete step.
Exported models (`best/`, `final/`) are `save_pretrained` folders written the same way.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

CHECKPOINTS = "checkpoints"
STATE_FILE = "trainer_state.json"
_CHECKPOINT_NAME = re.compile(r"^checkpoint-(\d+)$")
_TEMP_PREFIX = ".tmp-"


class CheckpointError(ValueError):
    """A resume path that holds no checkpoint, or a checkpoint that does not fit the current run."""


@dataclass(frozen=True)
class TrainerState:
    """Everything besides Accelerate's own state that a resumed run needs.

    `batches_seen` counts per-process DataLoader batches since the start of training: with the batches
    per epoch it gives the epoch and the position inside it.
    """

    global_step: int = 0
    batches_seen: int = 0
    global_batch_size: int = 0
    best_metric: float | None = None
    best_step: int | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def read(cls, checkpoint: Path) -> "TrainerState":
        path = checkpoint / STATE_FILE
        if not path.is_file():
            raise CheckpointError(f"{checkpoint} is not a training checkpoint (no {STATE_FILE})")
        return cls(**json.loads(path.read_text()))


def checkpoint_dir(output_dir: Path, step: int) -> Path:
    return output_dir / CHECKPOINTS / f"checkpoint-{step}"


def list_checkpoints(output_dir: Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first (temporary folders of interrupted saves are ignored)."""
    folder = output_dir / CHECKPOINTS
    if not folder.is_dir():
        return []
    found = [(int(match.group(1)), path) for path in folder.iterdir() if (match := _CHECKPOINT_NAME.match(path.name))]
    return [path for _, path in sorted(found)]


def resolve_resume(spec: str, output_dir: Path) -> Path:
    """`latest` -> the newest complete checkpoint under OUT/checkpoints; otherwise a checkpoint folder."""
    if spec == "latest":
        checkpoints = list_checkpoints(output_dir)
        if not checkpoints:
            raise CheckpointError(f"--resume-from-checkpoint latest: no checkpoint in {output_dir / CHECKPOINTS}")
        return checkpoints[-1]
    path = Path(spec)
    if not path.is_dir():
        raise CheckpointError(f"--resume-from-checkpoint {spec}: no such folder")
    TrainerState.read(path)  # raises when the folder holds no checkpoint
    return path


def save_checkpoint(accelerator, output_dir: Path, state: TrainerState, *, total_limit: int | None) -> Path:
    """Write a checkpoint atomically on every process, then prune the oldest beyond `total_limit`."""
    final = checkpoint_dir(output_dir, state.global_step)
    temporary = final.with_name(_TEMP_PREFIX + final.name)
    if accelerator.is_main_process:
        for stale in final.parent.glob(_TEMP_PREFIX + "checkpoint-*"):  # left over by saves that were killed
            shutil.rmtree(stale)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(temporary))  # each process writes its own RNG state into the same folder
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (temporary / STATE_FILE).write_text(state.to_json())
        if final.exists():  # the same step saved by an earlier, interrupted attempt of this run
            shutil.rmtree(final)
        os.replace(temporary, final)
        prune_checkpoints(output_dir, total_limit)
    accelerator.wait_for_everyone()
    return final


def prune_checkpoints(output_dir: Path, total_limit: int | None) -> list[Path]:
    """Delete the oldest complete checkpoints so that at most `total_limit` remain."""
    checkpoints = list_checkpoints(output_dir)
    if total_limit is None or len(checkpoints) <= total_limit:
        return []
    doomed = checkpoints[: len(checkpoints) - total_limit]
    for path in doomed:
        shutil.rmtree(path)
    return doomed


def save_pretrained_atomic(model, processor, destination: Path) -> Path:
    """`save_pretrained` of model and processor (with remote code) into `destination`, replacing it whole."""
    temporary = destination.with_name(_TEMP_PREFIX + destination.name)
    shutil.rmtree(temporary, ignore_errors=True)
    model.save_pretrained(temporary)
    processor.save_pretrained(temporary)
    if destination.exists():
        previous = destination.with_name(_TEMP_PREFIX + "old-" + destination.name)
        os.replace(destination, previous)
        os.replace(temporary, destination)
        shutil.rmtree(previous)
    else:
        os.replace(temporary, destination)
    return destination
