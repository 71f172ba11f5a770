"""The training loop: batches from the exact data position, optimizer steps, logging, checkpoints, evaluation,
and the end of a run (final/ and the last checkpoint saved before the final evaluation)."""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator

import torch
from accelerate import skip_first_batches
from tqdm.auto import tqdm

from .card import training_facts, write_model_card
from .checkpoint import CHECKPOINTS, TrainerState, newest_verified, record_state, save_checkpoint, verify_checkpoint
from .errors import CheckpointError, NonFiniteLossError, TrainingError
from .evaluation import EvaluationPlan, eval_record, evaluate, selection_metric
from .optim import RunPlan, optimizer_step
from .outputs import MetricsLog, save_model


@dataclass(frozen=True)
class TrainingRun:
    """Everything set-up prepares: the prepared objects, the plans and where the run writes."""

    accelerator: Any
    model: torch.nn.Module
    processor: Any
    optimizer: torch.optim.Optimizer
    scheduler: Any
    loader: torch.utils.data.DataLoader
    plan: RunPlan
    evaluation: EvaluationPlan | None
    output_dir: Path
    sources: tuple[str, ...]
    resume_from: tuple[Path, TrainerState] | None = None  # a verified checkpoint and its state


@dataclass(frozen=True)
class Progress:
    """Where the loop stands: the trainer state, the newest checkpoint and the last evaluation."""

    state: TrainerState
    last_checkpoint: Path | None = None
    last_results: dict | None = None


def set_epoch(loader, epoch: int) -> None:
    """Set the epoch of the loader's sampler and of the dataset (caption augmentation).

    Accelerate's `DataLoaderShard.set_epoch` forwards the epoch to the dataset only when the batch sampler has
    no nested `batch_sampler`: the loader of `skip_first_batches` (a `SkipBatchSampler`) and every loader of a
    multi-process run (a `BatchSamplerShard`) have one, so the dataset would stay at epoch 0."""
    loader.set_epoch(epoch)
    loader.dataset.set_epoch(epoch)


def iterate_batches(loader, batches_per_epoch: int, batches_seen: int) -> Iterator[dict[str, torch.Tensor]]:
    """Endless stream of batches, starting exactly after the `batches_seen`-th (epoch and offset)."""
    epoch, offset = divmod(batches_seen, batches_per_epoch)
    while True:
        current = skip_first_batches(loader, offset) if offset else loader
        # The skipping loader is a fresh one starting at epoch 0: set the epoch on the loader being iterated.
        set_epoch(current, epoch)
        yield from current
        epoch, offset = epoch + 1, 0


def last_good_checkpoint(output_dir: Path, resumed_from: Path | None) -> Path | None:
    """The newest checkpoint of this run that verifies, else the verified checkpoint it resumed from."""
    good = newest_verified(output_dir / CHECKPOINTS)
    if good is None and resumed_from is not None:
        try:
            verify_checkpoint(resumed_from)
            good = resumed_from
        except CheckpointError:
            pass
    return good


