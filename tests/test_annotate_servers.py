"""Annotation over several OpenAI-compatible servers (stub servers on 127.0.0.1): least-in-flight spreading,
a failing server out of rotation while the others carry on, the run stopping only when all have failed,
`Retry-After`, and malformed server lists."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from facap_dataset.annotate import MODIFICATION_RULES, BackendError, Pair, Request, StageRun, annotate_modifications
from facap_dataset.annotate import load_template
from facap_dataset.annotate.openai_client import OpenAIBackend
from facap_dataset.annotate.servers import parse_base_urls, retry_after_seconds
from facap_dataset.annotate.stub import StubServer
from facap_dataset.cli import main

ALWAYS = 10**9  # fail_first: a server that never answers well


def _backend(urls, **overrides) -> OpenAIBackend:
    options = {"concurrency": 4, "timeout": 5.0, "max_retries": 2, "backoff": 0.01, **overrides}
    return OpenAIBackend(urls, "stub-model", **options)


def _annotate(tmp_path: Path, backend: OpenAIBackend, count: int):
    pairs = [Pair(f"img{i}", f"img{i + 1}") for i in range(count)]
    captions = {f"img{i}": f"A dress number {i} in a plain weave with short sleeves." for i in range(count + 1)}
    run = StageRun(out=tmp_path / "out", category="dress", split="train", rules=MODIFICATION_RULES, progress=False)
    return annotate_modifications(pairs, captions, backend, load_template("modification"), run)


def test_requests_spread_over_servers_least_in_flight_first(tmp_path):
    with StubServer(latency=0.05) as first, StubServer(latency=0.05) as second:
        backend = _backend([first.url, second.url], concurrency=4)
        assert backend.concurrency == 8
        summary, path = _annotate(tmp_path, backend, 48)
    assert summary.done == 48 and len(json.loads(path.read_text())) == 48
    assert first.requests + second.requests == 48
    assert min(first.requests, second.requests) >= 16
    # Each server sees up to the per-server concurrency, never more.
    assert 2 <= first.max_in_flight <= 4 and 2 <= second.max_in_flight <= 4


def test_a_failing_server_leaves_the_rotation_while_the_other_carries_on(tmp_path):
    with StubServer(fail_first=ALWAYS) as broken, StubServer(latency=0.01) as healthy:
        # A long back-off: the broken server is not tried again during this short run.
        backend = _backend([broken.url, healthy.url], concurrency=2, backoff=10.0)
        start = time.monotonic()
        summary, path = _annotate(tmp_path, backend, 30)
        assert time.monotonic() - start < 5
        assert summary.done == 30 and len(json.loads(path.read_text())) == 30
        assert 1 <= broken.requests <= 2 and healthy.requests == 30
        # Cache and resume are as with one server: a rerun sends nothing.
        sent = broken.requests
        again, _ = _annotate(tmp_path, _backend([broken.url, healthy.url]), 30)
        assert (again.cached, broken.requests, healthy.requests) == (30, sent, 30)


def test_a_server_is_tried_again_after_its_back_off(tmp_path):
    with StubServer(fail_first=1) as flaky, StubServer(latency=0.05) as healthy:
        summary, _ = _annotate(tmp_path, _backend([flaky.url, healthy.url], concurrency=1, backoff=0.05), 20)
    assert summary.done == 20
    assert flaky.requests >= 3  # the failure, then back in rotation


def test_the_run_stops_only_when_every_server_is_past_the_budget(tmp_path):
    with StubServer(fail_first=ALWAYS) as first, StubServer(fail_first=ALWAYS) as second:
        start = time.monotonic()
        with pytest.raises(BackendError) as caught:
            _annotate(tmp_path, _backend([first.url, second.url], max_retries=2), 5)
        assert time.monotonic() - start < 5
        message = str(caught.value)
        assert message.startswith("all 2 servers failed: ") and "\n" not in message
        assert f"{first.url}/chat/completions failed 3 times; last error: HTTP 500" in message
        assert f"{second.url}/chat/completions failed 3 times" in message
    assert not (tmp_path / "out" / "cir_triplets").exists()


def test_retry_after_is_honoured_and_bounded_by_the_deadline():
    with StubServer(script=["429:1"]) as server:
        reply = _backend(server.url).generate([Request(text="Make it red")], attempt=0)[0]
        assert reply.text.startswith("Make it")
        assert server.arrivals[1] - server.arrivals[0] >= 0.95
    with StubServer(script=["503:3600"]) as server:
        start = time.monotonic()
        _backend(server.url, timeout=0.5).generate([Request(text="Make it red")], attempt=0)
        assert 0.45 <= server.arrivals[1] - server.arrivals[0] and time.monotonic() - start < 2


def test_retry_after_values():
    assert retry_after_seconds("2") == 2.0 and retry_after_seconds("-3") == 0.0
    assert retry_after_seconds(None) is None and retry_after_seconds("soon") is None
    assert retry_after_seconds("nan") is None
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # a date in the past: no wait


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("localhost:8000/v1", "expected http:// or https://"),
        ("ftp://gpu-node/v1", "expected http:// or https://"),
        ("http:///v1", "names no host"),
        ("http://gpu-node:80000/v1", "port"),
        ("http://gpu-node:port/v1", "port"),
        ("http://user:secret@gpu-node/v1", "credentials"),
        ("http://gpu node/v1", "whitespace"),
        ("http://gpu-node/v1?x=1", "query"),
    ],
)
def test_a_malformed_url_in_the_list_is_named_before_any_request(tmp_path, url, problem, capsys):
    pairs = tmp_path / "pairs.json"
    pairs.write_text(json.dumps({"format": "facap-pairs-v1", "category": "dress", "split": "train",
                                 "pairs": [{"candidate": "img0", "target": "img1"}]}))
    captions = tmp_path / "captions.json"
    captions.write_text(json.dumps({"img0": "A red dress with long sleeves.", "img1": "A blue dress, sleeveless."}))
    with StubServer() as server:
        code = main(["annotate", "modifications", "--pairs", str(pairs), "--captions", str(captions),
                     "--backend", "openai", "--base-url", f"{server.url},{url}", "--model", "stub",
                     "--out", str(tmp_path / "out"), "--no-progress"])
        assert server.requests == 0
    assert code == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith(f"error: malformed server URL {url!r}") and problem in error and "\n" not in error
    assert not (tmp_path / "out").exists()


def test_server_lists_parse_as_comma_lists_or_repeated_options():
    assert parse_base_urls("http://a:8000/v1, http://b:8000/v1") == ["http://a:8000/v1", "http://b:8000/v1"]
    assert parse_base_urls(["http://a/v1", "http://b/v1,http://c/v1"]) == ["http://a/v1", "http://b/v1", "http://c/v1"]
    with pytest.raises(BackendError, match="lists 'http://a/v1' more than once"):
        parse_base_urls("http://a/v1,http://a/v1")
    with pytest.raises(BackendError, match="--base-url: expected a comma-separated list of URLs"):
        parse_base_urls(" , ")


def test_the_cli_takes_repeated_and_comma_separated_base_urls(tmp_path, capsys):
    pairs = tmp_path / "pairs.json"
    pairs.write_text(json.dumps({"format": "facap-pairs-v1", "category": "dress", "split": "train",
                                 "pairs": [{"candidate": f"img{i}", "target": f"img{i + 1}"} for i in range(12)]}))
    captions = tmp_path / "captions.json"
    captions.write_text(json.dumps({f"img{i}": f"A dress number {i} with short sleeves." for i in range(13)}))
    with StubServer(latency=0.05) as a, StubServer(latency=0.05) as b, StubServer(latency=0.05) as c:
        common = ["annotate", "modifications", "--pairs", str(pairs), "--captions", str(captions), "--backend",
                  "openai", "--model", "stub", "--concurrency", "1", "--no-progress"]
        assert main([*common, "--base-url", a.url, "--base-url", f"{b.url},{c.url}", "--out", str(tmp_path / "o")]) == 0
        assert a.requests + b.requests + c.requests == 12 and min(a.requests, b.requests, c.requests) >= 2
    assert "12 records - 12 done" in capsys.readouterr().err
