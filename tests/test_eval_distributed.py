"""`accelerate launch eval_cir.py` on 2 CPU processes (`--multi_gpu` with gloo; `--cpu --num_processes 2`
silently runs one process): the results.json equals the one-process run's; a gallery smaller than the number
of processes works; the cache is written once and then read by every process; processes that see different
data fail, every one of them, before encoding."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from datasets import DatasetDict

import eval_cir
from facap_dataset.export import DatasetCardInfo, write_dataset
from facap_eval.distributed import shard
from test_eval import _config

REPO = Path(__file__).resolve().parent.parent
# batch size 1: every image and query is encoded alone in both runs, so the embeddings are bitwise equal
ARGS = ["--configs", "dress,shirt", "--no-progress", "--k-values", "1,5,10", "--batch-size", "1",
        "--breakdown", "text-length"]  # fmt: skip
LAUNCHED = """import json, os, sys
sys.path[:0] = [{repo!r}]
import eval_cir
from facap_eval import encoding

rank = int(os.environ["RANK"])
work = sys.argv[1]
model, small, synthetic = sys.argv[2:5]
base = ["--model", model, "--no-progress", "--batch-size", "1"]
codes = {{}}
codes["small"] = eval_cir.main(base + ["--dataset", small, "--configs", "dress", "--k-values", "1",
                                       "--output", work + "/small-two.json", "--cache-dir", work + "/cache"])
encoded = []
original = encoding.Encoder._encode
encoding.Encoder._encode = lambda *a, **k: encoded.append(1) or original(*a, **k)
codes["cached"] = eval_cir.main(base + ["--dataset", small, "--configs", "dress", "--k-values", "1",
                                        "--output", work + "/cached-two.json", "--cache-dir", work + "/cache"])
codes["gallery_encoded_when_cached"] = len(encoded) - 1  # the queries are always encoded
encoded.clear()
codes["mismatch"] = eval_cir.main(base + ["--dataset", [small, synthetic][rank], "--configs", "dress",
                                          "--k-values", "1"])
codes["encoded_on_mismatch"] = len(encoded)
with open(f"{{work}}/codes-{{rank}}.json", "w") as stream:
    json.dump(codes, stream)
"""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _launch(*argv: str) -> subprocess.CompletedProcess:
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", str(_free_port()), *argv,
    ]  # fmt: skip
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)


class _Processes:
    """What `shard` reads of an accelerator."""

    def __init__(self, num_processes: int, process_index: int):
        self.num_processes, self.process_index = num_processes, process_index


@pytest.mark.parametrize("size", [0, 1, 2, 5, 7, 8])
@pytest.mark.parametrize("processes", [1, 2, 3, 4])
def test_shards_are_contiguous_and_cover_every_row_once(size, processes):
    slices = [shard(size, _Processes(processes, index)) for index in range(processes)]
    assert [row for part in slices for row in part] == list(range(size))
    assert max(len(part) for part in slices) - min(len(part) for part in slices) <= -(-size // processes)
    assert shard(size, None) == range(size)


@pytest.fixture(scope="module")
def small_dir(tmp_path_factory):
    """One triplet and a one-image gallery: smaller than the number of processes."""
    configs = _config("dress", 0)
    gallery = configs["dress-gallery"]["validation"].select([1])
    triplets = configs["dress"]["validation"].select([0])
    card = DatasetCardInfo(pretty_name="small", description="t", source="t", license="mit", build_command="t")
    small = {"dress": DatasetDict(validation=triplets), "dress-gallery": DatasetDict(validation=gallery)}
    return write_dataset(tmp_path_factory.mktemp("small") / "data", small, card=card)


def test_two_processes_equal_one(tiny_model_dir, synthetic_dir, small_dir, tmp_path):
    args = ["--model", str(tiny_model_dir), "--dataset", str(synthetic_dir), *ARGS]
    launched = _launch("eval_cir.py", *args, "--output", str(tmp_path / "two.json"))
    assert launched.returncode == 0, launched.stderr[-3000:]
    assert eval_cir.main([*args, "--device", "cpu", "--output", str(tmp_path / "one.json")]) == 0
    two, one = (json.loads((tmp_path / name).read_text()) for name in ("two.json", "one.json"))
    assert {k: (two["protocol"].get(k), v) for k, v in one["protocol"].items() if two["protocol"].get(k) != v} == {}
    assert two == one
    assert one["configs"]["dress"]["num_queries"] > 0 and "breakdowns" in one
    assert launched.stdout.count("protocol: benchmark=") == 1, launched.stdout  # the table: main process only

    script = tmp_path / "launched.py"
    script.write_text(LAUNCHED.format(repo=str(REPO)))
    launched = _launch(str(script), str(tmp_path), str(tiny_model_dir), str(small_dir), str(synthetic_dir))
    assert launched.returncode == 0, launched.stderr[-3000:]
    codes = [json.loads((tmp_path / f"codes-{rank}.json").read_text()) for rank in (0, 1)]
    assert [c["small"] for c in codes] == [0, 0] and [c["cached"] for c in codes] == [0, 0]
    small = json.loads((tmp_path / "small-two.json").read_text())
    assert small["configs"]["dress"]["gallery_size"] == 1 and small["protocol"]["gallery_cache"] == {"dress": "miss"}
    cached = json.loads((tmp_path / "cached-two.json").read_text())
    assert cached["protocol"]["gallery_cache"] == {"dress": "hit"} and cached["configs"] == small["configs"]
    assert [c["gallery_encoded_when_cached"] for c in codes] == [0, 0]  # every process read the cache
    assert [c["mismatch"] for c in codes] == [2, 2] and [c["encoded_on_mismatch"] for c in codes] == [0, 0]
    assert launched.stderr.count("processes see different data") == 2  # one line from every process
    one_small = tmp_path / "small-one.json"
    small_args = ["--model", str(tiny_model_dir), "--dataset", str(small_dir), "--configs", "dress", "--k-values", "1"]
    assert eval_cir.main([*small_args, "--no-progress", "--device", "cpu", "--output", str(one_small)]) == 0
    assert json.loads(one_small.read_text())["configs"] == small["configs"]