def train_steps(run: TrainingRun, args: argparse.Namespace, progress: Progress, metrics: MetricsLog) -> Progress:
    """Train / save / evaluate until the planned step; the last step's checkpoint is saved, its evaluation is
    left to `finish`."""
    accelerator, plan = run.accelerator, run.plan
    state = progress.state
    batches = iterate_batches(run.loader, plan.batches_per_epoch, state.batches_seen)
    window_loss, window_steps, window_start = 0.0, 0, time.monotonic()
    run.model.train()
    with tqdm(total=plan.total_steps, initial=state.global_step, desc="train", dynamic_ncols=True,
              disable=not accelerator.is_local_main_process) as bar:
        while state.global_step < plan.total_steps:
            step = state.global_step + 1
            try:
                loss = optimizer_step(accelerator, run.model, run.optimizer, run.scheduler, batches, plan, step)
            except NonFiniteLossError as error:
                good = last_good_checkpoint(run.output_dir, progress.last_checkpoint)
                keep = f"the last good checkpoint is {good}" if good else "no checkpoint that verifies was saved"
                raise NonFiniteLossError(f"{error}; stopped before applying it; {keep}") from None
            state = replace(state, global_step=step, batches_seen=state.batches_seen + plan.gradient_accumulation_steps)
            window_loss, window_steps = window_loss + loss, window_steps + 1
            bar.update(1)
            last = step == plan.total_steps
            logs = step % args.logging_steps == 0 or last
            saves = step % args.save_steps == 0 or last
            evaluates = run.evaluation is not None and args.eval_steps and step % args.eval_steps == 0 and not last
            if logs or saves or evaluates:
                stop_if_output_gone(accelerator, run.output_dir, step)
            if logs:
                rates = {f"lr/{group['name']}": group["lr"] for group in run.optimizer.param_groups}
                metrics.write(step, {
                    "train/loss": window_loss / window_steps,
                    "train/epoch": state.batches_seen / plan.batches_per_epoch,
                    "train/steps_per_second": window_steps / (time.monotonic() - window_start),
                    **rates,
                })  # fmt: skip
                bar.set_postfix(loss=f"{window_loss / window_steps:.4f}")
                window_loss, window_steps, window_start = 0.0, 0, time.monotonic()
            if saves:  # before evaluating: an evaluation that fails never costs the work
                progress = replace(progress, last_checkpoint=save_checkpoint(
                    accelerator, run.output_dir, state, total_limit=args.save_total_limit))
            progress = replace(progress, state=state)
            if evaluates:
                progress = evaluate_and_keep_best(run, args, progress, metrics)
                state = progress.state
    return progress


def stop_if_output_gone(accelerator, output_dir: Path, step: int) -> None:
    """Stop with one line when the output folder vanished mid-run (the writers would otherwise recreate parts of
    it, or fail with a raw error); every process stops together, as one alone would hang the others."""
    alive = torch.tensor([float(output_dir.is_dir())], device=accelerator.device)
    if accelerator.num_processes > 1:
        alive = accelerator.gather(alive)
    if alive.min().item() == 0:
        raise TrainingError(f"the output folder {output_dir} disappeared during training (at step {step}); "
                            "nothing more can be saved there: restore it and resume, or start again")


def evaluate_and_keep_best(run: TrainingRun, args: argparse.Namespace, progress: Progress, metrics: MetricsLog) -> Progress:
    """Evaluate; on the main process log it, save best/ (with its card) when it beats the best so far, and record
    the best metric in the checkpoint of this step."""
    results = evaluate(run.accelerator, run.model, run.processor, run.evaluation)
    if results is None:  # not the main process
        return progress
    state = progress.state
    metrics.write(state.global_step, eval_record(results))
    mean = selection_metric(results["average"])
    if state.best_metric is None or mean > state.best_metric:
        model = run.accelerator.unwrap_model(run.model)
        training = training_facts(args, run.plan, run.sources, state.global_step)
        with_card = lambda folder: write_model_card(folder, model, args, training, results)  # noqa: E731
        save_model(model, run.processor, run.output_dir / "best", extra=with_card)
        state = replace(state, best_metric=mean, best_step=state.global_step)
    checkpoint = progress.last_checkpoint
    if checkpoint is not None and checkpoint.name == f"checkpoint-{state.global_step}" and checkpoint.parent.parent == run.output_dir:
        record_state(checkpoint, state)
    return replace(progress, state=state, last_results=results)


def finish(run: TrainingRun, args: argparse.Namespace, progress: Progress, metrics: MetricsLog) -> Progress:
    """After the last optimizer step: final/ (with its card) and the last checkpoint are on disk before the final
    evaluation runs, so an evaluation that fails loses nothing; then best/ and final/'s card get the results."""
    accelerator = run.accelerator
    model = accelerator.unwrap_model(run.model)
    stop_if_output_gone(accelerator, run.output_dir, progress.state.global_step)
    training = training_facts(args, run.plan, run.sources, progress.state.global_step)
    final = run.output_dir / "final"
    if accelerator.is_main_process:
        save_model(model, run.processor, final, extra=lambda folder: write_model_card(folder, model, args, training, None))
    accelerator.wait_for_everyone()
    if run.evaluation is None:
        return progress
    progress = evaluate_and_keep_best(run, args, progress, metrics)
    if accelerator.is_main_process:
        write_model_card(final, model, args, training, progress.last_results)
    accelerator.wait_for_everyone()
    return progress
