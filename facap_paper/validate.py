"""Check a plan against the project before anything runs: datasets and their configs, presets, run and
evaluation references, model overrides, and every command line each entry point will be given (parsed by that
entry point's own parser, so an option it would refuse is refused here, before the first build or run)."""

from __future__ import annotations

import argparse
import contextlib
import io
import tempfile
from pathlib import Path

import yaml
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

from facap_io.errors import FacapError

from . import commands
from .plan import Plan, PlanError, data_references, run_order


def validate_plan(plan: Plan, layout: commands.Layout) -> None:
    """Raise PlanError (one line) for the first problem; returns when every entry can run."""
    configs = dataset_configs(plan)
    for dataset in plan.datasets.values():
        for reference in data_references(dataset.options):
            _require_dataset(plan, reference, f"dataset {dataset.name!r}: options")
        if dataset.build is not None:
            _check_parses(plan, f"dataset {dataset.name!r}", commands.build_command(plan, dataset, layout)[3:],
                          _builder_parser)  # fmt: skip
    order = run_order(plan)  # unknown run references and cycles
    for run in order:
        _check_run(plan, run, configs, layout)
    for evaluation in plan.evaluations:
        where = f"evaluation {evaluation.name!r}"
        _require_dataset(plan, evaluation.dataset, where)
        _require_configs(plan, evaluation.dataset, evaluation.configs, configs, where, galleries=True)
        if plan.runs:
            _check_parses(plan, where, commands.eval_command(plan, plan.runs[0], evaluation, layout)[2:], _eval_parser)
    _check_baselines(plan, layout)
    _check_acceptance(plan)


def dataset_configs(plan: Plan) -> dict[str, tuple[str, ...]]:
    """Dataset name -> its configs: declared for builds, read from the card (or the Hub) for the others."""
    from facap_dataset.errors import DataError
    from facap_dataset.loading import open_dataset

    found = {}
    for name, dataset in plan.datasets.items():
        if dataset.build is not None:
            found[name] = dataset.configs
            continue
        try:
            found[name] = open_dataset(dataset.path if dataset.path is not None else dataset.hub).configs
        except (DataError, FacapError) as error:
            raise PlanError(f"plan {plan.name}: dataset {name!r}: {error}") from None
    return found


def _check_run(plan: Plan, run, configs: dict, layout: commands.Layout) -> None:
    from modeling_fashionblip2 import PRESETS, FashionBlip2Config

    where = f"run {run.name!r}"
    if run.init_kind == "preset" and run.init not in PRESETS:
        raise PlanError(f"plan {plan.name}: {where}: unknown preset {run.init!r} (presets: {', '.join(PRESETS)})")
    if run.init_kind == "model":
        _check_model_source(plan, where, run.init)
    for dataset in run.datasets:
        _require_dataset(plan, dataset, where)
    if run.trains:
        available = {config for dataset in run.datasets for config in configs[dataset]}
        for config in run.configs:
            if config not in available:
                raise PlanError(f"plan {plan.name}: {where}: unknown config {config!r} in {', '.join(run.datasets)} "
                                f"(configs: {', '.join(sorted(available))})")  # fmt: skip
    if not run.trains:
        _check_conversion(plan, where, run)
    fields = set(FashionBlip2Config().to_dict())
    unknown = sorted(set(run.model_overrides) - fields)
    if unknown:
        raise PlanError(f"plan {plan.name}: {where}: model_overrides {', '.join(unknown)} is not a FashionBLIP-2 "
                        "config field")  # fmt: skip
    if run.trains:
        with tempfile.TemporaryDirectory() as scratch:
            options = Path(scratch) / "train.yaml"
            options.write_text(yaml.safe_dump(commands.train_options(plan, run, layout)))
            argv = ["--config", str(options), "--output-dir", str(layout.run_dir(run.name))]
            _check_parses(plan, where, argv, _train_parser, {f"--config {options}": "options"})


def _check_conversion(plan: Plan, where: str, run) -> None:
    """An untrained row is converted by `python -m modeling_fashionblip2 convert`, which takes these only."""
    extra = sorted(set(run.model_overrides) - set(commands.CONVERT_OVERRIDES))
    extra += sorted(f"options.{key}" for key in set(run.options) - {"targetpad"})
    if extra:
        raise PlanError(f"plan {plan.name}: {where}: an untrained (converted) run takes model_overrides "
                        f"{', '.join(commands.CONVERT_OVERRIDES)} and options.targetpad only, not {', '.join(extra)}")


