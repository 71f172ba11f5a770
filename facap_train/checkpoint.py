"""Crash-safe, self-verifying checkpoints for `train_accelerate.py`.

A checkpoint is `OUT/checkpoints/checkpoint-<step>/`: Accelerate's `save_state` (model, optimizer, scheduler,
RNG states of every process) plus `trainer_state.json` (step, data position, best metric, and the size and
SHA-256 of every other file of the checkpoint). It is written into a hidden sibling folder and swapped into
place only when complete (`facap_io.atomic`), so a run killed at any moment leaves either the whole
checkpoint or none of it; `latest` means the highest complete step.

Accelerate's own `ProjectConfiguration(automatic_checkpoint_naming=True, total_limit=N)` does not replace
this: its `save_state` writes straight into the final folder (a killed save leaves a partial checkpoint that
its `load_state()` would pick as the newest), deletes the oldest checkpoints before the new one is written,
and names folders by a save counter that `load_state` does not restore (a resumed run's first save collides
with `checkpoint_0`). Folders here are named by optimizer step and pruned only after the new one is complete.

A checkpoint is verified before it is resumed: a missing, truncated or altered file is refused with one line
naming the file and the newest checkpoint of the same run that does verify.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from accelerate.utils import broadcast_object_list

from facap_io.atomic import remove_stale_temporaries, staged_folder, write_text
from facap_io.errors import first_line

from .errors import CheckpointError

CHECKPOINTS = "checkpoints"
STATE_FILE = "trainer_state.json"
_CHECKPOINT_NAME = re.compile(r"^checkpoint-(\d+)$")
# Hidden siblings that facap_io.atomic leaves when a save is killed: `.checkpoint-<step>.<kind>-XXXX`.
_STALE_SIBLING = re.compile(r"^\.(checkpoint-\d+)\.")

__all__ = [
    "CHECKPOINTS",
    "STATE_FILE",
    "CheckpointError",
    "TrainerState",
    "checkpoint_dir",
    "list_checkpoints",
    "newest_verified",
    "prune_checkpoints",
    "record_state",
    "resolve_resume",
    "save_checkpoint",
    "verify_checkpoint",
]


@dataclass(frozen=True)
class TrainerState:
    """Everything besides Accelerate's own state that a resumed run needs.

    `batches_seen` counts per-process DataLoader batches since the start of training: with the batches
    per epoch it gives the epoch and the position inside it. `files` maps each other file of the checkpoint
    (relative path) to `{"size": bytes, "sha256": hex digest}`.
    """

    global_step: int = 0
    batches_seen: int = 0
    global_batch_size: int = 0
    best_metric: float | None = None
    best_step: int | None = None
    files: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def read(cls, checkpoint: Path) -> "TrainerState":
        """The state file of `checkpoint`; CheckpointError naming the file when it is absent or malformed."""
        path = checkpoint / STATE_FILE
        if not path.is_file():
            raise CheckpointError(f"{checkpoint} is not a training checkpoint (no {STATE_FILE})")
        try:
            values = json.loads(path.read_text())
            known = {f.name for f in fields(cls)}
            if not isinstance(values, dict) or set(values) - known:
                raise ValueError(f"unexpected content {sorted(set(values) - known) if isinstance(values, dict) else type(values).__name__}")
            state = cls(**values)
            if not all(isinstance(getattr(state, n), int) for n in ("global_step", "batches_seen", "global_batch_size")):
                raise ValueError("step counters are not integers")
        except (OSError, ValueError, TypeError) as error:
            raise CheckpointError(f"{path} is unreadable: {first_line(error)}") from None
        return state


def checkpoint_dir(output_dir: Path, step: int) -> Path:
    return output_dir / CHECKPOINTS / f"checkpoint-{step}"


def list_checkpoints(output_dir: Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first (hidden folders of interrupted saves are ignored)."""
    return _checkpoints_in(output_dir / CHECKPOINTS)


