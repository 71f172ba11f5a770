"""Run a validated plan step by step, skipping what is finished.

Steps, in order: build each dataset the plan builds; for each run (an `init: {run: X}` after X) train it (or
convert it, for an untrained BLIP-2 row) then evaluate it on every evaluation; then the baselines. A step is
finished when the ledger (`OUT/paper-state.json`, rewritten atomically after each step) records it with the same
fingerprint (its settings and those of everything it depends on) and its output is there. A rerun after a kill
therefore starts at the first unfinished step; a killed training run resumes from its own latest checkpoint
(`--resume-from-checkpoint latest`), or starts over (`--overwrite`, which removes only the trainer's own files)
when it had written none. A failed step stops the plan with the step's name and log; finished steps are kept.
"""

from __future__ import annotations

import hashlib
import json
import resource
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import yaml

from facap_io.atomic import write_json, write_text
from facap_io.errors import FacapError

from . import commands
from .commands import Layout
from .plan import EvaluationSpec, Plan, PlanError, RunSpec, run_order

STATE_VERSION = 1
# command, log path -> exit status. Replaced by a recording fake in tests.
Runner = Callable[[list[str], Path], int]


class StepFailed(FacapError):
    """A build, run or evaluation exited non-zero; the message names it and its log."""


@dataclass(frozen=True)
class Step:
    key: str  # build:NAME | train:RUN | eval:RUN:EVALUATION | baseline:KIND:EVALUATION
    describe: str  # for the progress line
    fingerprint: str
    output: Path  # exists once the step has succeeded
    command: Callable[[], list[str]]  # built when the step runs (a resume depends on what is on disk then)
    prepare: Callable[[], None] = lambda: None
    verify: Callable[[], str | None] = lambda: None  # a problem with the finished output, or None


def subprocess_runner(command: list[str], log: Path) -> int:
    """Run `command` with its stdout and stderr appended to `log`; returns the exit status."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a", encoding="utf-8") as handle:
        handle.write(f"$ {' '.join(command)}\n")
        handle.flush()
        return subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL).returncode


def _children_cpu_seconds() -> float:
    """CPU time of finished child processes (user + system): a step's cost whatever else the machine runs."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _digest(payload) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------------------------- the steps
def plan_steps(plan: Plan, layout: Layout, launch: list[str]) -> list[Step]:
    """Every step of the plan in execution order, each with its fingerprint."""
    steps: list[Step] = []
    fingerprints: dict[str, str] = {}
    for name, dataset in plan.datasets.items():
        if dataset.build is None:
            fingerprints[f"data:{name}"] = _digest({"use": dataset.path or dataset.hub})
            continue
        key = f"build:{name}"
        fingerprints[f"data:{name}"] = fingerprints[key] = _digest({"build": dataset.build, "options": dataset.options})
        steps.append(Step(key, f"building dataset {name} ({dataset.build})", fingerprints[key],
                          layout.data_dir(name) / "README.md", _bind(commands.build_command, plan, dataset, layout),
                          verify=_bind(_missing_configs, dataset.configs, layout.data_dir(name))))  # fmt: skip
    for run in run_order(plan):
        key = f"train:{run.name}"
        upstream = [fingerprints[f"data:{name}"] for name in run.datasets]
        if run.init_kind == "run":
            upstream.append(fingerprints[f"train:{run.init}"])
        spec = {"run": _run_payload(plan, run), "upstream": upstream}
        fingerprints[key] = _digest(spec)
        steps.append(_train_step(plan, run, layout, launch, fingerprints[key]))
        for evaluation in plan.evaluations:
            eval_key = f"eval:{run.name}:{evaluation.name}"
            payload = {"evaluation": _evaluation_payload(evaluation), "run": fingerprints[key],
                       "data": fingerprints[f"data:{evaluation.dataset}"]}  # fmt: skip
            steps.append(Step(eval_key, f"evaluating {run.name} on {evaluation.name}", _digest(payload),
                              layout.eval_file(run.name, evaluation.name),
                              _bind(commands.eval_command, plan, run, evaluation, layout)))  # fmt: skip
    if plan.baselines is not None:
        run = plan.run(plan.baselines.model)
        for kind in plan.baselines.kinds:
            for name in plan.baselines.evaluations:
                evaluation = plan.evaluation(name)
                payload = {"kind": kind, "evaluation": _evaluation_payload(evaluation), "run": fingerprints[f"train:{run.name}"],
                           "data": fingerprints[f"data:{evaluation.dataset}"]}  # fmt: skip
                steps.append(Step(f"baseline:{kind}:{name}", f"{kind} baseline on {name} (embeddings of {run.name})",
                                  _digest(payload), layout.baseline_file(kind, name),
                                  _bind(commands.eval_command, plan, run, evaluation, layout, kind)))  # fmt: skip
    return steps


def _missing_configs(declared: tuple[str, ...], folder: Path) -> str | None:
    """The plan was validated against the configs it declares for a build: the built card must have them."""
    from facap_dataset.export import read_card_data

    card = read_card_data(folder) or {"configs": []}
    built = [entry["config_name"] for entry in card["configs"]]
    missing = [config for config in declared if config not in built]
    return f"the plan declares configs {', '.join(missing)} that the build lacks (it has: {', '.join(built)})" \
        if missing else None  # fmt: skip


