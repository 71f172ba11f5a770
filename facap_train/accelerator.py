"""The `Accelerator` of a run, and the launcher pitfalls it guards against."""

from __future__ import annotations

import argparse
import importlib.util
import os

import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration

from facap_eval.distributed import launched_on_cpu  # one rule for joining launched CPU processes

from .errors import TrainingError


def build_accelerator(args: argparse.Namespace):
    """An Accelerator logging to OUT/logs; the schedule is stepped per optimizer step by the loop itself."""
    if args.report_to != "none" and importlib.util.find_spec(args.report_to) is None:
        # Accelerate would only warn and train without the tracker.
        raise TrainingError(f"--report-to {args.report_to}: the {args.report_to} package is not installed")
    return Accelerator(
        cpu=launched_on_cpu(),
        mixed_precision=args.mixed_precision,
        log_with=None if args.report_to == "none" else args.report_to,
        # Checkpoint naming and pruning are ours (facap_train.checkpoint says why), so no automatic naming.
        project_config=ProjectConfiguration(project_dir=str(args.output_dir), logging_dir=str(args.output_dir / "logs")),
        step_scheduler_with_optimizer=False,
    )


def cpu_thread_hint(accelerator) -> str | None:
    """A warning when one CPU process leaves cores idle: `accelerate launch` sets OMP_NUM_THREADS=1 unless given
    --num_cpu_threads_per_process (or --cpu), which roughly halves the demo's speed on two cores."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    threads = torch.get_num_threads()
    if accelerator.device.type != "cpu" or accelerator.num_processes > 1 or threads >= cores:
        return None
    omp = os.environ.get("OMP_NUM_THREADS")
    return (f"warning: torch uses {threads} of {cores} CPU cores (OMP_NUM_THREADS={omp}); with accelerate launch "
            f"pass --num_cpu_threads_per_process {cores} to use them all")
