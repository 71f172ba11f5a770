"""The end of `make demo`: the trained model's recall next to the trivial baselines and the attribute oracles
of the synthetic set, the demo's pass criteria, and, with `--trust-remote-code`, a check that the saved folder
loads with remote code (it runs the folder's code, so only when asked: `make demo` asks for the folder it wrote).

    python scripts/demo_report.py --model ./demo_output/run/best --dataset ./demo_output/synthetic \
        --output demo_output/report.json [--trust-remote-code]

Rows (each the mean over the categories, recalls in percent):
- FashionBLIP-2: the trained model (facap_eval.evaluate, Fashion IQ protocol);
- image-only / text-only: facap_eval.evaluate_baseline with the same model (reference image alone; text with
  the mean image);
- text oracle / image oracle / composed oracle: the attribute oracles of facap_dataset.synthetic_oracle
  (expected recall of a perfect text-only / image-only / composing ranker; ties broken at random).
Criteria (issue 5): the model beats both baselines by >= 10 points at R@1 and by >= 1.5x at R@10.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from facap_io.lists import comma_list


K_VALUES = (1, 5, 10, 50)
R1_MARGIN_POINTS = 10.0
R10_RATIO = 1.5
# Run in a fresh interpreter from an empty folder: only transformers and the files saved next to the weights.
REMOTE_CODE_CHECK = """
import sys, torch
from transformers import AutoModel, AutoProcessor
model = AutoModel.from_pretrained(sys.argv[1], trust_remote_code=True).eval()
processor = AutoProcessor.from_pretrained(sys.argv[1], trust_remote_code=True)
assert "modeling_fashionblip2" not in sys.modules, "the package itself was imported"
print(type(model).__module__, type(model).__name__, sum(p.numel() for p in model.parameters()), "parameters")
"""


def oracle_rows(dataset: str, configs: list[str], split: str) -> dict[str, dict[str, float]]:
    """Mean over configs of each attribute oracle's expected recall."""
    import datasets

    from facap_dataset.schema import gallery_config
    from facap_dataset.synthetic_oracle import ORACLES, oracle_recall

    per_kind: dict[str, list[dict[str, float]]] = {kind: [] for kind in ORACLES}
    for config in configs:
        triplets = datasets.load_dataset(dataset, config, split=split).select_columns(
            ["captions", "reference_attributes", "target_id"]
        )
        gallery = datasets.load_dataset(dataset, gallery_config(config), split=split).select_columns(["image_id", "attributes"])
        queries = [(t["captions"], json.loads(t["reference_attributes"]), t["target_id"]) for t in triplets]
        by_id = {g["image_id"]: json.loads(g["attributes"]) for g in gallery}
        for kind in ORACLES:
            per_kind[kind].append(oracle_recall(kind, queries, by_id, K_VALUES))
    return {
        f"{kind} oracle": {key: sum(r[key] for r in rows) / len(rows) for key in rows[0]} for kind, rows in per_kind.items()
    }


def model_rows(model_dir: str, dataset: str, configs: list[str], split: str, batch_size: int) -> tuple[dict, dict]:
    import facap_eval

    model, processor = facap_eval.load_model_and_processor(model_dir)
    protocol = facap_eval.Protocol(split=split, k_values=tuple(K_VALUES))
    run = facap_eval.Runtime(batch_size=batch_size, progress=False)
    results = facap_eval.evaluate(model, processor, dataset, configs, protocol, run)
    rows = {"FashionBLIP-2 (trained)": results["average"]}
    for kind in facap_eval.BASELINES:
        rows[kind] = facap_eval.evaluate_baseline(kind, model, processor, dataset, configs, protocol, run)["average"]
    return rows, results


def check_criteria(rows: dict[str, dict[str, float]]) -> list[str]:
    """One line per criterion, each starting with PASS or FAIL."""
    model = rows["FashionBLIP-2 (trained)"]
    lines = []
    for baseline in ("image-only", "text-only"):
        base = rows[baseline]
        margin = model["recall@1"] - base["recall@1"]
        lines.append(f"{'PASS' if margin >= R1_MARGIN_POINTS else 'FAIL'} R@1 beats {baseline} by {margin:+.1f} points "
                     f"(need >= {R1_MARGIN_POINTS:.0f})")  # fmt: skip
        ratio = model["recall@10"] / max(base["recall@10"], 1e-9)
        lines.append(f"{'PASS' if ratio >= R10_RATIO else 'FAIL'} R@10 is {ratio:.2f}x {baseline} (need >= {R10_RATIO}x)")
    return lines


def format_table(rows: dict[str, dict[str, float]]) -> str:
    header = "method".ljust(26) + "".join(f"R@{k}".rjust(8) for k in K_VALUES)
    lines = [header, "-" * len(header)]
    for name, values in rows.items():
        lines.append(name.ljust(26) + "".join(f"{values[f'recall@{k}']:8.2f}" for k in K_VALUES))
    return "\n".join(lines)


def check_remote_code(model_dir: str) -> str:
    environment = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    with tempfile.TemporaryDirectory() as empty:
        # -I: isolated mode, so neither the repository nor the current folder is on sys.path.
        done = subprocess.run([sys.executable, "-I", "-c", REMOTE_CODE_CHECK, str(Path(model_dir).resolve())],
                              cwd=empty, env=environment, capture_output=True, text=True)  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(f"error: {model_dir} does not load with AutoModel trust_remote_code:\n{done.stderr[-2000:]}")
    return done.stdout.strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="saved model folder (e.g. OUT/best)")
    parser.add_argument("--dataset", required=True, help="the synthetic dataset folder")
    parser.add_argument("--configs", type=comma_list, default=["dress", "shirt", "toptee"])
    parser.add_argument("--split", default="validation")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--output", type=Path, help="write the rows and verdicts as JSON here")
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="also load the folder with AutoModel(trust_remote_code=True), which runs its code")  # fmt: skip
    args = parser.parse_args(argv)
    configs = args.configs

    import facap_eval
    from facap_io.atomic import write_json

    rows, results = model_rows(args.model, args.dataset, configs, args.split, args.batch_size)
    rows.update(oracle_rows(args.dataset, configs, args.split))
    verdicts = check_criteria(rows)
    loaded = check_remote_code(args.model) if args.trust_remote_code else None
    print(f"\n{args.split} split of {args.dataset}, mean over {', '.join(configs)} (recall in %):\n")
    print(format_table(rows))
    print("\nper category (trained model):\n" + facap_eval.format_results_table(results))
    print("\n" + "\n".join(verdicts))
    if loaded is not None:
        print(f"remote code: AutoModel.from_pretrained({args.model!r}, trust_remote_code=True) -> {loaded}")
    if args.output:
        write_json(args.output, {"rows": rows, "verdicts": verdicts, "results": results})
    return 0 if all(line.startswith("PASS") for line in verdicts) else 1


if __name__ == "__main__":
    sys.exit(main())
