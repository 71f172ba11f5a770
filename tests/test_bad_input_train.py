"""The trainer's bad inputs as one table: each ends with one `error:` line naming the culprit and exit code 2,
never a traceback, and nothing outside the output folder changes."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path
from typing import Callable

import pytest

import facap_train.loop
import train_accelerate as ta


def _corrupt_train_shard(sandbox: Path, dataset: Path, monkeypatch) -> list[str]:
    # A fresh folder name: `datasets` keys its Arrow cache by folder name and file metadata, and would serve a
    # same-named folder cached by an earlier run instead of reading the corrupt shard.
    copy = sandbox / f"data-{uuid.uuid4().hex[:12]}"
    shutil.copytree(dataset, copy)
    shard = copy / "dress" / "train-00000-of-00001.parquet"
    shard.write_bytes(b"PAR1" + bytes(range(256)) * 8 + b"PAR1")
    return ["--dataset", str(copy)]


def _delete_output_during_training(sandbox: Path, dataset: Path, monkeypatch) -> list[str]:
    step = facap_train.loop.optimizer_step

    def step_then_delete(*args, **kwargs):
        loss = step(*args, **kwargs)
        if args[-1] == 2:  # after the second optimizer step
            shutil.rmtree(sandbox / "out")
        return loss

    monkeypatch.setattr(facap_train.loop, "optimizer_step", step_then_delete)
    return []


def _no_token(sandbox: Path, dataset: Path, monkeypatch) -> list[str]:
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    return ["--push-to-hub", "org/name"]


def _options(*argv: str) -> Callable[..., list[str]]:
    return lambda sandbox, dataset, monkeypatch: list(argv)


# id: (set-up returning extra options, the text the error line must hold)
CASES = {
    "negative learning rate": (_options("--learning-rate", "-1"), "argument --learning-rate: expected a finite number > 0, got '-1'"),
    "zero adapter learning rate": (_options("--adapter-learning-rate", "0"), "argument --adapter-learning-rate: expected a finite number > 0"),
    "negative weight decay": (_options("--weight-decay", "-0.1"), "argument --weight-decay: expected a finite number >= 0"),
    "max-grad-norm nan": (_options("--max-grad-norm", "nan"), "argument --max-grad-norm: expected a finite number >= 0, got 'nan'"),
    "max-grad-norm inf": (_options("--max-grad-norm", "inf"), "argument --max-grad-norm: expected a finite number >= 0, got 'inf'"),
    "max-grad-norm negative": (_options("--max-grad-norm", "-1"), "argument --max-grad-norm: expected a finite number >= 0, got '-1'"),
    "num-epochs nan": (_options("--max-steps", "", "--num-epochs", "nan"), "--num-epochs"),
    "--hub-private without --push-to-hub": (_options("--hub-private"), "--hub-private needs --push-to-hub"),
    "malformed repo id": (_options("--push-to-hub", "not a repo"), "invalid Hub repo id 'not a repo'"),
    "push without a token": (_no_token, "no Hugging Face token"),
    "K above every gallery": (_options("--eval-k-values", "100"), "dress (validation): k=100 is larger than the gallery (28 images)"),
    "unknown eval split": (_options("--eval-split", "nosuch"), "no split 'nosuch'"),
    "unknown eval config": (_options("--eval-configs", "skirt"), "has no config 'skirt'"),
    "resume from a missing folder": (_options("--resume-from-checkpoint", "nowhere"), "--resume-from-checkpoint nowhere: no such folder"),
    "corrupt Parquet shard": (_corrupt_train_shard, "config 'dress', split 'train' cannot be read"),
    "output folder deleted during training": (_delete_output_during_training, "disappeared during training (at step 2)"),
}


def _snapshot(*roots: Path, skip: Path) -> dict[str, tuple[int, int]]:
    return {
        str(path): (path.stat().st_size, path.stat().st_mtime_ns)
        for root in roots for path in root.rglob("*")
        if path.is_file() and skip not in path.parents
    }  # fmt: skip


def _main(argv: list[str]) -> int:
    try:
        return ta.main(argv)
    except SystemExit as stop:  # the parser's own errors
        return stop.code


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input(case, synthetic_dir, tmp_path, capsys, monkeypatch):
    prepare, expected = CASES[case]
    sandbox, output_dir = tmp_path, tmp_path / "out"
    extra = prepare(sandbox, synthetic_dir, monkeypatch)
    argv = ["--dataset", str(synthetic_dir), "--configs", "dress", "--model", "tiny", "--output-dir", str(output_dir),
            "--batch-size", "4", "--max-steps", "3", "--save-steps", "1", "--logging-steps", "1", "--num-workers", "0",
            "--eval-batch-size", "32", "--eval-k-values", "1,5", *extra]  # fmt: skip
    if "" in argv:  # an option cleared by the case (e.g. --max-steps when it gives --num-epochs)
        at = argv.index("")
        del argv[at - 1:at + 1]
    before = _snapshot(sandbox, synthetic_dir, skip=output_dir)
    code = _main(argv)
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert code == 2 and "Traceback" not in err, err[-3000:]
    assert len(errors) == 1 and expected in errors[0], err[-3000:]
    assert _snapshot(sandbox, synthetic_dir, skip=output_dir) == before
