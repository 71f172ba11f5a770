"""What a run writes into its output folder besides checkpoints: `args.json`, `metrics.jsonl`, the exported
models (`best/`, `final/`) and the summary. Every file and folder is written atomically (`facap_io.atomic`)."""

from __future__ import annotations

import argparse
import copy
import json
import shutil
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Sequence

import accelerate
import torch
import transformers

from facap_io.atomic import staged_folder, write_json, write_text

from .checkpoint import CHECKPOINTS
from .errors import TrainingError
from .optim import RunPlan

# Files and folders a run writes into its output dir; --overwrite removes exactly these.
RUN_ARTIFACTS = ("args.json", "metrics.jsonl", CHECKPOINTS, "best", "final", "logs")


def prepare_output_dir(args: argparse.Namespace, accelerator) -> Path:
    """Refuse an output dir holding another run unless --overwrite (then remove that run's artifacts only)."""
    output_dir = args.output_dir
    if output_dir.exists() and not output_dir.is_dir():
        raise TrainingError(f"--output-dir {output_dir} exists and is not a folder")
    existing = sorted(p.name for p in output_dir.iterdir()) if output_dir.is_dir() else []
    resuming_here = args.resume_from_checkpoint is not None and (
        args.resume_from_checkpoint == "latest" or output_dir.resolve() in Path(args.resume_from_checkpoint).resolve().parents
    )
    if existing and not resuming_here and not args.overwrite:
        raise TrainingError(
            f"--output-dir {output_dir} already holds a run ({', '.join(existing[:5])}); pass --overwrite to "
            "replace it or --resume-from-checkpoint latest to continue it"
        )
    accelerator.wait_for_everyone()  # every process has checked before anything is written
    if accelerator.is_main_process:
        if args.overwrite and not resuming_here:
            for name in RUN_ARTIFACTS:
                target = output_dir / name
                if target.is_dir():
                    shutil.rmtree(target)
                elif target.exists():
                    target.unlink()
        try:
            output_dir.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise TrainingError(f"--output-dir {output_dir} cannot be created: {error.strerror or error}") from None
    accelerator.wait_for_everyone()
    return output_dir


def run_config(args: argparse.Namespace, plan: RunPlan, sources: Sequence[str], accelerator) -> dict[str, Any]:
    """The resolved options, the derived plan and the data actually used (`args.json`, trackers, the card)."""
    return {
        "args": {key: (str(value) if isinstance(value, Path) else value) for key, value in vars(args).items()},
        "plan": asdict(plan) | {"mixed_precision": accelerator.mixed_precision,
                                "distributed_type": str(accelerator.distributed_type)},
        "train_sources": list(sources),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "accelerate": accelerate.__version__},
    }


def write_run_config(resolved: dict[str, Any], accelerator, output_dir: Path) -> None:
    if accelerator.is_main_process:
        write_json(output_dir / "args.json", resolved)


def tracker_config(resolved: dict[str, Any]) -> dict[str, Any]:
    """TensorBoard's hparams accept scalars and strings only."""
    flat = flatten({"args": resolved["args"], "plan": resolved["plan"]})
    return {key: value if isinstance(value, (int, float, str, bool)) else str(value) for key, value in flat.items()}


def save_model(model, processor, destination: Path, *, extra: Callable[[Path], Any] | None = None) -> Path:
    """`save_pretrained` of model and processor (with remote code) into `destination`, replacing it whole;
    `extra(folder)` adds files (the model card) before the swap."""
    with staged_folder(destination) as staging, _config_unchanged(model.config):
        model.save_pretrained(staging)
        copy.deepcopy(processor).save_pretrained(staging)  # it, too, records `auto_map` in itself
        if extra is not None:
            extra(staging)
    return destination


@contextmanager
def _config_unchanged(config):
    """Undo what `save_pretrained` records in the live config (`architectures`, `auto_map`, `dtype`): only the
    main process saves, and the processes' models must stay identical (a sharded evaluation compares their
    fingerprints, config included)."""
    before = dict(vars(config))
    try:
        yield
    finally:
        for key in set(vars(config)) - set(before):
            delattr(config, key)
        for key, value in before.items():
            if vars(config).get(key) is not value:
                setattr(config, key, value)


class MetricsLog:
    """`metrics.jsonl` (one JSON object per line, appended and flushed) plus the Accelerate trackers."""

    def __init__(self, accelerator, output_dir: Path, resumed_step: int):
        self.accelerator = accelerator
        self.path = output_dir / "metrics.jsonl"
        if accelerator.is_main_process and self.path.exists():
            # Lines a killed run wrote after its last checkpoint are about to be written again.
            kept = [line for line in self.path.read_text().splitlines() if line and json.loads(line)["step"] <= resumed_step]
            write_text(self.path, "".join(line + "\n" for line in kept))

    def write(self, step: int, record: dict[str, Any]) -> None:
        scalars = {key: value for key, value in flatten(record).items() if isinstance(value, (int, float))}
        self.accelerator.log(scalars, step=step)
        if self.accelerator.is_main_process:
            with self.path.open("a") as stream:
                stream.write(json.dumps({"step": step, **record}) + "\n")


def flatten(record: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in record.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}/"))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def format_summary(summary: dict[str, Any]) -> str:
    lines = [f"done: {summary['steps']} steps in {summary['seconds']} s ({summary['examples_per_step']} examples/step)"]
    if summary["best_step"] is not None:
        lines.append(f"best validation score {summary['best_mean_recall']:.2f} at step {summary['best_step']}")
    if summary["last_eval"]:
        lines.append("last evaluation: " + ", ".join(f"{k} {v:.2f}" for k, v in summary["last_eval"].items() if v is not None))
    lines.append(f"final model: {summary['final_model']}")
    if summary["best_model"]:
        lines.append(f"best model:  {summary['best_model']}")
    lines.append(f"checkpoint:  {summary['last_checkpoint']}")
    lines.append(f"metrics:     {summary['metrics']}")
    if summary.get("pushed"):
        lines.append(f"pushed:      {summary['pushed']}")
    return "\n".join(lines)
