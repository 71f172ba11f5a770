"""The openai transport on bad servers (stub servers on 127.0.0.1): malformed 200 replies are transport
failures (retried, then one clear error, nothing cached), `--timeout` is a total deadline per request."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from facap_dataset.annotate import BackendError, Request
from facap_dataset.annotate.openai_client import OpenAIBackend
from facap_dataset.annotate.stub import StubServer
from facap_dataset.cli import main

MALFORMED_BODIES = {
    "invalid-json": '{"choices": [{"message": {"content": "Make it red."}}',
    "html-page": "<html>\n<body><h1>502 Bad Gateway</h1></body>\n</html>",
    "no-choices": '{"choices": []}',
    "null-content": '{"choices": [{"index": 0, "message": {"role": "assistant", "content": null}}]}',
    "non-object": '["Make it red."]',
    "string-body": '"Make it red."',
}


def _backend(server: StubServer, **overrides) -> OpenAIBackend:
    options = {"concurrency": 1, "timeout": 5.0, "max_retries": 2, "backoff": 0.01, **overrides}
    return OpenAIBackend(server.url, "stub-model", **options)


def _write_inputs(tmp_path: Path, count: int) -> tuple[Path, Path]:
    pairs = tmp_path / "pairs.json"
    pairs.write_text(json.dumps({"format": "facap-pairs-v1", "category": "dress", "split": "train",
                                 "pairs": [{"candidate": f"img{i}", "target": f"img{i + 1}"} for i in range(count)]}))
    captions = tmp_path / "captions.json"
    captions.write_text(json.dumps({f"img{i}": f"A dress number {i} in a plain weave with short sleeves."
                                    for i in range(count + 1)}))
    return pairs, captions


@pytest.mark.parametrize("body", MALFORMED_BODIES.values(), ids=MALFORMED_BODIES.keys())
def test_a_malformed_reply_is_retried_as_a_transport_failure(body):
    with StubServer(script=[f"raw:{body}"]) as server:
        reply = _backend(server).generate([Request(text="Make it red")], attempt=0)[0]
        assert reply.text.startswith("Make it") and server.requests == 2
    with StubServer(script=[f"raw:{body}"] * 3) as server:
        with pytest.raises(BackendError, match="failed 3 times; last error: malformed reply") as caught:
            _backend(server).generate([Request(text="Make it red")], attempt=0)
        assert server.requests == 3 and "\n" not in str(caught.value)


@pytest.mark.parametrize("body", MALFORMED_BODIES.values(), ids=MALFORMED_BODIES.keys())
def test_a_run_against_a_malformed_server_stops_caches_nothing_and_a_rerun_recovers(tmp_path, body, capsys):
    pairs, captions = _write_inputs(tmp_path, 3)
    out = tmp_path / "out"
    args = ["annotate", "modifications", "--pairs", str(pairs), "--captions", str(captions), "--backend", "openai",
            "--model", "stub", "--max-retries", "1", "--concurrency", "1", "--out", str(out), "--no-progress"]
    with StubServer(script=[f"raw:{body}"] * 50) as broken:
        assert main(args + ["--base-url", broken.url]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("error: ") and "malformed reply" in error[0]
    assert not (out / "cir_triplets").exists()
    cache = out / "cache" / "modification.jsonl"
    assert not cache.exists() or cache.read_text() == ""

    with StubServer() as healthy:
        assert main(args + ["--base-url", healthy.url]) == 0
    triplets = json.loads((out / "cir_triplets" / "dress_train_triplets.json").read_text())
    assert [t["candidate"] for t in triplets] == ["img0", "img1", "img2"]
    assert all(t["captions"][0].startswith("Make it") for t in triplets)


def test_timeout_is_a_total_deadline_against_a_trickling_server():
    # Each byte comes 10 ms after the last, so no single read ever waits long: only a total deadline ends it.
    with StubServer(script=["trickle:30"] * 2) as server:
        start = time.monotonic()
        with pytest.raises(BackendError, match=r"failed 2 times; last error: .*deadline of 0.5 s") as caught:
            _backend(server, timeout=0.5, max_retries=1).generate([Request(text="Make it red")], attempt=0)
        elapsed = time.monotonic() - start
    assert server.requests == 2 and "\n" not in str(caught.value)
    assert elapsed < 2 * 0.5 + 0.5, elapsed


def test_a_trickle_that_ends_within_the_deadline_is_a_normal_reply():
    with StubServer(script=["trickle:0.3"]) as server:
        reply = _backend(server, timeout=5.0, max_retries=0).generate([Request(text="Make it red")], attempt=0)[0]
    assert reply.text.startswith("Make it") and server.requests == 1


def test_the_cli_stops_a_trickling_server_at_the_deadline(tmp_path, capsys):
    pairs, captions = _write_inputs(tmp_path, 2)
    with StubServer(script=["trickle:30"] * 4) as server:
        start = time.monotonic()
        code = main(["annotate", "modifications", "--pairs", str(pairs), "--captions", str(captions), "--backend",
                     "openai", "--base-url", server.url, "--model", "stub", "--timeout", "0.5", "--max-retries", "0",
                     "--concurrency", "1", "--out", str(tmp_path / "out"), "--no-progress"])
        elapsed = time.monotonic() - start
    assert code == 2 and elapsed < 3, elapsed
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: ") and "deadline of 0.5 s (--timeout)" in error and "\n" not in error
