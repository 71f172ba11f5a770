"""The plan's results as a reader of the paper compares them: `results.json` (everything gathered),
`results.md` (per evaluation: R@10/R@50 per category and their averages, one row per run, the baselines
below; the breakdown tables; the acceptance check; timings) and `results.png` (grouped bars of the average
R@10 per run and evaluation; R@10 against the words in the modification text).

Inputs are the `eval_cir.py` results.json files the plan wrote (recalls in percent); a missing one (a run not
finished yet) leaves its cells as "–"."""

from __future__ import annotations

import json
from pathlib import Path

from facap_io.atomic import write_file, write_json, write_text

from .commands import Layout
from .plan import Plan

MISSING = "–"
TABLE_K = (10, 50)
MIN_PLOTTED_QUERIES = 10  # a bucket with fewer queries is a table cell only: its recall is too noisy to draw


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def gather(plan: Plan, layout: Layout, state: dict) -> dict:
    """Everything the report shows, as one JSON-ready mapping (see the module docstring)."""
    steps = state.get("steps", {})
    runs = []
    for run in plan.runs:
        results = {evaluation.name: _read(layout.eval_file(run.name, evaluation.name)) for evaluation in plan.evaluations}
        runs.append({
            "name": run.name, "label": run.label, "init": f"{run.init_kind}:{run.init}", "datasets": list(run.datasets),
            "configs": list(run.configs), "steps": run.steps, "epochs": run.epochs, "trained": run.trains,
            "model_overrides": run.model_overrides,
            "train_seconds": steps.get(f"train:{run.name}", {}).get("seconds"), "results": results,
        })  # fmt: skip
    baselines = {}
    if plan.baselines is not None:
        for kind in plan.baselines.kinds:
            baselines[kind] = {name: _read(layout.baseline_file(kind, name)) for name in plan.baselines.evaluations}
    gathered = {
        "plan": plan.name,
        "description": plan.description,
        "evaluations": [{"name": e.name, "label": e.label, "dataset": e.dataset, "configs": list(e.configs),
                         "split": e.split, "breakdowns": list(e.breakdowns)} for e in plan.evaluations],  # fmt: skip
        "runs": runs,
        "baselines": {"model": plan.baselines.model, "results": baselines} if plan.baselines else None,
        "timings": {key: {"seconds": record.get("seconds"), "cpu_seconds": record.get("cpu_seconds")}
                    for key, record in steps.items()},  # fmt: skip
        "total_seconds": round(sum(record.get("seconds") or 0 for record in steps.values()), 1),
        "total_cpu_seconds": round(sum(record.get("cpu_seconds") or 0 for record in steps.values()), 1),
    }
    gathered["acceptance"] = acceptance(plan, gathered)
    return gathered


def _average(results: dict | None, metric: str) -> float | None:
    if not results or not results.get("average"):
        return None
    return results["average"].get(metric)


def acceptance(plan: Plan, gathered: dict) -> dict | None:
    """Each checked row (the plan's `acceptance.runs`, else every trained run) against the best baseline on the
    acceptance evaluation's average `metric`."""
    if not plan.acceptance or gathered["baselines"] is None:
        return None
    evaluation, metric = plan.acceptance["evaluation"], str(plan.acceptance.get("metric", "recall@10"))
    bars = {kind: _average(by_eval.get(evaluation), metric) for kind, by_eval in gathered["baselines"]["results"].items()}
    known = [value for value in bars.values() if value is not None]
    threshold = max(known) if known else None
    checked = plan.acceptance.get("runs", [run.name for run in plan.runs if run.trains])
    rows = {}
    for run in gathered["runs"]:
        if run["name"] not in checked:
            continue
        value = _average(run["results"].get(evaluation), metric)
        rows[run["name"]] = {"value": value,
                             "pass": None if value is None or threshold is None else value > threshold}  # fmt: skip
    verdicts = [row["pass"] for row in rows.values()]
    return {"evaluation": evaluation, "metric": metric, "baselines": bars, "threshold": threshold, "rows": rows,
            "pass": None if None in verdicts or not verdicts else all(verdicts)}  # fmt: skip


# ------------------------------------------------------------------------------------------- markdown
def _cell(value) -> str:
    return MISSING if value is None else f"{value:.2f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|",
            *("| " + " | ".join(row) + " |" for row in rows)]  # fmt: skip


