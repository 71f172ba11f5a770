"""Where a plan's outputs live and the command line of each step: every build, run and evaluation goes through
the project's own entry points (`python -m facap_dataset build`, `accelerate launch train_accelerate.py`,
`python -m modeling_fashionblip2 convert`, `python eval_cir.py`) as subprocesses."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from facap_io.paths import inside

from .plan import DATA_REFERENCE, DatasetSpec, EvaluationSpec, Plan, RunSpec


@dataclass(frozen=True)
class Layout:
    """The output folder: data/NAME (builds), runs/NAME (trainer output dirs), commands/NAME.train.yaml (each
    run's options), evals/RUN/EVALUATION.json, baselines/KIND/EVALUATION.json, logs/STEP.log, paper-state.json
    and results.{md,json,png}."""

    root: Path

    def data_dir(self, name: str) -> Path:
        return inside(self.root, "data", name, what="dataset name")

    def run_dir(self, name: str) -> Path:
        return inside(self.root, "runs", name, what="run name")

    def run_options(self, name: str) -> Path:
        return inside(self.root, "commands", f"{name}.train.yaml", what="run name")

    def eval_file(self, run: str, evaluation: str) -> Path:
        return inside(self.root, "evals", run, f"{evaluation}.json", what="evaluation name")

    def baseline_file(self, kind: str, evaluation: str) -> Path:
        return inside(self.root, "baselines", kind, f"{evaluation}.json", what="baseline")

    def log(self, step: str) -> Path:
        return inside(self.root, "logs", f"{step.replace(':', '.')}.log", what="step")

    @property
    def state(self) -> Path:
        return self.root / "paper-state.json"


def model_dir(layout: Layout, run: RunSpec) -> Path:
    """The folder a run is evaluated (and fine-tuned from) with: best/ when the run kept one, else final/ — the
    trainer's own rule for --init-from RUN_DIR."""
    folder = layout.run_dir(run.name)
    return folder / "best" if (folder / "best" / "config.json").is_file() else folder / "final"


def dataset_location(plan: Plan, dataset: DatasetSpec, layout: Layout) -> str:
    if dataset.build is not None:
        return str(layout.data_dir(dataset.name))
    return dataset.path if dataset.path is not None else dataset.hub


def substitute(value: Any, plan: Plan, layout: Layout) -> Any:
    """Replace `{data:NAME}` by that dataset's location and `{nproc}` by the CPU core count, recursively."""
    if isinstance(value, dict):
        return {key: substitute(item, plan, layout) for key, item in value.items()}
    if isinstance(value, list):
        return [substitute(item, plan, layout) for item in value]
    if not isinstance(value, str):
        return value
    value = value.replace("{nproc}", str(os.cpu_count() or 1))
    return DATA_REFERENCE.sub(lambda match: _data_location(plan, match.group(1), layout), value)


def _data_location(plan: Plan, name: str, layout: Layout) -> str:
    dataset = plan.datasets.get(name)
    return name if dataset is None else dataset_location(plan, dataset, layout)


def to_flags(options: dict) -> list[str]:
    """`{batch_size: 8, overwrite: true, configs: [a, b]}` -> `--batch-size 8 --overwrite --configs a,b`;
    false and null leave an option out."""
    flags = []
    for key, value in options.items():
        flag = "--" + str(key).replace("_", "-")
        if value is True:
            flags.append(flag)
        elif value is False or value is None:
            continue
        elif isinstance(value, list):
            flags += [flag, ",".join(str(item) for item in value)]
        elif isinstance(value, dict):
            flags += [flag, json.dumps(value)]
        else:
            flags += [flag, str(value)]
    return flags


def _entry_point(module: str) -> str:
    """The file of a top-level module of the project (run as `python FILE`, wherever the current folder is)."""
    spec = importlib.util.find_spec(module)
    return spec.origin if spec is not None and spec.origin else f"{module}.py"


def accelerate_command() -> list[str]:
    script = Path(sys.executable).with_name("accelerate")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "accelerate.commands.accelerate_cli"]


