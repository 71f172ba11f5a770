"""Does the input pipeline keep up? Steps/s of train_accelerate.py's loop (demo preset, synthetic data, data
loading and the processor in DataLoader workers included) against a bare loop doing the same forward /
backward / clip / optimizer / scheduler steps on batches collated once in advance.

    python benchmarks/bench_train.py [--steps 30] [--rounds 3] [--config scripts/demo_train.yaml] [-- TRAIN OPTIONS]

The trainer runs with the demo's options (scripts/demo_train.yaml: batch 64, pixel cache, one worker);
extra options after `--` override them (e.g. `-- --num-workers 0`). Both loops share one model, optimizer and schedule (set up by train_accelerate.setup), so they differ only in
where the batches come from. Rounds alternate trainer / bare blocks and the medians are compared, so a
drift in machine load hits both alike. Progress goes to stderr; the last stdout line is one JSON object with
the headline `ratio_vs_bare_loop` (target >= 0.9).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def time_steps(step, count: int) -> float:
    """Steps per second over `count` calls of `step()`."""
    started = time.perf_counter()
    for _ in range(count):
        step()
    return count / (time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=30, help="steps per timed block")
    parser.add_argument("--rounds", type=int, default=3, help="alternating trainer / bare blocks")
    parser.add_argument("--config", type=Path, default=REPO / "scripts" / "demo_train.yaml")
    parser.add_argument("--num-images", type=int, default=6000, help="size of the synthetic set built for the run")
    parser.add_argument("--hard-negatives", action="store_true",
                        help="build the set with a hard negative per triplet, as make demo does (192 images a step)")
    parser.add_argument("train_options", nargs="*", help="train_accelerate.py options overriding --config")
    options = parser.parse_args()

    import torch

    import train_accelerate as ta
    from facap_train.loop import iterate_batches
    from facap_train.optim import optimizer_step
    from facap_train.options import parse_args
    from facap_dataset.synthetic import build_synthetic

    with tempfile.TemporaryDirectory() as scratch:
        log(f"building a synthetic set of {options.num_images} images")
        dataset = build_synthetic(Path(scratch) / "data", num_images=options.num_images, image_size=64,
                                  hard_negatives=options.hard_negatives)
        argv = ["--config", str(options.config), "--dataset", str(dataset), "--output-dir", str(Path(scratch) / "run"),
                "--max-steps", "100000", "--report-to", "none", *options.train_options]  # fmt: skip
        args = parse_args(argv)
        run = ta.setup(args)
        batches = iterate_batches(run.loader, run.plan.batches_per_epoch, 0)
        counter = itertools.count(1)

        def trainer_step() -> None:
            optimizer_step(run.accelerator, run.model, run.optimizer, run.scheduler, batches, run.plan, next(counter))

        collated = [next(batches) for _ in range(8)]
        cycle = itertools.cycle(collated)

        def bare_step() -> None:
            loss = run.model(**next(cycle), return_loss=True).loss
            loss.backward()
            if args.max_grad_norm > 0:  # as the trainer does
                torch.nn.utils.clip_grad_norm_(run.model.parameters(), args.max_grad_norm)
            run.optimizer.step()
            run.scheduler.step()
            run.optimizer.zero_grad(set_to_none=True)

        run.model.train()
        log("warming up")
        time_steps(trainer_step, 3)
        time_steps(bare_step, 3)
        trainer_rates, bare_rates = [], []
        for round_index in range(options.rounds):
            trainer_rates.append(time_steps(trainer_step, options.steps))
            bare_rates.append(time_steps(bare_step, options.steps))
            log(f"round {round_index + 1}: trainer {trainer_rates[-1]:.3f} steps/s, bare loop {bare_rates[-1]:.3f} steps/s")

    trainer, bare = statistics.median(trainer_rates), statistics.median(bare_rates)
    result = {
        "benchmark": "train_accelerate steps/s vs a bare loop on pre-collated tensors",
        "model": args.model,
        "batch_size": args.batch_size,
        "num_workers": args.num_workers,
        "cache_images": args.cache_images,
        "hard_negatives": options.hard_negatives,
        "steps_per_block": options.steps,
        "rounds": options.rounds,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "device": str(run.accelerator.device),
        "trainer_steps_per_s": round(trainer, 4),
        "bare_loop_steps_per_s": round(bare, 4),
        "trainer_ms_per_step": round(1000 / trainer, 1),
        "bare_loop_ms_per_step": round(1000 / bare, 1),
        "ratio_vs_bare_loop": round(trainer / bare, 3),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