def _recall_row(name: str, results: dict | None, configs: list[str]) -> list[str]:
    cells = [name]
    for config in configs:
        values = (results or {}).get("configs", {}).get(config) or {}
        cells += [_cell(values.get(f"recall@{k}")) for k in TABLE_K]
    average = (results or {}).get("average") or {}
    cells += [_cell(average.get(f"recall@{k}")) for k in TABLE_K] + [_cell(average.get("mean"))]
    return cells


def recall_tables(gathered: dict) -> list[str]:
    lines = []
    for evaluation in gathered["evaluations"]:
        configs, name = evaluation["configs"], evaluation["name"]
        header = ["run"] + [f"{config} R@{k}" for config in configs for k in TABLE_K]
        header += [f"average R@{k}" for k in TABLE_K] + ["mean"]
        rows = [_recall_row(run["label"], run["results"].get(name), configs) for run in gathered["runs"]]
        if gathered["baselines"]:
            for kind, by_eval in gathered["baselines"]["results"].items():
                if name in by_eval:
                    rows.append(_recall_row(f"*{kind} baseline*", by_eval[name], configs))
        lines += [f"## {evaluation['label']} ({evaluation['dataset']}, {evaluation['split']} split)", "",
                  "Recall in %; mean = (average R@10 + average R@50) / 2.", "", *_table(header, rows), ""]  # fmt: skip
    return lines


def _breakdown(results: dict | None, kind: str) -> dict | None:
    return ((results or {}).get("breakdowns") or {}).get(kind)


def breakdown_tables(gathered: dict, metric: str = "recall@10") -> list[str]:
    """Per breakdown kind: one row per (run, evaluation), one column per bucket (pooled over categories)."""
    lines = []
    kinds = [kind for evaluation in gathered["evaluations"] for kind in evaluation["breakdowns"]]
    for kind in dict.fromkeys(kinds):
        rows, buckets = [], None
        for evaluation in gathered["evaluations"]:
            if kind not in evaluation["breakdowns"]:
                continue
            for run in gathered["runs"]:
                found = _breakdown(run["results"].get(evaluation["name"]), kind)
                if found is None:
                    continue
                buckets = buckets or list(found["buckets"])
                pooled = found.get("average") or {}
                rows.append([run["label"], evaluation["label"]] + [
                    f"{_cell((pooled.get(b) or {}).get(metric))} (n={(pooled.get(b) or {}).get('num_queries', 0)})"
                    for b in buckets])  # fmt: skip
        if buckets:
            title = "words in the modification text" if kind == "text-length" else "attributes changed"
            lines += [f"## {metric.replace('recall@', 'R@')} by {title} ({kind}), pooled over categories", "",
                      *_table(["run", "evaluation", *buckets], rows), ""]  # fmt: skip
    return lines


def acceptance_lines(gathered: dict) -> list[str]:
    check = gathered.get("acceptance")
    if not check:
        return []
    metric = check["metric"].replace("recall@", "R@")
    bars = ", ".join(f"{kind} {_cell(value)}" for kind, value in check["baselines"].items())
    lines = [f"## Acceptance: each checked row beats the baselines on {check['evaluation']} (average {metric})", "",
             f"Baselines: {bars}.", ""]  # fmt: skip
    for name, row in check["rows"].items():
        verdict = {True: "PASS", False: "FAIL", None: "not run"}[row["pass"]]
        lines.append(f"- {verdict} {name}: {_cell(row['value'])}")
    return lines + [""]