def _checkpoints_in(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    found = [(int(match.group(1)), path) for path in folder.iterdir() if (match := _CHECKPOINT_NAME.match(path.name))]
    return [path for _, path in sorted(found)]


def _sha256(path: Path) -> str:
    with path.open("rb") as stream:
        return hashlib.file_digest(stream, "sha256").hexdigest()


def _inventory(folder: Path) -> dict[str, dict[str, Any]]:
    """Size and SHA-256 of every file under `folder` except the state file."""
    return {
        path.relative_to(folder).as_posix(): {"size": path.stat().st_size, "sha256": _sha256(path)}
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.name != STATE_FILE
    }


def verify_checkpoint(checkpoint: Path) -> TrainerState:
    """The checkpoint's state when every recorded file is present with its recorded size and SHA-256;
    otherwise CheckpointError naming the first file that is missing or differs."""
    state = TrainerState.read(checkpoint)
    if not state.files:
        raise CheckpointError(f"{checkpoint / STATE_FILE} records no files (an incomplete checkpoint, or one "
                              "written by an older trainer): it cannot be verified")
    for name, expected in state.files.items():
        path = checkpoint / name
        if not path.is_file():
            raise CheckpointError(f"{path} is missing")
        size = path.stat().st_size
        if size != expected.get("size"):
            raise CheckpointError(f"{path} has {size} bytes, {expected.get('size')} were written (truncated?)")
        if _sha256(path) != expected.get("sha256"):
            raise CheckpointError(f"{path} was altered since it was written (SHA-256 differs)")
    return state


def newest_verified(folder: Path, *, below: Path | None = None) -> Path | None:
    """The newest checkpoint in the checkpoints folder `folder` that verifies (older than `below` if given)."""
    candidates = _checkpoints_in(folder)
    if below is not None and below in candidates:
        candidates = candidates[: candidates.index(below)]
    for path in reversed(candidates):
        try:
            verify_checkpoint(path)
        except CheckpointError:
            continue
        return path
    return None


def resolve_resume(spec: str, output_dir: Path, global_batch_size: int | None = None) -> tuple[Path, TrainerState]:
    """`latest` -> the newest complete checkpoint under OUT/checkpoints; otherwise a checkpoint folder.

    The checkpoint is verified; one that does not is refused, naming the newest one that does. With
    `global_batch_size`, a checkpoint trained with another one is refused (its data position would be wrong)."""
    if spec == "latest":
        checkpoints = list_checkpoints(output_dir)
        if not checkpoints:
            raise CheckpointError(f"--resume-from-checkpoint latest: no checkpoint in {output_dir / CHECKPOINTS}")
        path = checkpoints[-1]
    else:
        path = Path(spec)
        if not path.is_dir():
            raise CheckpointError(f"--resume-from-checkpoint {spec}: no such folder")
    try:
        state = verify_checkpoint(path)
    except CheckpointError as error:
        if not (path / STATE_FILE).is_file() and not _CHECKPOINT_NAME.match(path.name):
            raise
        good = newest_verified(path.parent, below=path)
        hint = f"the newest checkpoint that verifies is {good}" if good else f"no older checkpoint in {path.parent} verifies"
        raise CheckpointError(f"refusing to resume from {path}: {error}; {hint}") from None
    if global_batch_size is not None and state.global_batch_size != global_batch_size:
        raise CheckpointError(
            f"{path} was trained with a global batch of {state.global_batch_size} examples per step, this run uses "
            f"{global_batch_size}: the data position cannot be resumed"
        )
    return path, state


def save_checkpoint(accelerator, output_dir: Path, state: TrainerState, *, total_limit: int | None) -> Path:
    """Write a checkpoint atomically on every process, then prune the oldest beyond `total_limit`.

    Every process writes its own RNG state into the one staging folder that the main process creates."""
    final = checkpoint_dir(output_dir, state.global_step)
    main = accelerator.is_main_process
    if main:
        remove_interrupted_saves(output_dir)
    with staged_folder(final) if main else nullcontext() as staging:
        shared = [str(staging) if main else None]
        broadcast_object_list(shared)
        accelerator.save_state(shared[0])
        accelerator.wait_for_everyone()  # every process's files are complete before they are listed
        if main:
            record_state(Path(shared[0]), state, files=_inventory(Path(shared[0])))
    if main:
        prune_checkpoints(output_dir, total_limit)
    accelerator.wait_for_everyone()
    return final


def record_state(checkpoint: Path, state: TrainerState, *, files: dict[str, dict[str, Any]] | None = None) -> None:
    """(Re)write the state file with `files`, or with the file records it already holds (e.g. to record the
    best metric of an evaluation that ran after the save)."""
    if files is None:
        files = TrainerState.read(checkpoint).files
    write_text(checkpoint / STATE_FILE, replace(state, files=files).to_json())


def remove_interrupted_saves(output_dir: Path) -> list[Path]:
    """Hidden folders left by saves that were killed (any step); a swap that never finished is rolled back."""
    folder = output_dir / CHECKPOINTS
    names = {match.group(1) for p in folder.glob(".checkpoint-*") if (match := _STALE_SIBLING.match(p.name))}
    return [stale for name in sorted(names) for stale in remove_stale_temporaries(folder / name)]


def prune_checkpoints(output_dir: Path, total_limit: int | None) -> list[Path]:
    """Delete the oldest complete checkpoints so that at most `total_limit` remain."""
    checkpoints = list_checkpoints(output_dir)
    if total_limit is None or len(checkpoints) <= total_limit:
        return []
    doomed = checkpoints[: len(checkpoints) - total_limit]
    for path in doomed:
        shutil.rmtree(path)
    return doomed
