"""The paper's experiment grid as data (a YAML plan) and the runner that reproduces it through the project's
own entry points: `python scripts/paper.py --plan PLAN --out DIR` (`make paper` for the synthetic plan)."""

from .plan import Plan, PlanError, load_plan, run_order

__all__ = ["Plan", "PlanError", "load_plan", "run_order"]
