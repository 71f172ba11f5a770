"""Train FashionBLIP-2 for composed image retrieval with Accelerate.

    accelerate launch train_accelerate.py --dataset DIR --configs dress,shirt,toptee --model demo \\
        --output-dir runs/demo --max-steps 1000 --batch-size 64

One process or many (DDP, FSDP, DeepSpeed through `accelerate config`); `--batch-size` is per device.
The run folder receives `args.json`, `metrics.jsonl`, `checkpoints/checkpoint-<step>/` (verified before
`--resume-from-checkpoint latest|PATH` resumes them), `best/` (best validation score, when evaluating) and
`final/`: `save_pretrained` folders with a model card, loadable with
`AutoModel.from_pretrained(..., trust_remote_code=True)`; `--push-to-hub ORG/NAME` uploads best/ (else final/).
The library code is the `facap_train` package; this file is the chain of calls.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any, Sequence

from accelerate.utils import set_seed

from facap_dataset.errors import DataError
from facap_dataset.loading import open_dataset
from facap_io.errors import FacapError, first_line
from facap_retrieval.ranking import RetrievalError
from facap_train.accelerator import build_accelerator, cpu_thread_hint
from facap_train.card import check_push, push_run
from facap_train.checkpoint import TrainerState, resolve_resume
from facap_train.data import TripletDataset, build_dataloader, load_training_triplets, preprocess_pixels
from facap_train.errors import NonFiniteLossError
from facap_train.evaluation import plan_evaluation
from facap_train.loop import Progress, TrainingRun, finish, train_steps
from facap_train.models import load_model_and_processor
from facap_train.optim import build_optimizer, build_scheduler, plan_run
from facap_train.options import parse_args
from facap_train.outputs import MetricsLog, format_summary, prepare_output_dir, run_config, tracker_config, write_run_config


def log(accelerator, message: str) -> None:
    if accelerator.is_main_process:
        print(message, file=sys.stderr)


def setup(args: argparse.Namespace, hub_api=None) -> TrainingRun:
    """accelerator -> seed -> checks of the push and the output folder -> data (training, then the evaluation
    options checked against the eval data) -> the checkpoint to resume, verified -> model -> optimizer/scheduler
    -> `prepare`."""
    accelerator = build_accelerator(args)
    hint = cpu_thread_hint(accelerator)
    if hint:
        log(accelerator, hint)
    set_seed(args.seed)
    check_push(args, hub_api)
    output_dir = prepare_output_dir(args, accelerator)
    triplets = load_training_triplets([open_dataset(name) for name in args.dataset], args.configs,
                                      hard_negatives=args.hard_negatives)
    evaluation = plan_evaluation(args)
    for note in evaluation.notes if evaluation else ():
        log(accelerator, note)
    plan = plan_run(args, len(triplets.table), accelerator.num_processes)
    resume_from = resolve_resume(args.resume_from_checkpoint, output_dir, plan.global_batch_size) \
        if args.resume_from_checkpoint else None
    model, processor = load_model_and_processor(args, triplets.texts())
    pixels = preprocess_pixels(triplets.table, processor, progress=accelerator.is_local_main_process) if args.cache_images else None
    dataset = TripletDataset(triplets.table, seed=args.seed, caption_augmentation=args.caption_augmentation,
                             caption_join=args.caption_join, pixels=pixels)
    loader = build_dataloader(dataset, processor, batch_size=args.batch_size, seed=args.seed, num_workers=args.num_workers)
    optimizer = build_optimizer(model, args)
    scheduler = build_scheduler(optimizer, plan)
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    return TrainingRun(accelerator, model, processor, optimizer, scheduler, loader, plan, evaluation, output_dir,
                       triplets.sources, resume_from)


def resume(run: TrainingRun) -> Progress:
    """Load the checkpoint verified in `setup` (model, optimizer, scheduler, RNG states); where training stands."""
    if run.resume_from is None:
        return Progress(TrainerState(global_batch_size=run.plan.global_batch_size))
    checkpoint, state = run.resume_from
    run.accelerator.load_state(str(checkpoint))
    return Progress(state, last_checkpoint=checkpoint)


def train(args: argparse.Namespace, hub_api=None) -> dict[str, Any]:
    """setup -> resume -> loop of train / evaluate / save -> final save, evaluation, card -> push -> `end_training`."""
    started = time.monotonic()
    run = setup(args, hub_api)
    accelerator, plan = run.accelerator, run.plan
    progress = resume(run)
    resolved = run_config(args, plan, run.sources, accelerator)
    write_run_config(resolved, accelerator, run.output_dir)
    if args.report_to != "none":
        accelerator.init_trackers(args.project_name, config=tracker_config(resolved))
    metrics = MetricsLog(accelerator, run.output_dir, progress.state.global_step)
    log(accelerator, f"training on {plan.train_size} triplets ({'; '.join(run.sources)}), {plan.num_processes} "
        f"process(es), {plan.global_batch_size} examples/step, {plan.total_steps} steps"
        + (f", resuming from {progress.last_checkpoint} at step {progress.state.global_step}"
           if progress.last_checkpoint else ""))
    progress = train_steps(run, args, progress, metrics)
    progress = finish(run, args, progress, metrics)
    pushed = push_run(run.output_dir, args, progress.state.global_step, hub_api) \
        if args.push_to_hub and accelerator.is_main_process else None
    accelerator.wait_for_everyone()
    accelerator.end_training()
    state = progress.state
    summary = {
        "steps": state.global_step,
        "seconds": round(time.monotonic() - started, 1),
        "examples_per_step": plan.global_batch_size,
        "final_model": str(run.output_dir / "final"),
        "best_model": str(run.output_dir / "best") if state.best_step is not None else None,
        "best_step": state.best_step,
        "best_mean_recall": state.best_metric,
        "last_eval": progress.last_results["average"] if progress.last_results else None,
        "last_checkpoint": str(progress.last_checkpoint) if progress.last_checkpoint else None,
        "metrics": str(metrics.path),
        "pushed": pushed,
    }
    log(accelerator, format_summary(summary))
    return summary


def main(argv: Sequence[str] | None = None, *, hub_api=None) -> int:
    """Exit 0 on success, 1 when the loss diverged, 2 on bad input or a failed write/push (one line each)."""
    args = parse_args(argv)
    try:
        train(args, hub_api)
    except NonFiniteLossError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except (FacapError, DataError, RetrievalError) as error:
        print(f"error: {first_line(error)}", file=sys.stderr)
        return 2
    except OSError as error:
        where = f"{error.filename}: " if error.filename else ""
        print(f"error: {where}{error.strerror or error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
