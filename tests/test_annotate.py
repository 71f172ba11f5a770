"""The annotation pipeline against a stub OpenAI-compatible server on 127.0.0.1: prompts, validation, cache,
retries, concurrency, bad input, kill-and-resume, and the CLI."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from datasets import load_dataset
from PIL import Image

from facap_dataset.annotate import (
    CAPTION_RULES,
    MODIFICATION_RULES,
    AnnotationCache,
    BackendError,
    CacheError,
    FolderImages,
    Pair,
    PromptError,
    Request,
    StageRun,
    annotate_captions,
    annotate_modifications,
    cache_key,
    check_output,
    load_template,
    read_pairs,
)
from facap_dataset.annotate.backends import BackendOptions, make_backend
from facap_dataset.annotate.openai_client import OpenAIBackend
from facap_dataset.annotate.stub import StubServer
from facap_dataset.annotate.validate import clean_output
from facap_dataset.cli import main
from facap_dataset.errors import DataError, MissingImageError

REPO_ROOT = Path(__file__).resolve().parent.parent
COLOURS = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (220, 220, 40), (20, 20, 20), (240, 240, 240)]


@pytest.fixture
def stub():
    with StubServer() as server:
        yield server


@pytest.fixture
def image_root(tmp_path) -> Path:
    root = tmp_path / "images"
    (root / "dresses").mkdir(parents=True)
    for index, colour in enumerate(COLOURS):
        Image.new("RGB", (24, 32), colour).save(root / "dresses" / f"item{index}.png")
    return root


def _backend(server: StubServer, **overrides) -> OpenAIBackend:
    options = {"concurrency": 4, "timeout": 5.0, "max_retries": 2, "backoff": 0.01, **overrides}
    return OpenAIBackend(server.url, "stub-model", **options)


def _run(tmp_path: Path, rules=MODIFICATION_RULES, **overrides) -> StageRun:
    return StageRun(out=tmp_path / "out", category="dress", split="train", rules=rules, progress=False, **overrides)


def make_request(text: str) -> Request:
    return Request(text=text)


def _pairs(count: int) -> list[Pair]:
    return [Pair(f"img{i}", f"img{i + 1}") for i in range(count)]


def _captions(count: int) -> dict[str, str]:
    return {f"img{i}": f"A dress number {i} in a plain weave with short sleeves." for i in range(count + 1)}


# ---------------------------------------------------------------------------------------------- prompts
def test_builtin_prompts_render_their_fields():
    caption = load_template("caption").render(category="dress")
    assert "dress" in caption and "neckline" in caption and "sleeves" in caption
    text = load_template("modification").render(category="dress", reference_caption="REF", target_caption="TGT")
    assert "REF" in text and "TGT" in text and "ONE sentence" in text


def test_prompt_override_missing_placeholder_is_a_clear_error(tmp_path):
    path = tmp_path / "mine.txt"
    path.write_text("Compare {reference_caption} with the target.")
    with pytest.raises(PromptError, match=r"mine.txt.*missing the required placeholder.*\{target_caption\}"):
        load_template("modification", path)


def test_prompt_override_unknown_placeholder_is_a_clear_error(tmp_path):
    path = tmp_path / "mine.txt"
    path.write_text("Describe the {category} in {language}.")
    with pytest.raises(PromptError, match=r"unknown placeholder.*\{language\}"):
        load_template("caption", path)


def test_prompt_override_is_versioned_by_its_text(tmp_path):
    path = tmp_path / "mine.txt"
    path.write_text("Describe this {category} in detail, {{literally}}.")
    first = load_template("caption", path)
    assert first.render(category="skirt") == "Describe this skirt in detail, {literally}."
    path.write_text("Describe this garment briefly.")  # {category} is offered, not required
    second = load_template("caption", path)
    assert first.version != second.version != load_template("caption").version


# ------------------------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty output"),
        ("Make red.", "too short"),
        ("Make it red. Add long sleeves.", "more than one sentence"),
        ("Make it red like a blouse.", "mentions another category (blouse)"),
        ("Make it a red t-shirt with pockets.", "mentions another category (t-shirt)"),
        (" ".join(["red"] * 61), "too long"),
        ("I'm sorry, but I cannot see the image.", "refusal"),
    ],
)
def test_invalid_modifications_are_named(text, reason):
    assert reason in check_output(text, MODIFICATION_RULES, "dress")


def test_valid_modifications_pass():
    assert check_output("Make it red with a longer hem and a dress-length skirt.", MODIFICATION_RULES, "skirt") is None
    assert check_output("Make the top part lace and the dress longer.", MODIFICATION_RULES, "dress") is None
    assert check_output(clean_output('  "Make it   navy blue."  '), MODIFICATION_RULES, "dress") is None
    assert clean_output('"Make it navy."') == "Make it navy."


def test_captions_may_have_several_sentences():
    assert check_output("A red dress. It has long sleeves and a v-neck.", CAPTION_RULES, "dress") is None


# ------------------------------------------------------------------------------------------------ cache
def test_cache_key_depends_on_inputs_prompt_version_and_model():
    base = cache_key("modification", {"a": 1}, "v1", "m")
    assert base == cache_key("modification", {"a": 1}, "v1", "m")
    assert len({base, cache_key("modification", {"a": 2}, "v1", "m"), cache_key("modification", {"a": 1}, "v2", "m"),
                cache_key("modification", {"a": 1}, "v1", "n"), cache_key("caption", {"a": 1}, "v1", "m")}) == 5


def test_cache_drops_a_line_cut_short_by_a_kill(tmp_path):
    path = tmp_path / "cache.jsonl"
    path.write_text('{"key": "a", "status": "ok", "output": "x"}\n{"key": "b", "sta')
    with AnnotationCache(path) as cache:
        assert set(cache.records) == {"a"}
        cache.put({"key": "c", "status": "ok", "output": "y"})
    assert [json.loads(line)["key"] for line in path.read_text().splitlines()] == ["a", "c"]


def test_cache_refuses_a_corrupt_line_and_a_second_writer(tmp_path):
    corrupt = tmp_path / "corrupt.jsonl"
    corrupt.write_text('{"key": "a"}\nnot json\n{"key": "b"}\n')
    with pytest.raises(CacheError, match="line 2"):
        AnnotationCache(corrupt)
    with AnnotationCache(tmp_path / "busy.jsonl"):
        with pytest.raises(CacheError, match="in use by another"):
            AnnotationCache(tmp_path / "busy.jsonl")


# ------------------------------------------------------------------------------------ stage 1 and stage 2
def test_captions_from_an_image_folder_then_a_cached_rerun(tmp_path, stub, image_root):
    source = FolderImages(image_root)
    backend = _backend(stub)
    summary, path = annotate_captions(source, source.ids(), backend, load_template("caption"),
                                      _run(tmp_path, rules=CAPTION_RULES))
    assert path == tmp_path / "out" / "image_captions" / "dress_train_captions.json"
    captions = json.loads(path.read_text())
    assert list(captions) == [f"dresses/item{i}.png" for i in range(len(COLOURS))]
    assert all("garment" in text for text in captions.values())
    assert (summary.done, summary.cached, summary.rejected) == (len(COLOURS), 0, 0)
    image_part = stub.payloads[0]["messages"][0]["content"][0]
    assert image_part["image_url"]["url"].startswith("data:image/jpeg;base64,")

    again, _ = annotate_captions(source, source.ids(), backend, load_template("caption"),
                                 _run(tmp_path, rules=CAPTION_RULES))
    assert (again.done, again.cached) == (0, len(COLOURS))
    assert stub.requests == len(COLOURS)
    assert json.loads(path.read_text()) == captions


def test_modifications_in_facap_and_fashioniq_formats(tmp_path, stub):
    backend = _backend(stub)
    summary, path = annotate_modifications(_pairs(5), _captions(5), backend, load_template("modification"),
                                           _run(tmp_path))
    assert path.relative_to(tmp_path / "out").as_posix() == "cir_triplets/dress_train_triplets.json"
    triplets = json.loads(path.read_text())
    assert [(t["candidate"], t["target"]) for t in triplets] == [(f"img{i}", f"img{i + 1}") for i in range(5)]
    assert all(len(t["captions"]) == 1 and t["captions"][0].startswith("Make it") for t in triplets)
    assert any("Reference: A dress number 0 " in p["messages"][0]["content"] for p in stub.payloads)

    _, fiq = annotate_modifications(_pairs(5), _captions(5), backend, load_template("modification"),
                                    _run(tmp_path), output_format="fashioniq")
    assert fiq.relative_to(tmp_path / "out").as_posix() == "captions/cap.dress.train.json"
    assert json.loads(fiq.read_text()) == triplets
    assert stub.requests == 5


def test_invalid_replies_are_retried_then_rejected_and_reported(tmp_path):
    # Concurrency 1 and a unit's attempts run back to back, so the script is consumed record by record:
    # record 0 gets three invalid replies (rejected); record 1 two invalid ones, then a valid one (retried).
    script = ["I'm sorry, I cannot help.", "two-sentences", "empty", "Make it like a blouse.", "empty"]
    with StubServer(script=script) as server:
        backend = _backend(server, concurrency=1)
        summary, path = annotate_modifications(_pairs(3), _captions(3), backend, load_template("modification"),
                                               _run(tmp_path))
        assert (summary.done, summary.retried, summary.rejected, server.requests) == (2, 2, 1, 7)
        assert [t["candidate"] for t in json.loads(path.read_text())] == ["img1", "img2"]
        report = json.loads((tmp_path / "out" / "reports" / "modification_dress_train.json").read_text())
        assert report["summary"]["rejected"] == 1
        assert report["problems"] == [{"id": "img0 -> img1", "status": "rejected", "reason": "empty output",
                                       "output": ""}]

        rerun, _ = annotate_modifications(_pairs(3), _captions(3), backend, load_template("modification"),
                                          _run(tmp_path))
        assert (rerun.cached, rerun.rejected, server.requests) == (3, 0, 7)
        assert rerun.problems[0]["reason"] == "empty output"
        retried, path = annotate_modifications(_pairs(3), _captions(3), backend, load_template("modification"),
                                               _run(tmp_path, retry_rejected=True))
        assert (retried.done, retried.cached, server.requests) == (1, 2, 8)
        assert [t["candidate"] for t in json.loads(path.read_text())] == ["img0", "img1", "img2"]


def test_server_errors_are_retried_with_backoff(tmp_path):
    with StubServer(fail_first=2) as server:
        summary, _ = annotate_modifications(_pairs(1), _captions(1), _backend(server, concurrency=1),
                                            load_template("modification"), _run(tmp_path))
    assert summary.done == 1 and server.requests == 3


def test_slow_replies_time_out_and_are_retried(tmp_path):
    with StubServer(script=["slow:2"]) as server:
        start = time.perf_counter()
        replies = _backend(server, timeout=0.3).generate([make_request("Make it red")], attempt=0)
        assert replies[0].text.startswith("Make it") and server.requests == 2
        assert time.perf_counter() - start < 1.5


def test_an_unreachable_endpoint_fails_clearly_after_bounded_retries(tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    backend = OpenAIBackend(f"http://127.0.0.1:{port}/v1", "m", max_retries=2, backoff=0.01, timeout=2)
    start = time.perf_counter()
    with pytest.raises(BackendError, match=rf"127.0.0.1:{port}/v1/chat/completions failed 3 times.*Connect"):
        annotate_modifications(_pairs(2), _captions(2), backend, load_template("modification"), _run(tmp_path))
    assert time.perf_counter() - start < 5


def test_a_client_error_is_not_retried(tmp_path, stub):
    # A base URL without /v1, a common slip: the server answers 404, which no retry can fix.
    backend = OpenAIBackend(stub.url.removesuffix("/v1"), "m", max_retries=3, backoff=0.01)
    with pytest.raises(BackendError, match="HTTP 404"):
        backend.generate([make_request("Make it red")], attempt=0)
    assert stub.requests == 0


def test_requests_run_concurrently(tmp_path):
    with StubServer(latency=0.1) as server:
        summary, _ = annotate_modifications(_pairs(16), _captions(16), _backend(server, concurrency=8),
                                                     load_template("modification"), _run(tmp_path))
        assert server.max_in_flight >= 4
        assert summary.done == 16 and summary.records_per_second > 0


def test_api_key_comes_from_the_environment_only(monkeypatch, stub):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-123")
    backend = make_backend(BackendOptions(backend="openai", model="m", base_url=stub.url, max_retries=0), "text-generation")
    backend.generate([make_request("Make it red")], attempt=0)
    monkeypatch.delenv("OPENAI_API_KEY")
    make_backend(BackendOptions(backend="openai", model="m", base_url=stub.url), "text-generation").generate(
        [make_request("Make it red")], attempt=0)
    assert stub.authorizations == ["Bearer sk-test-123", None]


# -------------------------------------------------------------------------------------------- bad input
def test_an_image_that_fails_to_decode_is_skipped_counted_and_not_cached(tmp_path, stub, image_root):
    (image_root / "dresses" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    source = FolderImages(image_root)
    summary, path = annotate_captions(source, source.ids(), _backend(stub), load_template("caption"),
                                      _run(tmp_path, rules=CAPTION_RULES))
    assert (summary.total, summary.done, summary.skipped) == (len(COLOURS) + 1, len(COLOURS), 1)
    assert "dresses/broken.png" not in json.loads(path.read_text())
    problem = summary.problems[0]
    assert problem["id"] == "dresses/broken.png" and "cannot be decoded" in problem["reason"]
    cache_lines = (tmp_path / "out" / "cache" / "caption.jsonl").read_text().splitlines()
    assert len(cache_lines) == len(COLOURS)


def test_a_pairs_file_referencing_unknown_images_is_refused(tmp_path, stub, image_root):
    pairs_path = tmp_path / "pairs.json"
    pairs_path.write_text(json.dumps([{"candidate": "dresses/item0.png", "target": "dresses/ghost.png",
                                       "captions": []}]))
    ids = [image for pair in read_pairs(pairs_path).pairs for image in (pair.candidate, pair.target)]
    with pytest.raises(MissingImageError, match=r"references 1 unknown image\(s\), e.g. 'dresses/ghost.png'"):
        annotate_captions(FolderImages(image_root), ids, _backend(stub), load_template("caption"),
                          _run(tmp_path, rules=CAPTION_RULES))
    summary, _ = annotate_captions(FolderImages(image_root), ids, _backend(stub), load_template("caption"),
                                   _run(tmp_path, rules=CAPTION_RULES, on_missing="skip"))
    assert (summary.done, summary.skipped) == (1, 1)


def test_pairs_whose_images_lack_captions_are_refused_or_skipped(tmp_path, stub):
    captions = _captions(3)
    del captions["img3"]
    with pytest.raises(DataError, match=r"1 image\(s\) without a stage-1 caption, e.g. 'img3'"):
        annotate_modifications(_pairs(3), captions, _backend(stub), load_template("modification"), _run(tmp_path))
    summary, path = annotate_modifications(_pairs(3), captions, _backend(stub), load_template("modification"),
                                           _run(tmp_path, on_missing="skip"))
    assert (summary.total, summary.done, summary.skipped) == (3, 2, 1)
    assert len(json.loads(path.read_text())) == 2


def test_pairs_files_without_targets_or_with_repeats_are_refused(tmp_path, stub):
    test_split = tmp_path / "cap.dress.test.json"
    test_split.write_text(json.dumps([{"candidate": "B1", "captions": ["is red", "short"]}]))
    with pytest.raises(DataError, match="entry 0 has no target"):
        read_pairs(test_split)
    with pytest.raises(DataError, match="repeats the pair 'img0' -> 'img1'"):
        annotate_modifications(_pairs(1) * 2, _captions(1), _backend(stub), load_template("modification"),
                               _run(tmp_path))


def test_a_model_that_cannot_load_offline_is_a_clear_error():
    options = BackendOptions(backend="transformers", model="no-such-org/no-such-model")
    with pytest.raises(BackendError, match="cannot load model 'no-such-org/no-such-model'"):
        make_backend(options, "text-generation")


# ---------------------------------------------------------------------------------------------------- CLI
def _write_pairs_file(path: Path, count: int) -> Path:
    path.write_text(json.dumps({"format": "facap-pairs-v1", "category": "dress", "split": "train",
                                "pairs": [{"candidate": f"img{i}", "target": f"img{i + 1}", "similarity": 0.8}
                                          for i in range(count)]}))
    return path


def test_cli_modifications_end_to_end_and_bad_template(tmp_path, stub, capsys):
    pairs = _write_pairs_file(tmp_path / "pairs.json", 4)
    captions = tmp_path / "caps" / "image_captions" / "dress_train_captions.json"
    captions.parent.mkdir(parents=True)
    captions.write_text(json.dumps(_captions(4)))
    args = ["annotate", "modifications", "--pairs", str(pairs), "--captions", str(tmp_path / "caps"),
            "--backend", "openai", "--base-url", stub.url, "--model", "stub", "--out", str(tmp_path / "out"),
            "--no-progress"]
    assert main(args) == 0
    assert "4 records - 4 done, 0 cached" in capsys.readouterr().err
    assert len(json.loads((tmp_path / "out" / "cir_triplets" / "dress_train_triplets.json").read_text())) == 4

    template = tmp_path / "bad.txt"
    template.write_text("Change {reference_caption} please.")
    assert main(args + ["--prompt", str(template)]) == 2
    error = capsys.readouterr().err
    assert "bad.txt: prompt template 'modification-bad-" in error
    assert error.rstrip().endswith("is missing the required placeholder(s) {target_caption}")
    no_url = [a for a in args if a not in ("--base-url", stub.url)]
    assert main(no_url) == 2
    assert "error: --backend openai needs --base-url" in capsys.readouterr().err


def test_enhance_fashioniq_writes_a_fashioniq_root(tmp_path, stub, image_root):
    root = tmp_path / "fiq"
    (root / "captions").mkdir(parents=True)
    (root / "image_splits").mkdir()
    images = root / "images"
    images.mkdir()
    for index in range(4):
        Image.open(image_root / "dresses" / f"item{index}.png").save(images / f"B00{index}.jpg")
    entries = [{"candidate": "B000", "target": "B001", "captions": ["is green", " shorter"]},
               {"candidate": "B002", "target": "B003", "captions": ["is darker", "has no sleeves"]}]
    (root / "captions" / "cap.dress.val.json").write_text(json.dumps(entries))
    (root / "image_splits" / "split.dress.val.json").write_text(json.dumps([f"B00{i}" for i in range(4)]))
    out = tmp_path / "enh"
    common = ["--fashioniq-root", str(root), "--category", "dress", "--backend", "openai", "--base-url", stub.url,
              "--model", "stub", "--out", str(out), "--no-progress"]
    assert main(["annotate", "enhance-fashioniq", "--split", "validation", *common]) == 0  # read as `val`
    enhanced = json.loads((out / "captions" / "cap.dress.val.json").read_text())
    assert [(e["candidate"], e["target"]) for e in enhanced] == [("B000", "B001"), ("B002", "B003")]
    assert all(len(e["captions"]) == 1 and e["captions"][0].startswith("Make it") for e in enhanced)
    assert json.loads((out / "image_splits" / "split.dress.val.json").read_text()) == [f"B00{i}" for i in range(4)]
    assert len(json.loads((out / "image_captions" / "dress_val_captions.json").read_text())) == 4
    assert any("described the change as: is green; shorter" in str(p["messages"]) for p in stub.payloads)
    assert main(["annotate", "enhance-fashioniq", "--split", "test", *common]) == 2

    # The output is what `build enhfashioniq` reads.
    dataset = tmp_path / "enh-dataset"
    assert main(["build", "enhfashioniq", "--raw-dir", str(root), "--enhanced-captions", str(out / "captions"),
                 "--out", str(dataset), "--categories", "dress", "--splits", "validation"]) == 0
    rows = load_dataset(str(dataset), "dress", split="validation")
    assert rows["captions"] == [e["captions"] for e in enhanced]


def test_a_catalogue_folder_becomes_a_facap_release_that_build_facap_reads(tmp_path, stub, image_root):
    pairs = tmp_path / "pairs.json"
    pairs.write_text(json.dumps({"format": "facap-pairs-v1", "category": "dress", "split": "train", "pairs": [
        {"candidate": f"dresses/item{i}.png", "target": f"dresses/item{i + 1}.png"} for i in range(len(COLOURS) - 1)]}))
    out = tmp_path / "release"
    common = ["--pairs", str(pairs), "--backend", "openai", "--base-url", stub.url, "--model", "stub", "--out",
              str(out), "--no-progress"]
    assert main(["annotate", "captions", "--images", str(image_root), *common]) == 0
    assert main(["annotate", "modifications", "--captions", str(out), *common]) == 0
    dataset = tmp_path / "facap-dataset"
    assert main(["build", "facap", "--raw-dir", str(out), "--images-dir", str(image_root), "--out", str(dataset)]) == 0
    rows = load_dataset(str(dataset), "dress")
    assert sum(len(split) for split in rows.values()) >= 1
    assert all(text.startswith("Make it") for split in rows.values() for c in split["captions"] for text in c)


# --------------------------------------------------------------------------------------- kill and resume
def test_a_killed_run_resumes_without_repeating_or_losing_records(tmp_path, capsys):
    count = 40
    pairs = _write_pairs_file(tmp_path / "pairs.json", count)
    captions = tmp_path / "captions.json"
    captions.write_text(json.dumps(_captions(count)))
    out = tmp_path / "out"
    cache = out / "cache" / "modification.jsonl"
    with StubServer(latency=0.05) as server:
        command = [sys.executable, "-m", "facap_dataset", "annotate", "modifications", "--pairs", str(pairs),
                   "--captions", str(captions), "--backend", "openai", "--base-url", server.url, "--model", "stub",
                   "--concurrency", "2", "--out", str(out), "--no-progress"]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
        process = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while (not cache.exists() or len(cache.read_text().splitlines()) < 10) and time.monotonic() < deadline:
            assert process.poll() is None, process.stderr.read().decode()
            time.sleep(0.02)
        process.kill()
        process.wait()
        process.stderr.close()
        time.sleep(0.3)  # let the server finish counting requests the killed run had already sent
        done_before = {json.loads(line)["id"] for line in cache.read_text().splitlines()}
        assert 10 <= len(done_before) < count
        requests_before = server.requests

        assert main(command[3:]) == 0  # resume in this process: the run is the same command line
        assert f"{len(done_before)} cached" in capsys.readouterr().err

        sent_after = [p["messages"][0]["content"] for p in server.payloads[requests_before:]]
        assert len(sent_after) == count - len(done_before)
        for pair_id in done_before:
            reference = pair_id.split(" -> ")[0]
            assert not any(f"dress number {reference[3:]} " in text.split("Target:")[0] for text in sent_after)

    ids = [json.loads(line)["id"] for line in cache.read_text().splitlines()]
    assert sorted(ids) == sorted(set(ids)) and len(ids) == count
    triplets = json.loads((out / "cir_triplets" / "dress_train_triplets.json").read_text())
    assert [t["candidate"] for t in triplets] == [f"img{i}" for i in range(count)]
    # A completed run is idempotent: nothing is sent again and the output is unchanged.
    assert main(command[3:]) == 0
    assert f"{count} records - 0 done, {count} cached" in capsys.readouterr().err
    assert json.loads((out / "cir_triplets" / "dress_train_triplets.json").read_text()) == triplets
