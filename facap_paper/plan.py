"""The experiment grid as data: a YAML plan of datasets, training runs, evaluations and baselines.

A plan is read and checked whole before anything runs (`load_plan` then `validate_plan`): every problem is one
`PlanError` line naming the plan, the entry and the culprit, so no training starts on a plan that would fail
later. Schema (keys not listed are errors, to catch typos):

    name: paper-synthetic                  # plain name; recorded in the output folder
    description: text
    launch: [--num_processes, "1", ...]    # `accelerate launch` options ({nproc} = CPU cores)
    datasets:
      NAME: {build: BUILDER, options: {...}, configs: [...]}   # built into OUT/data/NAME
      NAME: {path: DIR | hub: ORG/NAME}                        # used as it is
    training: {...}                        # train_accelerate.py options shared by every run
    runs:
      - name: NAME
        label: text                        # the row's title in the tables
        init: {preset: demo} | {model: BLIP2_ID_OR_DIR} | {run: OTHER_RUN}
        datasets: [NAME, ...]              # omitted with steps: 0 (a converted, untrained BLIP-2)
        configs: [dress, ...]
        steps: 400                         # or epochs: 3; steps: 0 = no training (a converted BLIP-2)
        model_overrides: {...}
        options: {...}                     # more train_accelerate.py options for this run only
    evaluations:
      - {name: NAME, label: text, dataset: NAME, configs: [...], split: validation,
         breakdowns: [text-length, num-changes], options: {...}}   # options: eval_cir.py flags
    baselines: {model: RUN, kinds: [image-only, text-only], evaluations: [NAME, ...]}
    acceptance: {evaluation: NAME, metric: recall@10, runs: [RUN, ...]}   # runs: default every trained run

Option values may name a built dataset's folder as `{data:NAME}` (e.g. a builder reading another build).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from facap_io.errors import FacapError, first_line
from facap_io.paths import plain_name

BREAKDOWNS = ("text-length", "num-changes")
DATA_REFERENCE = re.compile(r"\{data:([^}]*)\}")

_PLAN_KEYS = {"name", "description", "launch", "datasets", "training", "runs", "evaluations", "baselines", "acceptance"}
_DATASET_KEYS = {"build", "options", "configs", "path", "hub", "label"}
_RUN_KEYS = {"name", "label", "init", "datasets", "configs", "steps", "epochs", "model_overrides", "options"}
_EVAL_KEYS = {"name", "label", "dataset", "configs", "split", "breakdowns", "options"}
_BASELINE_KEYS = {"model", "kinds", "evaluations"}
_ACCEPTANCE_KEYS = {"evaluation", "metric", "runs"}
_INIT_KINDS = ("preset", "model", "run")


class PlanError(FacapError):
    """A plan that cannot run as written; the message names the plan, the entry and the culprit."""


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    build: str | None = None  # a `python -m facap_dataset build` source
    options: dict = field(default_factory=dict)
    configs: tuple[str, ...] = ()  # what a build provides (checked against the built card)
    path: str | None = None
    hub: str | None = None
    label: str = ""


@dataclass(frozen=True)
class RunSpec:
    name: str
    label: str
    init_kind: str  # preset | model | run
    init: str
    datasets: tuple[str, ...]
    configs: tuple[str, ...]
    steps: int | None  # optimizer steps; None when the run gives epochs; 0 = no training
    epochs: float | None = None
    model_overrides: dict = field(default_factory=dict)
    options: dict = field(default_factory=dict)

    @property
    def trains(self) -> bool:
        return self.steps != 0

    @property
    def length(self) -> str:
        return f"{self.steps} steps" if self.steps is not None else f"{self.epochs:g} epochs"


@dataclass(frozen=True)
class EvaluationSpec:
    name: str
    label: str
    dataset: str
    configs: tuple[str, ...]
    split: str = "validation"
    breakdowns: tuple[str, ...] = ()
    options: dict = field(default_factory=dict)


@dataclass(frozen=True)
class BaselineSpec:
    model: str  # the run whose embeddings the baselines use
    kinds: tuple[str, ...]
    evaluations: tuple[str, ...]


@dataclass(frozen=True)
class Plan:
    name: str
    description: str
    launch: tuple[str, ...]
    datasets: dict[str, DatasetSpec]
    training: dict
    runs: tuple[RunSpec, ...]
    evaluations: tuple[EvaluationSpec, ...]
    baselines: BaselineSpec | None
    acceptance: dict
    source: str  # the file it came from, for messages

    def run(self, name: str) -> RunSpec:
        return next(run for run in self.runs if run.name == name)

    def evaluation(self, name: str) -> EvaluationSpec:
        return next(evaluation for evaluation in self.evaluations if evaluation.name == name)


# ------------------------------------------------------------------------------------------------ reading
def resolve_plan_path(plan: str, plans_dir: Path) -> Path:
    """A YAML path as given, else `plans_dir/PLAN.yaml` for a plan name."""
    path = Path(plan)
    if path.suffix in (".yaml", ".yml") or path.is_file():
        if not path.is_file():
            raise PlanError(f"plan file {plan} does not exist")
        return path
    named = plans_dir / f"{plan}.yaml"
    if not named.is_file():
        shipped = sorted(p.stem for p in plans_dir.glob("*.yaml"))
        raise PlanError(f"unknown plan {plan!r} (shipped plans: {', '.join(shipped) or 'none'}; or give a YAML path)")
    return named


def load_plan(path: Path) -> Plan:
    """Parse and shape-check a plan file (names, types, unknown keys); references are checked by validate_plan."""
    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as error:
        raise PlanError(f"plan {path}: cannot be read: {first_line(error)}") from None
    where = f"plan {path}"
    mapping = _mapping(raw, where)
    _known_keys(mapping, _PLAN_KEYS, where)
    name = _plain(mapping.get("name"), f"{where}: name")
    where = f"plan {name}"
    datasets = {}
    for key, value in _mapping(mapping.get("datasets"), f"{where}: datasets").items():
        dataset_name = _plain(key, f"{where}: dataset name")
        datasets[dataset_name] = _dataset(dataset_name, value, where)
    runs = tuple(_run(value, where) for value in _list(mapping.get("runs"), f"{where}: runs"))
    evaluations = tuple(_evaluation(value, where) for value in _list(mapping.get("evaluations"), f"{where}: evaluations"))
    for kind, entries in (("run", runs), ("evaluation", evaluations)):
        _unique([entry.name for entry in entries], f"{where}: {kind} name")
    baselines = None if mapping.get("baselines") is None else _baselines(mapping["baselines"], where)
    acceptance = _mapping(mapping.get("acceptance", {}), f"{where}: acceptance")
    _known_keys(acceptance, _ACCEPTANCE_KEYS, f"{where}: acceptance")
    if "runs" in acceptance:
        acceptance = {**acceptance, "runs": _names(acceptance["runs"], f"{where}: acceptance: runs")}
    return Plan(
        name=name,
        description=str(mapping.get("description", "")),
        launch=tuple(str(item) for item in _list(mapping.get("launch", []), f"{where}: launch", allow_empty=True)),
        datasets=datasets,
        training=_mapping(mapping.get("training", {}), f"{where}: training"),
        runs=runs,
        evaluations=evaluations,
        baselines=baselines,
        acceptance=acceptance,
        source=str(path),
    )


def _dataset(name: str, value: Any, where: str) -> DatasetSpec:
    where = f"{where}: dataset {name!r}"
    entry = _mapping(value, where)
    _known_keys(entry, _DATASET_KEYS, where)
    sources = [key for key in ("build", "path", "hub") if entry.get(key) is not None]
    if len(sources) != 1:
        raise PlanError(f"{where}: give exactly one of build, path and hub (got {', '.join(sources) or 'none'})")
    configs = tuple(_names(entry["configs"], f"{where}: configs")) if "configs" in entry else ()
    if entry.get("build") is not None and not configs:
        raise PlanError(f"{where}: a built dataset lists the configs it provides (configs: [...])")
    return DatasetSpec(
        name=name,
        build=None if entry.get("build") is None else str(entry["build"]),
        options=_mapping(entry.get("options", {}), f"{where}: options"),
        configs=configs,
        path=None if entry.get("path") is None else str(entry["path"]),
        hub=None if entry.get("hub") is None else str(entry["hub"]),
        label=str(entry.get("label", name)),
    )


def _run(value: Any, where: str) -> RunSpec:
    entry = _mapping(value, f"{where}: run")
    name = _plain(entry.get("name"), f"{where}: run name")
    where = f"{where}: run {name!r}"
    _known_keys(entry, _RUN_KEYS, where)
    init = _mapping(entry.get("init"), f"{where}: init")
    if len(init) != 1 or next(iter(init)) not in _INIT_KINDS:
        raise PlanError(f"{where}: init must be one of {{preset: NAME}}, {{model: ID_OR_DIR}}, {{run: RUN}}; got {init}")
    init_kind, init_value = next(iter(init.items()))
    steps, epochs = _length(entry, where)
    trains = steps != 0
    if not trains and init_kind != "model":
        raise PlanError(f"{where}: steps: 0 (no training) needs init: {{model: BLIP2_ID}}, a checkpoint to convert")
    datasets = tuple(_names(entry.get("datasets"), f"{where}: datasets")) if trains or entry.get("datasets") else ()
    configs = tuple(_names(entry.get("configs"), f"{where}: configs")) if trains or entry.get("configs") else ()
    return RunSpec(
        name=name,
        label=str(entry.get("label", name)),
        init_kind=init_kind,
        init=str(init_value),
        datasets=datasets,
        configs=configs,
        steps=steps,
        epochs=epochs,
        model_overrides=_mapping(entry.get("model_overrides", {}), f"{where}: model_overrides"),
        options=_mapping(entry.get("options", {}), f"{where}: options"),
    )


def _length(entry: dict, where: str) -> tuple[int | None, float | None]:
    """(steps, None) or (None, epochs): exactly one of the two keys."""
    steps, epochs = entry.get("steps"), entry.get("epochs")
    if (steps is None) == (epochs is None):
        raise PlanError(f"{where}: give exactly one of steps and epochs")
    if steps is not None and (not isinstance(steps, int) or isinstance(steps, bool) or steps < 0):
        raise PlanError(f"{where}: steps must be an integer >= 0, got {steps!r}")
    if epochs is not None and (not isinstance(epochs, (int, float)) or isinstance(epochs, bool) or epochs <= 0):
        raise PlanError(f"{where}: epochs must be a number > 0, got {epochs!r}")
    return steps, None if epochs is None else float(epochs)


def _evaluation(value: Any, where: str) -> EvaluationSpec:
    entry = _mapping(value, f"{where}: evaluation")
    name = _plain(entry.get("name"), f"{where}: evaluation name")
    where = f"{where}: evaluation {name!r}"
    _known_keys(entry, _EVAL_KEYS, where)
    breakdowns = tuple(_names(entry.get("breakdowns", []), f"{where}: breakdowns", allow_empty=True))
    for breakdown in breakdowns:
        if breakdown not in BREAKDOWNS:
            raise PlanError(f"{where}: unknown breakdown {breakdown!r} (known: {', '.join(BREAKDOWNS)})")
    return EvaluationSpec(
        name=name,
        label=str(entry.get("label", name)),
        dataset=str(entry.get("dataset")),
        configs=tuple(_names(entry.get("configs"), f"{where}: configs")),
        split=str(entry.get("split", "validation")),
        breakdowns=breakdowns,
        options=_mapping(entry.get("options", {}), f"{where}: options"),
    )


def _baselines(value: Any, where: str) -> BaselineSpec:
    where = f"{where}: baselines"
    entry = _mapping(value, where)
    _known_keys(entry, _BASELINE_KEYS, where)
    return BaselineSpec(
        model=str(entry.get("model")),
        kinds=tuple(_names(entry.get("kinds"), f"{where}: kinds")),
        evaluations=tuple(_names(entry.get("evaluations"), f"{where}: evaluations")),
    )


# ----------------------------------------------------------------------------------------- shape helpers
def _mapping(value: Any, where: str) -> dict:
    if not isinstance(value, dict):
        raise PlanError(f"{where}: expected a mapping, got {type(value).__name__}")
    return value


def _list(value: Any, where: str, *, allow_empty: bool = False) -> list:
    if not isinstance(value, list) or (not value and not allow_empty):
        raise PlanError(f"{where}: expected a non-empty list, got {value!r}")
    return value


def _names(value: Any, where: str, *, allow_empty: bool = False) -> list[str]:
    items = _list(value, where, allow_empty=allow_empty)
    return [_plain(item, where) for item in items]


def _plain(value: Any, where: str) -> str:
    try:
        return plain_name(value if isinstance(value, str) else repr(value), what=where)
    except FacapError as error:
        raise PlanError(str(error)) from None


def _known_keys(mapping: dict, known: set[str], where: str) -> None:
    unknown = sorted(str(key) for key in set(mapping) - known)
    if unknown:
        raise PlanError(f"{where}: unknown key {', '.join(unknown)} (known: {', '.join(sorted(known))})")


def _unique(names: list[str], where: str) -> None:
    seen = set()
    for name in names:
        if name in seen:
            raise PlanError(f"{where} {name!r} is used twice")
        seen.add(name)


# ------------------------------------------------------------------------------------------------ order
def run_order(plan: Plan) -> list[RunSpec]:
    """Runs with every `init: {run: X}` before the run that uses it, plan order otherwise; cycles are errors."""
    names = {run.name for run in plan.runs}
    for run in plan.runs:
        if run.init_kind == "run" and run.init not in names:
            raise PlanError(f"plan {plan.name}: run {run.name!r}: init names unknown run {run.init!r} "
                            f"(runs: {', '.join(sorted(names))})")  # fmt: skip
    ordered: list[RunSpec] = []
    state: dict[str, str] = {}  # name -> "visiting" | "done"

    def visit(run: RunSpec, path: list[str]) -> None:
        if state.get(run.name) == "done":
            return
        if state.get(run.name) == "visiting":
            cycle = path[path.index(run.name):] + [run.name]
            raise PlanError(f"plan {plan.name}: init references form a cycle: {' -> '.join(cycle)}")
        state[run.name] = "visiting"
        if run.init_kind == "run":
            visit(plan.run(run.init), [*path, run.name])
        state[run.name] = "done"
        ordered.append(run)

    for run in plan.runs:
        visit(run, [])
    return ordered


def data_references(value: Any) -> list[str]:
    """Names of the built datasets that `{data:NAME}` placeholders inside `value` refer to."""
    if isinstance(value, dict):
        return [name for item in value.values() for name in data_references(item)]
    if isinstance(value, list):
        return [name for item in value for name in data_references(item)]
    return DATA_REFERENCE.findall(value) if isinstance(value, str) else []
