"""`python scripts/paper.py --plan PLAN --out DIR`: run a plan of the paper's experiment grid and write
DIR/results.{md,json,png}. Bad input (an unknown dataset, config, preset or run, a cycle of `init`
references, an output folder holding other results) is one `error:` line, exit 2, before anything runs; a
failed step is one line naming it and its log, exit 1, with the finished steps kept."""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

from facap_io.atomic import check_writable
from facap_io.errors import FacapError

from .commands import Layout
from .execute import Runner, StepFailed, check_settings, execute, plan_steps, read_state, subprocess_runner
from .plan import load_plan, resolve_plan_path
from .report import write_reports
from .validate import validate_plan


def build_parser(plans_dir: Path) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="paper.py", description=__doc__.split("\n\n")[0])
    shipped = ", ".join(sorted(path.stem for path in plans_dir.glob("*.yaml")))
    parser.add_argument("--plan", required=True, help=f"a shipped plan ({shipped}) or a plan YAML file")
    parser.add_argument("--out", required=True, type=Path, help="output folder (created; a rerun continues it)")
    parser.add_argument("--launch", help="`accelerate launch` options replacing the plan's, e.g. "
                        "'--multi_gpu --num_processes 4 --mixed_precision bf16'")  # fmt: skip
    parser.add_argument("--check", action="store_true", help="validate the plan and list its steps; run nothing")
    parser.add_argument("--report-only", action="store_true", help="rewrite the results from what is finished")
    return parser


def main(argv: list[str] | None = None, *, plans_dir: Path, runner: Runner = subprocess_runner) -> int:
    args = build_parser(plans_dir).parse_args(argv)
    started = time.monotonic()
    try:
        plan = load_plan(resolve_plan_path(args.plan, plans_dir))
        layout = Layout(args.out.resolve())
        launch = shlex.split(args.launch) if args.launch is not None else list(plan.launch)
        validate_plan(plan, layout)
        state = read_state(layout, plan)
        steps = plan_steps(plan, layout, [str(item).replace("{nproc}", _cores()) for item in launch])
        check_settings(state, steps, plan, layout)
    except FacapError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.check:
        for step in steps:
            print(f"{step.key}: {step.describe}")
        return 0
    try:
        check_writable(layout.root, what="--out", folder=True)
    except FacapError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    status = 0
    if not args.report_only:
        try:
            state = execute(plan, layout, steps, state, runner)
        except StepFailed as error:
            print(f"error: {error}", file=sys.stderr)
            status = 1
        except KeyboardInterrupt:
            print("interrupted; finished steps are kept: rerun the same command to continue", file=sys.stderr)
            status = 130
    gathered = write_reports(plan, layout, state)
    print(f"results: {layout.root / 'results.md'}, {layout.root / 'results.json'}, {layout.root / 'results.png'} "
          f"({time.monotonic() - started:.0f} s this time)")  # fmt: skip
    if gathered.get("acceptance"):
        print(f"acceptance ({gathered['acceptance']['metric']} on {gathered['acceptance']['evaluation']}): "
              f"{ {True: 'PASS', False: 'FAIL', None: 'incomplete'}[gathered['acceptance']['pass']] }")  # fmt: skip
    return status


def _cores() -> str:
    import os

    return str(os.cpu_count() or 1)