def _check_model_source(plan: Plan, where: str, source: str) -> None:
    """A folder that exists, or a syntactically valid Hub id (whether the Hub has it is known only online)."""
    if Path(source).expanduser().is_dir():
        return
    try:
        validate_repo_id(source)
    except HFValidationError:
        raise PlanError(f"plan {plan.name}: {where}: init model {source!r} is neither a folder nor a Hub id") from None


def _check_baselines(plan: Plan, layout: commands.Layout) -> None:
    if plan.baselines is None:
        return
    import eval_cir

    where = "baselines"
    names = {run.name for run in plan.runs}
    if plan.baselines.model not in names:
        raise PlanError(f"plan {plan.name}: {where}: model names unknown run {plan.baselines.model!r} "
                        f"(runs: {', '.join(sorted(names))})")  # fmt: skip
    for kind in plan.baselines.kinds:
        if kind not in eval_cir.BASELINES:
            raise PlanError(f"plan {plan.name}: {where}: unknown baseline {kind!r} (known: {', '.join(eval_cir.BASELINES)})")
    for evaluation in plan.baselines.evaluations:
        _require_evaluation(plan, evaluation, where)


def _check_acceptance(plan: Plan) -> None:
    if not plan.acceptance:
        return
    evaluation = plan.acceptance.get("evaluation")
    _require_evaluation(plan, evaluation, "acceptance")
    metric = str(plan.acceptance.get("metric", "recall@10"))
    if not metric.startswith("recall@"):
        raise PlanError(f"plan {plan.name}: acceptance: metric must be recall@K, got {metric!r}")
    if plan.baselines is None or evaluation not in plan.baselines.evaluations:
        raise PlanError(f"plan {plan.name}: acceptance: evaluation {evaluation!r} has no baselines to compare with")
    trained = [run.name for run in plan.runs if run.trains]
    for name in plan.acceptance.get("runs", trained):
        if name not in trained:
            raise PlanError(f"plan {plan.name}: acceptance: runs names {name!r}, not a trained run of the plan "
                            f"(trained runs: {', '.join(trained)})")  # fmt: skip


def _require_dataset(plan: Plan, name: str, where: str) -> None:
    if name not in plan.datasets:
        raise PlanError(f"plan {plan.name}: {where}: unknown dataset {name!r} "
                        f"(plan datasets: {', '.join(plan.datasets) or 'none'})")  # fmt: skip


def _require_evaluation(plan: Plan, name, where: str) -> None:
    names = [evaluation.name for evaluation in plan.evaluations]
    if name not in names:
        raise PlanError(f"plan {plan.name}: {where}: unknown evaluation {name!r} (evaluations: {', '.join(names)})")


def _require_configs(plan: Plan, dataset: str, wanted, configs: dict, where: str, *, galleries: bool) -> None:
    from facap_dataset.schema import gallery_config

    available = configs[dataset]
    for config in wanted:
        needed = [config, gallery_config(config)] if galleries else [config]
        for name in needed:
            if name not in available:
                raise PlanError(f"plan {plan.name}: {where}: unknown config {name!r} in dataset {dataset!r} "
                                f"(configs: {', '.join(available)})")  # fmt: skip


# ------------------------------------------------------------------------------- entry points' own parsers
def _builder_parser() -> argparse.ArgumentParser:
    from facap_dataset.cli import build_parser

    return build_parser()


def _train_parser():
    import train_accelerate

    return train_accelerate


def _eval_parser():
    import eval_cir

    return eval_cir


def _check_parses(plan: Plan, where: str, argv: list[str], parser_factory, renames: dict | None = None) -> None:
    """Parse `argv` with the entry point's parser; its complaint becomes one PlanError line."""
    parser = parser_factory()
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
            parser.parse_args(argv)
    except SystemExit as exit_:
        if exit_.code not in (0, None):
            lines = [line for line in stderr.getvalue().splitlines() if line.strip()]
            # argparse's last line is "PROG: error: MESSAGE"; the plan entry replaces PROG.
            reason = lines[-1].split(" error: ", 1)[-1] if lines else f"exit code {exit_.code}"
            for old, new in (renames or {}).items():  # a scratch file's name means nothing to the reader
                reason = reason.replace(old, new)
            raise PlanError(f"plan {plan.name}: {where}: {reason}") from None