def markdown(gathered: dict) -> str:
    lines = [f"# Results of plan `{gathered['plan']}`", ""]
    if gathered["description"]:
        lines += [gathered["description"].strip(), ""]
    lines += ["Rows:", ""]
    for run in gathered["runs"]:
        length = f"{run['steps']} steps" if run["steps"] is not None else f"{run['epochs']:g} epochs"
        trained = f"{length} on {', '.join(run['datasets'])}" if run["trained"] else "untrained"
        overrides = f", overrides {json.dumps(run['model_overrides'])}" if run["model_overrides"] else ""
        lines.append(f"- **{run['label']}** (`{run['name']}`): init {run['init']}, {trained}{overrides}")
    lines.append("")
    lines += recall_tables(gathered) + breakdown_tables(gathered) + acceptance_lines(gathered)
    timings = [[key, _cell(value["seconds"]), _cell(value["cpu_seconds"])] for key, value in gathered["timings"].items()]
    lines += ["## Timings", "", *_table(["step", "seconds", "CPU seconds"], timings), "",
              f"Total: {gathered['total_seconds']:.0f} s ({gathered['total_cpu_seconds']:.0f} CPU s; the CPU time "
              "does not depend on what else the machine runs).", ""]  # fmt: skip
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------- figure
def figure(gathered: dict, path: Path, metric: str = "recall@10") -> Path:
    """results.png: (left) average `metric` per run, one bar per evaluation; (right) `metric` per text-length
    bucket, one line per run and evaluation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    evaluations = gathered["evaluations"]
    rows = [(run["label"], run["results"]) for run in gathered["runs"]]
    if gathered["baselines"]:
        rows += [(f"{kind} (baseline)", by_eval) for kind, by_eval in gathered["baselines"]["results"].items()]
    label = metric.replace("recall@", "R@")
    fig, (bars_axis, lines_axis) = plt.subplots(1, 2, figsize=(18, 6), gridspec_kw={"width_ratios": [3, 2]},
                                             layout="constrained")
    width = 0.8 / max(len(evaluations), 1)
    for index, evaluation in enumerate(evaluations):
        values = [_average(results.get(evaluation["name"]), metric) for _, results in rows]
        positions = [row + (index - (len(evaluations) - 1) / 2) * width for row in range(len(rows))]
        bars_axis.bar(positions, [value or 0.0 for value in values], width, label=evaluation["label"])
        for x, value in zip(positions, values):
            bars_axis.text(x, (value or 0.0) + 0.5, MISSING if value is None else f"{value:.0f}", ha="center", fontsize=7)
    bars_axis.set_xticks(range(len(rows)), [name for name, _ in rows], rotation=25, ha="right", fontsize=8)
    bars_axis.set_ylim(0, 108)  # recall in %: equal scales make figures of different plans comparable
    bars_axis.set_ylabel(f"average {label} (%)")
    bars_axis.set_title(f"{label}, mean over categories")
    bars_axis.legend(fontsize=8)
    _text_length_lines(lines_axis, gathered, metric)
    fig.suptitle(f"plan {gathered['plan']}")
    try:
        return write_file(path, lambda temporary: fig.savefig(temporary, format="png", dpi=110))
    finally:
        plt.close(fig)


def _text_length_lines(axis, gathered: dict, metric: str) -> None:
    styles = ["-", "--", ":", "-."]
    drawn = False
    for index, evaluation in enumerate(e for e in gathered["evaluations"] if "text-length" in e["breakdowns"]):
        for run_index, run in enumerate(gathered["runs"]):
            found = _breakdown(run["results"].get(evaluation["name"]), "text-length")
            if found is None:
                continue
            buckets = list(found["buckets"])
            pooled = [(found.get("average") or {}).get(b) or {} for b in buckets]
            values = [v.get(metric) if v.get("num_queries", 0) >= MIN_PLOTTED_QUERIES else None for v in pooled]
            axis.plot(range(len(buckets)), [float("nan") if v is None else v for v in values],
                      linestyle=styles[index % len(styles)], marker="o", color=f"C{run_index}",
                      label=f"{run['label']} — {evaluation['label']}")  # fmt: skip
            axis.set_xticks(range(len(buckets)), buckets)
            drawn = True
    label = metric.replace("recall@", "R@")
    axis.set_title(f"{label} by words in the modification text (buckets of >= {MIN_PLOTTED_QUERIES} queries)")
    axis.set_xlabel("words (bucket)")
    axis.set_ylabel(f"{label} (%)")
    axis.set_ylim(0, 105)
    if drawn:
        axis.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    else:
        axis.text(0.5, 0.5, "no text-length breakdown", ha="center", va="center", transform=axis.transAxes)


def write_reports(plan: Plan, layout: Layout, state: dict) -> dict:
    """Write results.json, results.md and results.png into the output folder (each atomically)."""
    gathered = gather(plan, layout, state)
    write_json(layout.root / "results.json", gathered)
    write_text(layout.root / "results.md", markdown(gathered))
    figure(gathered, layout.root / "results.png")
    return gathered
