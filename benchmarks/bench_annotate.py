"""Annotation throughput against the stub OpenAI-compatible server (50 ms per reply) at concurrency 1, 8 and
32, over two servers at the one-server run's per-server concurrency (8), and the cost of a fully cached
rerun compared with just reading the cache file.

Run from the repository root: `python benchmarks/bench_annotate.py`. Progress goes to stderr; the last stdout
line is one JSON object whose headlines are `speedup_32_vs_1` (ideal: 32; the baseline is concurrency 1,
measured in the same run) and `speedup_2_servers` (two servers at concurrency 8 each against one server at
concurrency 8; ideal: 2, target >= 1.8). Each stub runs in its own process so the client's CPU is measured
alone.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from facap_dataset.annotate import MODIFICATION_RULES, Pair, StageRun, annotate_modifications, load_template  # noqa: E402
from facap_dataset.annotate.openai_client import OpenAIBackend  # noqa: E402

LATENCY_S = 0.05
CONCURRENCY = (1, 8, 32)
# Enough records for a second or two of steady state at each level.
RECORDS = {1: 40, 8: 320, 32: 640}
# The two-server run: concurrency 8 per server, twice the records of the one-server run at 8.
PER_SERVER, TWO_SERVER_RECORDS = 8, 640


def start_stub() -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "facap_dataset.annotate.stub", "--port", "0", "--latency", str(LATENCY_S)],
        stdout=subprocess.PIPE, text=True,
    )
    line = process.stdout.readline()
    if not line.startswith("serving "):
        process.kill()
        raise SystemExit(f"the stub server did not start: {line!r}")
    return process, line.split()[1]


def run(url: str | list[str], out: Path, records: int, concurrency: int) -> dict:
    """`concurrency` is per server when `url` lists several."""
    pairs = [Pair(f"p{i}", f"p{i + 1}") for i in range(records)]
    captions = {f"p{i}": f"A dress number {i} in plain cotton with short sleeves." for i in range(records + 1)}
    backend = OpenAIBackend(url, "stub", concurrency=concurrency, timeout=30, max_retries=2, backoff=0.1)
    run = StageRun(out=out, category="dress", split="train", rules=MODIFICATION_RULES, progress=False)
    try:
        start = time.perf_counter()
        summary, _ = annotate_modifications(pairs, captions, backend, load_template("modification"), run)
        seconds = time.perf_counter() - start
    finally:
        backend.close()
    if summary.done + summary.cached != records:
        raise SystemExit(f"benchmark run lost records: {summary.counts()}")
    return {"records": records, "seconds": round(seconds, 3), "records_per_second": round(records / seconds, 2),
            "done": summary.done, "cached": summary.cached}


def read_cache(path: Path) -> float:
    start = time.perf_counter()
    with open(path, encoding="utf-8") as file:
        records = [json.loads(line) for line in file]
    assert records
    return time.perf_counter() - start


def main() -> int:
    process, url = start_stub()
    second_process, second_url = start_stub()
    results: dict = {"stub_latency_ms": LATENCY_S * 1000, "by_concurrency": {}}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for concurrency in CONCURRENCY:
                out = Path(tmp) / f"c{concurrency}"
                result = run(url, out, RECORDS[concurrency], concurrency)
                results["by_concurrency"][str(concurrency)] = result
                print(f"concurrency {concurrency}: {result}", file=sys.stderr)
            out = Path(tmp) / "c32"
            cached = run(url, out, RECORDS[32], 32)
            read_seconds = read_cache(out / "cache" / "modification.jsonl")
            print(f"cached rerun: {cached}; reading the cache alone: {read_seconds:.3f} s", file=sys.stderr)
            two = run([url, second_url], Path(tmp) / "two-servers", TWO_SERVER_RECORDS, PER_SERVER)
            print(f"two servers at concurrency {PER_SERVER} each: {two}", file=sys.stderr)
    finally:
        for stub in (process, second_process):
            stub.terminate()
            stub.wait()
    rates = {c: results["by_concurrency"][str(c)]["records_per_second"] for c in CONCURRENCY}
    results.update({
        "ideal_records_per_second_at_1": round(1 / LATENCY_S, 2),
        "speedup_8_vs_1": round(rates[8] / rates[1], 2),
        "speedup_32_vs_1": round(rates[32] / rates[1], 2),
        "cached_rerun_records": cached["records"],
        "cached_rerun_seconds": cached["seconds"],
        "cache_read_seconds": round(read_seconds, 4),
        "cached_rerun_vs_cache_read": round(cached["seconds"] / read_seconds, 1),
        "two_servers": {"per_server_concurrency": PER_SERVER, **two},
        "speedup_2_servers": round(two["records_per_second"] / rates[PER_SERVER], 2),
    })
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
