"""scripts/paper.py: plan validation (each bad input is one line before anything runs), the order of runs and
cycle detection, skipping finished steps and resuming after a failure (with a fake runner recording the
commands), results.md/json/png from fake evaluation files, and one real end-to-end run of a tiny plan."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest
import yaml

from facap_paper import PlanError, load_plan, run_order
from facap_paper.cli import main as paper_main

REPO_ROOT = Path(__file__).resolve().parent.parent
PLANS_DIR = REPO_ROOT / "scripts" / "plans"
TRIPLETS = ["dress", "shirt", "toptee"]
CONFIGS = TRIPLETS + [f"{name}-gallery" for name in TRIPLETS]

BASE_PLAN = {
    "name": "unit",
    "launch": ["--num_processes", "1"],
    "datasets": {
        "pre": {"build": "synthetic", "options": {"num_images": 300, "seed": 0}, "configs": CONFIGS},
        "fiq": {"build": "synthetic", "options": {"num_images": 300, "seed": 1}, "configs": CONFIGS},
    },
    "training": {"batch_size": 8, "eval_k_values": [1, 5, 10]},
    # Listed with the fine-tuning run first: the order must come from the init references.
    "runs": [
        {"name": "ft", "init": {"run": "pre"}, "datasets": ["fiq"], "configs": TRIPLETS, "steps": 2},
        {"name": "pre", "init": {"preset": "tiny"}, "datasets": ["pre"], "configs": TRIPLETS, "steps": 3},
        {"name": "solo", "init": {"preset": "tiny"}, "datasets": ["fiq"], "configs": ["dress"], "steps": 2,
         "model_overrides": {"adapter_dim": 0}},
    ],
    "evaluations": [{"name": "val", "dataset": "fiq", "configs": TRIPLETS, "breakdowns": ["text-length"]}],
    "baselines": {"model": "solo", "kinds": ["image-only", "text-only"], "evaluations": ["val"]},
    "acceptance": {"evaluation": "val", "metric": "recall@10"},
}


def write_plan(folder: Path, plan: dict, name: str = "plan.yaml") -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump(plan, sort_keys=False))
    return path


def fake_results(r10: float, configs=TRIPLETS) -> dict:
    per = {c: {"recall@1": r10 / 4, "recall@10": r10, "recall@50": min(100.0, r10 * 2), "num_queries": 4} for c in configs}
    buckets = ["0-7", "8-11", "12-15", "16+"]
    return {
        "protocol": {"split": "validation"},
        "configs": per,
        "average": {"recall@1": r10 / 4, "recall@10": r10, "recall@50": min(100.0, r10 * 2),
                    "mean": (r10 + min(100.0, r10 * 2)) / 2},
        "breakdowns": {"text-length": {"edges": [8, 12, 16], "buckets": buckets, "configs": {},
                                       "average": {b: {"num_queries": 3, "recall@10": r10 - i} for i, b in enumerate(buckets)}}},
    }  # fmt: skip


def _is_convert(command: list[str]) -> bool:
    return command[1:4] == ["-m", "modeling_fashionblip2", "convert"]


class FakeRunner:
    """Records each command and makes the files the real entry point would; `fail` names a step to fail."""

    def __init__(self, fail: str | None = None, recall: dict | None = None, built_configs=CONFIGS):
        self.commands: list[list[str]] = []
        self.fail = fail
        self.recall = recall or {}
        self.built_configs = built_configs

    def __call__(self, command: list[str], log: Path) -> int:
        self.commands.append(command)
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(" ".join(command))
        if self.fail and self.fail == log.stem:
            return 3
        text = " ".join(command)
        if "facap_dataset" in command:
            out = Path(_after(command, "--out"))
            out.mkdir(parents=True, exist_ok=True)
            card = yaml.safe_dump({"configs": [{"config_name": c, "data_files": f"{c}/*.parquet"} for c in self.built_configs]})
            (out / "README.md").write_text(f"---\n{card}---\n")
        elif "train_accelerate" in text or _is_convert(command):
            final = Path(_after(command, "--output-dir")) / "final" if "train_accelerate" in text \
                else Path(_after(command, "convert", 2))  # fmt: skip
            final.mkdir(parents=True, exist_ok=True)
            (final / "config.json").write_text(json.dumps({"model_type": "fashionblip2"}))
        elif "eval_cir" in text:
            output = Path(_after(command, "--output"))
            output.parent.mkdir(parents=True, exist_ok=True)
            key = _after(command, "--baseline") if "--baseline" in command else Path(_after(command, "--model")).parent.name
            output.write_text(json.dumps(fake_results(self.recall.get(key, 50.0))))
        return 0

    def kinds(self) -> list[str]:
        """One word per recorded command: build, train:RUN, eval:RUN or baseline:KIND."""
        words = []
        for command in self.commands:
            text = " ".join(command)
            if "facap_dataset" in command:
                words.append("build:" + Path(_after(command, "--out")).name)
            elif "train_accelerate" in text:
                words.append("train:" + Path(_after(command, "--output-dir")).name)
            elif "--baseline" in command:
                words.append("baseline:" + _after(command, "--baseline"))
            else:
                words.append("eval:" + Path(_after(command, "--model")).parent.name)
        return words


def _after(command: list[str], flag: str, offset: int = 1) -> str:
    return command[command.index(flag) + offset]


def run_paper(tmp_path: Path, plan: dict, runner: FakeRunner, *extra: str, out: str = "out") -> int:
    path = write_plan(tmp_path, plan)
    return paper_main(["--plan", str(path), "--out", str(tmp_path / out), *extra], plans_dir=PLANS_DIR, runner=runner)


# ------------------------------------------------------------------------------------------------- plans
def test_shipped_synthetic_plan_validates_and_lists_its_grid(tmp_path, capsys):
    runner = FakeRunner()
    assert paper_main(["--plan", "paper-synthetic", "--out", str(tmp_path / "out"), "--check"],
                      plans_dir=PLANS_DIR, runner=runner) == 0  # fmt: skip
    listed = capsys.readouterr().out
    assert runner.commands == [] and not (tmp_path / "out").exists()  # --check runs and writes nothing
    for key in ("build:facap", "build:fashioniq", "build:enhfashioniq", "train:fiq", "train:facap", "train:facap-fiq",
                "eval:facap:enhfashioniq", "baseline:image-only:fashioniq", "baseline:text-only:fashioniq"):
        assert re.search(rf"^{re.escape(key)}:", listed, re.M), key


@pytest.mark.parametrize("name", ["paper-synthetic", "paper-blip2"])
def test_shipped_plans_hold_the_paper_rows(name):
    plan = load_plan(PLANS_DIR / f"{name}.yaml")
    runs = {run.name: run for run in run_order(plan)}
    order = [run.name for run in run_order(plan)]
    fiq_only = [r for r in runs.values() if r.trains and r.init_kind != "run" and set(r.datasets) == {"fashioniq"}]
    facap_only = [r for r in runs.values() if r.trains and r.init_kind != "run" and set(r.datasets) == {"facap"}]
    assert fiq_only and facap_only
    chained = [r for r in runs.values() if r.init_kind == "run" and r.datasets == ("fashioniq",)]
    overrides = [runs[r.init].model_overrides for r in chained]  # the ablations change the pre-trained model
    assert {} in overrides and {"adapter_dim": 0} in overrides and {"matching": "max"} in overrides
    for run in chained:
        assert order.index(run.init) < order.index(run.name)
    assert {e.dataset for e in plan.evaluations} == {"fashioniq", "enhfashioniq"}
    assert set(plan.baselines.kinds) == {"image-only", "text-only"}
    if name == "paper-blip2":
        first = plan.runs[0]
        assert first.steps == 0 and first.init == "Salesforce/blip2-itm-vit-g"  # BLIP-2 zero-shot, untrained
        assert all(r.init == "Salesforce/blip2-itm-vit-g" for r in runs.values() if r.init_kind == "model")


def test_blip2_plan_runs_the_paper_recipe_through_the_entry_points(tmp_path):
    """paper-blip2 with its three datasets stood in by declared builds (the real folders are not here)."""
    plan = yaml.safe_load((PLANS_DIR / "paper-blip2.yaml").read_text())
    facap_configs = ["dress", "jacket", "outfit", "pants", "skirt", "top"]
    plan["datasets"] = {"facap": {"build": "synthetic", "configs": facap_configs},
                        "fashioniq": {"build": "synthetic", "configs": CONFIGS},
                        "enhfashioniq": {"build": "synthetic", "configs": CONFIGS}}  # fmt: skip
    runner = FakeRunner(built_configs=CONFIGS + facap_configs)
    assert run_paper(tmp_path, plan, runner, "--launch", "--multi_gpu --num_processes 4") == 0
    out = tmp_path / "out"
    convert = next(c for c in runner.commands if _is_convert(c))
    assert convert[convert.index("convert") + 1:] == [
        "Salesforce/blip2-itm-vit-g", str(out / "runs" / "blip2-zeroshot" / "final"), "--target-pad", "--overwrite"]
    train = next(c for c in runner.commands if c[-1] == str(out / "runs" / "facap-fiq"))
    assert train[1:5] == ["launch", "--multi_gpu", "--num_processes", "4"]
    options = yaml.safe_load((out / "commands" / "facap-fiq.train.yaml").read_text())
    assert options["num_epochs"] == 10 and "max_steps" not in options and options["targetpad"] == 1.25
    assert options["mixed_precision"] == "bf16" and options["batch_size"] == 32
    assert options["eval_dataset"] == str(out / "data" / "fashioniq") and options["init_from"] == str(out / "runs" / "facap")
    ablation = yaml.safe_load((out / "commands" / "facap-noadapter.train.yaml").read_text())
    assert ablation["model"] == "Salesforce/blip2-itm-vit-g" and ablation["model_overrides"] == {"adapter_dim": 0}
    results = json.loads((out / "results.json").read_text())
    assert results["runs"][0]["name"] == "blip2-zeroshot" and "blip2-zeroshot" not in results["acceptance"]["rows"]


def _mutate(change):
    plan = copy.deepcopy(BASE_PLAN)
    change(plan)
    return plan


BAD_PLANS = {
    "unknown dataset": (lambda p: p["runs"][1].update(datasets=["prex"]), "run 'pre': unknown dataset 'prex'"),
    "unknown eval dataset": (lambda p: p["evaluations"][0].update(dataset="nope"), "evaluation 'val': unknown dataset 'nope'"),
    "unknown config": (lambda p: p["runs"][1].update(configs=["dress", "skirt"]), "run 'pre': unknown config 'skirt'"),
    "unknown eval config": (lambda p: p["evaluations"][0].update(configs=["skirt"]), "unknown config 'skirt' in dataset 'fiq'"),
    "unknown preset": (lambda p: p["runs"][1].update(init={"preset": "huge"}), "run 'pre': unknown preset 'huge'"),
    "unknown run": (lambda p: p["runs"][0].update(init={"run": "prer"}), "run 'ft': init names unknown run 'prer'"),
    "cycle": (lambda p: p["runs"][1].update(init={"run": "ft"}), "init references form a cycle: ft -> pre -> ft"),
    "self cycle": (lambda p: p["runs"][2].update(init={"run": "solo"}), "cycle: solo -> solo"),
    "unknown baseline run": (lambda p: p["baselines"].update(model="ghost"), "baselines: model names unknown run 'ghost'"),
    "unknown baseline kind": (lambda p: p["baselines"].update(kinds=["oracle"]), "unknown baseline 'oracle'"),
    "unknown breakdown": (lambda p: p["evaluations"][0].update(breakdowns=["colour"]), "unknown breakdown 'colour'"),
    "unknown override": (lambda p: p["runs"][2].update(model_overrides={"adaptor_dim": 0}), "adaptor_dim is not a FashionBLIP-2"),
    "unknown trainer option": (lambda p: p["training"].update(lerning_rate=1), "run 'pre': options: unknown option 'lerning_rate'"),
    "bad trainer value": (lambda p: p["runs"][0].update(options={"batch_size": 0}), "run 'ft': "),
    "unknown plan key": (lambda p: p.update(evaluation=[]), "unknown key evaluation"),
    "duplicate run": (lambda p: p["runs"].append(dict(p["runs"][2])), "run name 'solo' is used twice"),
    "negative steps": (lambda p: p["runs"][2].update(steps=-1), "steps must be an integer >= 0"),
    "untrained preset": (lambda p: p["runs"][2].update(steps=0), "steps: 0 (no training) needs init: {model"),
    "bad model id": (lambda p: p["runs"][2].update(init={"model": "not a model!"}), "neither a folder nor a Hub id"),
    "unknown builder option": (lambda p: p["datasets"]["pre"].update(options={"num_imagez": 3}), "dataset 'pre': unrecognized"),
    "unknown data reference": (lambda p: p["datasets"]["pre"]["options"].update(out2="{data:zzz}"), "unknown dataset 'zzz'"),
    "unknown acceptance run": (lambda p: p["acceptance"].update(runs=["pre", "ghost"]), "acceptance: runs names 'ghost'"),
    "missing local dataset": (lambda p: p["datasets"].update(fiq={"path": "/nonexistent/fiq"}), "dataset 'fiq': no dataset folder"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(BAD_PLANS))
def test_bad_plan_is_one_line_before_anything_runs(tmp_path, capsys, case):
    change, expected = BAD_PLANS[case]
    runner = FakeRunner()
    assert run_paper(tmp_path, _mutate(change), runner) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert expected in err, err
    assert runner.commands == [] and not (tmp_path / "out").exists()


def test_unknown_plan_name_lists_the_shipped_plans(tmp_path, capsys):
    assert paper_main(["--plan", "paper-nope", "--out", str(tmp_path / "o")], plans_dir=PLANS_DIR) == 2
    err = capsys.readouterr().err
    assert "unknown plan 'paper-nope'" in err and "paper-synthetic" in err and "paper-blip2" in err


def test_run_order_puts_init_runs_first_and_keeps_plan_order_otherwise(tmp_path):
    plan = load_plan(write_plan(tmp_path, BASE_PLAN))
    assert [run.name for run in run_order(plan)] == ["pre", "ft", "solo"]
    chain = _mutate(lambda p: p["runs"].insert(0, {"name": "ft2", "init": {"run": "ft"}, "datasets": ["fiq"],
                                                   "configs": ["dress"], "steps": 1}))  # fmt: skip
    assert [run.name for run in run_order(load_plan(write_plan(tmp_path, chain)))] == ["pre", "ft", "ft2", "solo"]
    cyclic = _mutate(lambda p: p["runs"][1].update(init={"run": "solo"}) or p["runs"][2].update(init={"run": "ft"}))
    with pytest.raises(PlanError, match=r"cycle: (ft -> pre -> solo -> ft|pre -> solo -> ft -> pre)"):
        run_order(load_plan(write_plan(tmp_path, cyclic)))


# --------------------------------------------------------------------------------------- running steps
def test_steps_run_in_dependency_order_through_the_entry_points(tmp_path, capsys):
    runner = FakeRunner()
    assert run_paper(tmp_path, BASE_PLAN, runner) == 0
    assert runner.kinds() == ["build:pre", "build:fiq", "train:pre", "eval:pre", "train:ft", "eval:ft", "train:solo",
                              "eval:solo", "baseline:image-only", "baseline:text-only"]  # fmt: skip
    out = tmp_path / "out"
    train_ft = next(c for c in runner.commands if "train_accelerate" in " ".join(c) and c[-1].endswith("ft"))
    assert train_ft[1] == "launch" and "--num_processes" in train_ft and "--config" in train_ft
    options = yaml.safe_load(Path(_after(train_ft, "--config")).read_text())
    assert options["init_from"] == str(out / "runs" / "pre") and "model" not in options
    assert options["dataset"] == [str(out / "data" / "fiq")] and options["max_steps"] == 2 and options["eval_k_values"] == [1, 5, 10]
    solo = yaml.safe_load((out / "commands" / "solo.train.yaml").read_text())
    assert solo["model"] == "tiny" and solo["model_overrides"] == {"adapter_dim": 0}
    evaluation = next(c for c in runner.commands if "eval_cir" in " ".join(c))
    assert _after(evaluation, "--breakdown") == "text-length" and _after(evaluation, "--model").endswith("pre/final")
    progress = capsys.readouterr().out
    assert "[3/10] training pre (init preset tiny, 3 steps on pre) ..." in progress and "[10/10]" in progress


def test_failed_run_stops_the_plan_and_a_rerun_resumes_at_it(tmp_path, capsys):
    failing = FakeRunner(fail="train.ft")
    assert run_paper(tmp_path, BASE_PLAN, failing) == 1
    err = capsys.readouterr().err
    out = tmp_path / "out"
    assert f"train:ft failed (exit status 3)" in err and str(out / "logs" / "train.ft.log") in err and err.count("\n") == 1
    assert failing.kinds()[-1] == "train:ft" and "train:solo" not in failing.kinds()
    state = json.loads((out / "paper-state.json").read_text())
    assert set(state["steps"]) == {"build:pre", "build:fiq", "train:pre", "eval:pre:val"}  # finished runs kept
    assert (out / "results.md").is_file()  # the report shows what finished

    # The killed run left a checkpoint: it resumes inside itself; nothing finished runs again.
    (out / "runs" / "ft" / "checkpoints" / "checkpoint-1").mkdir(parents=True)
    again = FakeRunner()
    assert run_paper(tmp_path, BASE_PLAN, again) == 0
    assert again.kinds()[0] == "train:ft" and "train:pre" not in again.kinds() and "build:pre" not in again.kinds()
    assert again.commands[0][-2:] == ["--resume-from-checkpoint", "latest"]
    assert "4 of 10 steps already finished" in capsys.readouterr().out

    # Everything finished: a rerun runs nothing and rewrites the report.
    idle = FakeRunner()
    assert run_paper(tmp_path, BASE_PLAN, idle) == 0 and idle.commands == []


def test_a_killed_run_without_checkpoint_starts_over_with_overwrite(tmp_path):
    assert run_paper(tmp_path, BASE_PLAN, FakeRunner(fail="train.solo")) == 1
    (tmp_path / "out" / "runs" / "solo").mkdir(parents=True, exist_ok=True)
    (tmp_path / "out" / "runs" / "solo" / "args.json").write_text("{}")
    again = FakeRunner()
    assert run_paper(tmp_path, BASE_PLAN, again) == 0
    assert again.kinds()[0] == "train:solo" and again.commands[0][-1] == "--overwrite"


def test_a_build_lacking_a_declared_config_stops_the_plan(tmp_path, capsys):
    runner = FakeRunner(built_configs=["dress", "dress-gallery"])
    assert run_paper(tmp_path, BASE_PLAN, runner) == 1
    err = capsys.readouterr().err
    assert "build:pre failed (the plan declares configs shirt, toptee, shirt-gallery, toptee-gallery that the build lacks" in err
    assert runner.kinds() == ["build:pre"]


def test_output_folder_of_another_plan_or_other_settings_is_refused(tmp_path, capsys):
    assert run_paper(tmp_path, BASE_PLAN, FakeRunner()) == 0
    before = sorted(p.relative_to(tmp_path) for p in (tmp_path / "out").rglob("*"))
    other = _mutate(lambda p: p.update(name="other"))
    runner = FakeRunner()
    assert run_paper(tmp_path, other, runner) == 2
    assert "holds the results of plan 'unit', not 'other'" in capsys.readouterr().err
    changed = _mutate(lambda p: p["runs"][1].update(steps=5))  # pre changes, so does ft that starts from it
    assert run_paper(tmp_path, changed, runner) == 2
    err = capsys.readouterr().err
    assert "made with other settings" in err and "train:pre" in err and "train:ft" in err and "train:solo" not in err
    assert runner.commands == [] and sorted(p.relative_to(tmp_path) for p in (tmp_path / "out").rglob("*")) == before


def test_out_path_that_is_a_file_is_refused(tmp_path, capsys):
    (tmp_path / "out").write_text("a file")
    assert run_paper(tmp_path, BASE_PLAN, FakeRunner()) == 2
    assert "output folder" in capsys.readouterr().err and (tmp_path / "out").read_text() == "a file"


def test_non_empty_folder_without_results_is_refused(tmp_path, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    assert run_paper(tmp_path, BASE_PLAN, FakeRunner()) == 2
    assert "is not empty and holds no plan results" in capsys.readouterr().err
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["notes.txt"]


# ------------------------------------------------------------------------------------------------ report
def test_results_md_json_png_from_evaluation_files(tmp_path):
    runner = FakeRunner(recall={"pre": 40.0, "ft": 61.5, "solo": 55.25, "image-only": 20.0, "text-only": 30.0})
    assert run_paper(tmp_path, BASE_PLAN, runner) == 0
    out = tmp_path / "out"
    results = json.loads((out / "results.json").read_text())
    assert [run["name"] for run in results["runs"]] == ["ft", "pre", "solo"]
    ft = next(run for run in results["runs"] if run["name"] == "ft")
    assert ft["results"]["val"]["average"]["recall@10"] == 61.5 and ft["init"] == "run:pre"
    acceptance = results["acceptance"]
    assert acceptance["threshold"] == 30.0 and acceptance["pass"] is True
    assert {name: row["pass"] for name, row in acceptance["rows"].items()} == {"ft": True, "pre": True, "solo": True}
    text = (out / "results.md").read_text()
    assert "| ft | 61.50 | 100.00 | 61.50 | 100.00 | 61.50 | 100.00 | 61.50 | 100.00 | 80.75 |" in text
    assert "| *text-only baseline* | 30.00 | 60.00 |" in text
    assert "| ft | val | 61.50 (n=3) | 60.50 (n=3) | 59.50 (n=3) | 58.50 (n=3) |" in text
    assert "- PASS ft: 61.50" in text
    assert "| step | seconds | CPU seconds |" in text and set(results["timings"]) == {
        "build:pre", "build:fiq", "train:pre", "train:ft", "train:solo", "eval:pre:val", "eval:ft:val",
        "eval:solo:val", "baseline:image-only:val", "baseline:text-only:val"}  # fmt: skip
    png = (out / "results.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # atomic writes leave no temporaries


def test_acceptance_fails_for_a_row_below_a_baseline(tmp_path, capsys):
    runner = FakeRunner(recall={"pre": 25.0, "image-only": 20.0, "text-only": 30.0})
    assert run_paper(tmp_path, BASE_PLAN, runner) == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["acceptance"]["rows"]["pre"]["pass"] is False and results["acceptance"]["pass"] is False
    assert "- FAIL pre: 25.00" in (tmp_path / "out" / "results.md").read_text()
    assert "acceptance (recall@10 on val): FAIL" in capsys.readouterr().out


def test_acceptance_checks_only_the_rows_it_names(tmp_path):
    plan = _mutate(lambda p: p["acceptance"].update(runs=["ft", "solo"]))
    runner = FakeRunner(recall={"pre": 25.0, "ft": 40.0, "solo": 35.0, "image-only": 20.0, "text-only": 30.0})
    assert run_paper(tmp_path, plan, runner) == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert set(results["acceptance"]["rows"]) == {"ft", "solo"} and results["acceptance"]["pass"] is True
    assert "| pre | 25.00 |" in (tmp_path / "out" / "results.md").read_text()  # still in the tables


def test_report_marks_missing_results(tmp_path):
    assert run_paper(tmp_path, BASE_PLAN, FakeRunner(fail="train.ft")) == 1
    text = (tmp_path / "out" / "results.md").read_text()
    assert re.search(r"^\| ft \| – \| – \|", text, re.M) and "| pre | 50.00 |" in text


# ------------------------------------------------------------------------------------------- real run
TINY_PLAN = {
    "name": "tiny",
    "launch": ["--num_processes", "1", "--num_machines", "1", "--num_cpu_threads_per_process", "{nproc}",
               "--mixed_precision", "no", "--dynamo_backend", "no"],
    "datasets": {"syn": {"build": "synthetic", "options": {"num_images": 300, "seed": 0, "image_size": 32},
                         "configs": CONFIGS}},
    "training": {"batch_size": 8, "eval_k_values": [1, 5, 10], "save_steps": 2, "report_to": "none", "num_workers": 0,
                 "model_overrides": {"temperature_init": 0.05}},
    "runs": [{"name": "tiny-run", "init": {"preset": "tiny"}, "datasets": ["syn"], "configs": TRIPLETS, "steps": 3}],
    "evaluations": [{"name": "val", "dataset": "syn", "configs": TRIPLETS, "breakdowns": ["text-length", "num-changes"],
                     "options": {"batch_size": 32, "k_values": [1, 5, 10]}}],
    "baselines": {"model": "tiny-run", "kinds": ["image-only"], "evaluations": ["val"]},
}  # fmt: skip


@pytest.mark.timeout(600)
def test_tiny_plan_end_to_end_through_the_real_entry_points(tmp_path, capsys):
    path = write_plan(tmp_path, TINY_PLAN)
    out = tmp_path / "out"
    assert paper_main(["--plan", str(path), "--out", str(out)], plans_dir=PLANS_DIR) == 0, capsys.readouterr()
    results = json.loads((out / "results.json").read_text())
    run = results["runs"][0]["results"]["val"]
    assert set(run["configs"]) == set(TRIPLETS) and 0 <= run["average"]["recall@10"] <= 100
    assert set(run["breakdowns"]) == {"text-length", "num-changes"}
    assert sum(b["num_queries"] for b in run["breakdowns"]["text-length"]["average"].values()) == 12
    assert results["baselines"]["results"]["image-only"]["val"]["average"]["recall@10"] is not None
    assert (out / "runs" / "tiny-run" / "final" / "config.json").is_file() and (out / "results.png").is_file()
    capsys.readouterr()
    assert paper_main(["--plan", str(path), "--out", str(out)], plans_dir=PLANS_DIR) == 0
    assert "4 of 4 steps already finished" in capsys.readouterr().out