# ------------------------------------------------------------------------------------------------ steps
def build_command(plan: Plan, dataset: DatasetSpec, layout: Layout) -> list[str]:
    options = substitute(dataset.options, plan, layout)
    # The folder is inside the plan's output and written by this program only: a killed build is rebuilt.
    return [sys.executable, "-m", "facap_dataset", "build", dataset.build, "--out", str(layout.data_dir(dataset.name)),
            *to_flags(options), "--overwrite"]  # fmt: skip


def train_options(plan: Plan, run: RunSpec, layout: Layout) -> dict:
    """The trainer's option file for `run`: the plan's training defaults, then the run's own options."""
    options = {**substitute(plan.training, plan, layout), **substitute(run.options, plan, layout)}
    options["dataset"] = [dataset_location(plan, plan.datasets[name], layout) for name in run.datasets]
    options["configs"] = list(run.configs)
    options.pop("max_steps", None), options.pop("num_epochs", None)
    if run.steps is not None:
        options["max_steps"] = run.steps
    else:
        options["num_epochs"] = run.epochs
    if run.init_kind == "run":
        options["init_from"] = str(layout.run_dir(run.init))
        options.pop("model", None)
    else:
        options["model"] = run.init
        options.pop("init_from", None)
    overrides = {**options.get("model_overrides", {}), **run.model_overrides}
    if overrides:
        options["model_overrides"] = overrides
    return options


def train_command(plan: Plan, run: RunSpec, layout: Layout, launch: list[str], resume: str | None) -> list[str]:
    """`accelerate launch LAUNCH train_accelerate.py --config commands/RUN.train.yaml --output-dir runs/RUN`,
    plus `--resume-from-checkpoint latest` or `--overwrite` (a killed run without a checkpoint) as `resume`."""
    command = [*accelerate_command(), "launch", *launch, _entry_point("train_accelerate"),
               "--config", str(layout.run_options(run.name)), "--output-dir", str(layout.run_dir(run.name))]  # fmt: skip
    if resume == "checkpoint":
        command += ["--resume-from-checkpoint", "latest"]
    elif resume == "overwrite":
        command.append("--overwrite")
    return command


# Model overrides an untrained (converted) row may set, as `python -m modeling_fashionblip2 convert` flags.
CONVERT_OVERRIDES = {"matching": "--matching", "adapter_dim": "--adapter-dim", "num_heads": "--num-heads"}


def convert_command(run: RunSpec, layout: Layout) -> list[str]:
    """An untrained row: the BLIP-2 checkpoint converted into runs/RUN/final (with the run's model overrides;
    `targetpad` in its options turns on Fashion IQ's target pad)."""
    flags = [item for key, value in run.model_overrides.items() for item in (CONVERT_OVERRIDES[key], str(value))]
    if run.options.get("targetpad"):
        flags.append("--target-pad")
    return [sys.executable, "-m", "modeling_fashionblip2", "convert", run.init,
            str(layout.run_dir(run.name) / "final"), *flags, "--overwrite"]  # fmt: skip


def eval_command(plan: Plan, run: RunSpec, evaluation: EvaluationSpec, layout: Layout,
                 baseline: str | None = None) -> list[str]:  # fmt: skip
    output = layout.baseline_file(baseline, evaluation.name) if baseline else layout.eval_file(run.name, evaluation.name)
    dataset = dataset_location(plan, plan.datasets[evaluation.dataset], layout) if evaluation.dataset in plan.datasets \
        else evaluation.dataset  # fmt: skip
    command = [sys.executable, _entry_point("eval_cir"), "--model", str(model_dir(layout, run)), "--dataset", dataset,
               "--configs", ",".join(evaluation.configs), "--split", evaluation.split, "--output", str(output),
               "--no-progress"]  # fmt: skip
    if baseline:
        command += ["--baseline", baseline]
    else:
        for breakdown in evaluation.breakdowns:
            command += ["--breakdown", breakdown]
    return command + to_flags(substitute(evaluation.options, plan, layout))
