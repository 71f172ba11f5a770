"""Two processes (`accelerate launch --multi_gpu --num_processes 2`, on CPU with gloo) compute the gradients of
one process on the same global batch: the contrastive negatives are all-gathered with autograd, and the
trainer shards the same shuffled batch across processes."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import train_accelerate as ta
from facap_train.loop import iterate_batches
from facap_train.options import parse_args

REPO = Path(__file__).resolve().parent.parent
LAUNCHED = """import sys
sys.path[:0] = [{tests!r}, {repo!r}]
from test_train_distributed import gradient_probe
gradient_probe(sys.argv[2:], sys.argv[1])
"""


def gradient_probe(argv: list[str], output_file: str) -> None:
    """The trainer's own set-up, then forward/backward of its first batch; the main process saves the
    (DDP-averaged) gradients."""
    # float64: at initialisation the gradients are small differences of large terms, and float32 rounding
    # alone moves some of them by ~1 %, which would force a tolerance loose enough to hide real bugs.
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        run = ta.setup(parse_args(argv))
    finally:
        torch.set_default_dtype(previous)
    # Dropout off: the masks drawn by one of two processes cannot equal those of a single process.
    run.model.eval()
    batch = next(iterate_batches(run.loader, run.plan.batches_per_epoch, 0))
    batch = {key: value.double() if value.is_floating_point() else value for key, value in batch.items()}
    loss = run.model(**batch, return_loss=True).loss
    run.accelerator.backward(loss)
    if run.accelerator.is_main_process:
        named = run.accelerator.unwrap_model(run.model).named_parameters()
        gradients = {name: p.grad.detach().contiguous() for name, p in named if p.grad is not None}
        save_file(gradients, output_file, metadata={"num_processes": str(run.accelerator.num_processes)})
    run.accelerator.wait_for_everyone()


def _num_processes(path: Path) -> str:
    with safe_open(path, "pt") as stored:
        return stored.metadata()["num_processes"]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _argv(dataset: Path, output_dir: Path, batch_size: int) -> list[str]:
    return ["--dataset", str(dataset), "--configs", "dress,shirt,toptee", "--model", "tiny", "--output-dir",
            str(output_dir), "--batch-size", str(batch_size), "--max-steps", "1", "--num-workers", "0", "--seed", "7"]  # fmt: skip


def test_two_process_gradients_equal_one_process_on_the_same_global_batch(synthetic_dir, tmp_path):
    script = tmp_path / "launched.py"
    script.write_text(LAUNCHED.format(tests=str(REPO / "tests"), repo=str(REPO)))
    two = tmp_path / "two.safetensors"
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", str(_free_port()), str(script), str(two), *_argv(synthetic_dir, tmp_path / "two", 4),
    ]  # fmt: skip
    launched = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert launched.returncode == 0, launched.stderr[-3000:]

    one = tmp_path / "one.safetensors"
    gradient_probe(_argv(synthetic_dir, tmp_path / "one", 8), str(one))

    # A launch that silently ran one process (e.g. `accelerate launch --cpu`) would compare one with one.
    assert [_num_processes(path) for path in (two, one)] == ["2", "1"]
    two_grads, one_grads = load_file(two), load_file(one)
    assert two_grads.keys() == one_grads.keys() and len(one_grads) > 10
    for name, gradient in one_grads.items():
        torch.testing.assert_close(two_grads[name], gradient, rtol=1e-9, atol=1e-12, msg=f"gradient of {name}")
    assert any(gradient.abs().sum() > 0 for gradient in one_grads.values())


def test_two_process_training_evaluation_equals_eval_cir_on_the_saved_model(synthetic_dir, tmp_path):
    """Training-time evaluation is sharded (every process encodes its slice); the recall it logs equals a separate
    one-process `eval_cir.py` run on the saved model."""
    import json

    output_dir = tmp_path / "run"
    argv = ["--dataset", str(synthetic_dir), "--configs", "dress,shirt,toptee", "--model", "tiny", "--output-dir",
            str(output_dir), "--batch-size", "4", "--max-steps", "2", "--num-workers", "0", "--eval-batch-size", "8",
            "--eval-k-values", "1,5,10", "--save-steps", "2"]  # fmt: skip
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", str(_free_port()), "train_accelerate.py", *argv,
    ]  # fmt: skip
    launched = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=400)
    assert launched.returncode == 0, launched.stderr[-3000:]
    assert json.loads((output_dir / "args.json").read_text())["plan"]["num_processes"] == 2
    logged = [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]
    (final_eval,) = [record for record in logged if "eval/average" in record]

    results_file = tmp_path / "results.json"
    evaluated = subprocess.run(
        [sys.executable, "eval_cir.py", "--model", str(output_dir / "final"), "--dataset", str(synthetic_dir),
         "--configs", "dress,shirt,toptee", "--k-values", "1,5,10", "--batch-size", "32", "--output", str(results_file),
         "--no-progress"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    results = json.loads(results_file.read_text())
    for config in ("dress", "shirt", "toptee"):
        assert final_eval[f"eval/{config}"] == {k: v for k, v in results["configs"][config].items() if k.startswith("recall")}
    assert final_eval["eval/average"] == results["average"]