def _evaluation_payload(evaluation: EvaluationSpec) -> dict:
    """What an evaluation's result depends on (its label is only a title)."""
    return {key: value for key, value in evaluation.__dict__.items() if key != "label"}


def _run_payload(plan: Plan, run: RunSpec) -> dict:
    """What a run's result depends on: its spec and the plan's training defaults (not paths or launch options)."""
    return {"init": [run.init_kind, run.init], "datasets": run.datasets, "configs": run.configs, "steps": run.steps,
            "epochs": run.epochs, "model_overrides": run.model_overrides, "options": {**plan.training, **run.options}}  # fmt: skip


def _train_step(plan: Plan, run: RunSpec, layout: Layout, launch: list[str], fingerprint: str) -> Step:
    folder = layout.run_dir(run.name)
    if not run.trains:
        return Step(f"train:{run.name}", f"converting {run.init} (untrained)", fingerprint, folder / "final" / "config.json",
                    _bind(commands.convert_command, run, layout))  # fmt: skip

    def prepare() -> None:
        write_text(layout.run_options(run.name), yaml.safe_dump(commands.train_options(plan, run, layout), sort_keys=False))

    def command() -> list[str]:
        return commands.train_command(plan, run, layout, launch, _resume_mode(folder))

    init = f"init {run.init_kind} {run.init}"
    describe = f"training {run.name} ({init}, {run.length} on {', '.join(run.datasets)})"
    return Step(f"train:{run.name}", describe, fingerprint, folder / "final" / "config.json", command, prepare)


def _resume_mode(folder: Path) -> str | None:
    """`checkpoint` when a killed run left a complete checkpoint, `overwrite` when it left only other files."""
    checkpoints = folder / "checkpoints"
    if checkpoints.is_dir() and any(path.name.startswith("checkpoint-") for path in checkpoints.iterdir()):
        return "checkpoint"
    if folder.is_dir() and any(folder.iterdir()):
        return "overwrite"
    return None


def _bind(function, *args):
    return lambda: function(*args)


# -------------------------------------------------------------------------------------------- the ledger
def read_state(layout: Layout, plan: Plan) -> dict:
    """The ledger of `layout.root`; refuses a folder holding another plan's results or unrelated files."""
    root = layout.root
    if layout.state.is_file():
        try:
            state = json.loads(layout.state.read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise PlanError(f"output folder {root}: {layout.state.name} is unreadable ({error}); use another --out") from None
        if state.get("plan") != plan.name:
            raise PlanError(f"output folder {root} holds the results of plan {state.get('plan')!r}, not {plan.name!r}; "
                            "use another --out")  # fmt: skip
        return state
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise PlanError(f"output folder {root} is not empty and holds no plan results (no {layout.state.name}); "
                        "use a new or empty folder")  # fmt: skip
    return {"version": STATE_VERSION, "plan": plan.name, "steps": {}}


def check_settings(state: dict, steps: list[Step], plan: Plan, layout: Layout) -> None:
    """Refuse a folder whose finished steps were made with other settings: their results would be mixed."""
    by_key = {step.key: step for step in steps}
    changed = [key for key, record in state["steps"].items()
               if key in by_key and record.get("fingerprint") != by_key[key].fingerprint]  # fmt: skip
    if changed:
        raise PlanError(f"output folder {layout.root} holds results of plan {plan.name!r} made with other settings "
                        f"({', '.join(changed)}); use another --out")  # fmt: skip


def is_finished(step: Step, state: dict) -> bool:
    record = state["steps"].get(step.key)
    return record is not None and record.get("fingerprint") == step.fingerprint and step.output.exists()


def execute(plan: Plan, layout: Layout, steps: list[Step], state: dict, runner: Runner, log=print) -> dict:
    """Run every unfinished step in order; returns the ledger. Raises StepFailed at the first failure."""
    layout.root.mkdir(parents=True, exist_ok=True)
    write_json(layout.state, state)
    todo = [step for step in steps if not is_finished(step, state)]
    log(f"plan {plan.name}: {len(steps) - len(todo)} of {len(steps)} steps already finished in {layout.root}")
    for number, step in enumerate(todo, start=1):
        started, cpu_before = time.monotonic(), _children_cpu_seconds()
        log(f"[{number}/{len(todo)}] {step.describe} ...")
        step.prepare()
        status = runner(step.command(), layout.log(step.key))
        seconds, cpu_seconds = time.monotonic() - started, _children_cpu_seconds() - cpu_before
        problem = None if status != 0 or not step.output.exists() else step.verify()
        if status != 0 or not step.output.exists() or problem:
            reason = f"exit status {status}" if status != 0 else problem or f"exit status 0 but no {step.output}"
            raise StepFailed(f"{step.key} failed ({reason}) after {seconds:.0f} s; log: {layout.log(step.key)} "
                             "(finished steps are kept: rerun the same command to continue)")  # fmt: skip
        state["steps"][step.key] = {"fingerprint": step.fingerprint, "seconds": round(seconds, 1),
                                    "cpu_seconds": round(cpu_seconds, 1),
                                    "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}  # fmt: skip
        write_json(layout.state, state)
        log(f"[{number}/{len(todo)}] {step.key} done in {seconds:.0f} s ({cpu_seconds:.0f} CPU s)")
    return state
