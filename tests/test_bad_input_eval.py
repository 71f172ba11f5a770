"""Bad input to `eval_cir.py`, walked through `eval_cir.main`: each case ends with its exit code, one line
naming the culprit, no traceback, and nothing changed outside the output folder. Cases that must fail before
any encoding also assert that nothing was encoded. A damaged embedding cache is not fatal: it is named in one
warning line, encoded again, and the numbers equal those of a clean run."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import eval_cir
from facap_eval import encoding
from facap_retrieval.index import EMBEDDINGS_FILE, IDS_FILE

K_VALUES = "1,5,10"  # the synthetic validation galleries hold 28 images


def _snapshot(root: Path, skip: Path | None = None) -> dict[str, tuple[int, int]]:
    """Every file under `root` (except under `skip`) with its size and modification time."""
    files = {}
    for path in sorted(root.rglob("*")):
        if skip is not None and (path == skip or skip in path.parents):
            continue
        if path.is_file():
            stat = path.stat()
            files[str(path.relative_to(root))] = (stat.st_size, stat.st_mtime_ns)
    return files


def _cache_entry(cache: Path) -> Path:
    (entry,) = [p for p in cache.iterdir() if not p.name.startswith(".")]
    return entry


def _truncate(entry: Path) -> None:
    data = (entry / EMBEDDINGS_FILE).read_bytes()
    (entry / EMBEDDINGS_FILE).write_bytes(data[: len(data) // 2])


def _garble(entry: Path) -> None:
    (entry / EMBEDDINGS_FILE).write_bytes(b"not a safetensors file at all" * 10)
    (entry / IDS_FILE).write_text("{garbage")


def _replace_vectors(entry: Path) -> None:
    """Other valid unit vectors under the same header: only the checksum can tell."""
    from safetensors import safe_open

    with safe_open(entry / EMBEDDINGS_FILE, "pt") as handle:
        metadata = handle.metadata()
    embeddings = load_file(entry / EMBEDDINGS_FILE)["embeddings"]
    replaced = torch.nn.functional.normalize(torch.randn_like(embeddings), dim=-1)
    assert not torch.equal(replaced, embeddings)
    save_file({"embeddings": replaced}, entry / EMBEDDINGS_FILE, metadata=metadata)


@pytest.fixture(scope="module")
def setup(tiny_model_dir, synthetic_dir, tmp_path_factory):
    """The model, a copy of the synthetic set, and a clean run's results and cache entry."""
    root = tmp_path_factory.mktemp("bad_input_eval")
    dataset = root / "dataset"
    shutil.copytree(synthetic_dir, dataset)
    clean_cache = root / "clean-cache"
    output = root / "clean.json"
    assert eval_cir.main(_base(tiny_model_dir, dataset) + ["--cache-dir", str(clean_cache), "--output", str(output)]) == 0
    return {"model": tiny_model_dir, "dataset": dataset, "clean": json.loads(output.read_text()), "cache": clean_cache}


def _base(model: Path, dataset: Path) -> list[str]:
    return ["--model", str(model), "--dataset", str(dataset), "--configs", "dress", "--device", "cpu",
            "--no-progress", "--k-values", K_VALUES]  # fmt: skip


def _blocker(work: Path) -> Path:
    """A plain file: a path under it can never be created, whoever runs the test (root included)."""
    blocker = work / "blocker"
    blocker.write_text("a file, not a folder")
    return blocker


def _corrupt_shard(dataset: Path) -> Path:
    damaged = dataset.parent / "damaged-dataset"
    if not damaged.exists():
        shutil.copytree(dataset, damaged)
        (shard,) = sorted((damaged / "dress").glob("validation-*.parquet"))
        shard.write_bytes(shard.read_bytes()[:200] + b"\0" * 300)
    return damaged


# (case, argv builder(work, setup) -> (extra argv, output place or None), exit code, message parts, before encoding)
FATAL = [
    ("output-is-a-folder", lambda w, s: (["--output", str(w)], None), ["--output", "is a folder"]),
    ("output-read-only", lambda w, s: (["--output", str(_blocker(w) / "r.json")], None), ["--output", "not writable"]),
    ("report-read-only", lambda w, s: (["--report", str(_blocker(w) / "rep")], None), ["--report", "not writable"]),
    ("report-foreign-files", lambda w, s: (["--report", str(w)], None), ["report folder", "notes.txt"]),
    ("cache-dir-is-a-file", lambda w, s: (["--cache-dir", str(_blocker(w))], None), ["--cache-dir", "not a folder"]),
    ("cache-dir-read-only", lambda w, s: (["--cache-dir", str(_blocker(w) / "c")], None), ["--cache-dir", "not writable"]),
    ("predictions-is-a-file", lambda w, s: (["--predictions", str(_blocker(w))], None), ["--predictions", "not a folder"]),
    ("k-above-gallery", lambda w, s: (["--k-values", "1,50"], None), ["k=50", "larger than the gallery (28 images)"]),
    ("breakdown-without-column", lambda w, s: (["--breakdown", "num-changes"], None), ["dress", "'num_changes'"]),
    ("text-length-edges-descending", lambda w, s: (["--breakdown", "text-length", "--text-length-edges", "9,3"], None),
     ["text-length edges", "[9, 3]"]),
    ("unknown-breakdown", lambda w, s: (["--breakdown", "colour"], None), ["unknown breakdown 'colour'"]),
    ("corrupt-parquet-shard", lambda w, s: (["--dataset", str(_corrupt_shard(s["dataset"]))], None),
     ["config 'dress'", "cannot be read"]),
]  # fmt: skip


@pytest.mark.parametrize(("case", "build", "message"), FATAL, ids=[case[0] for case in FATAL])
def test_fatal_bad_input(setup, tmp_path, capsys, monkeypatch, case, build, message):
    work = tmp_path / "work"
    work.mkdir()
    (work / "notes.txt").write_text("the user's own notes")
    extra, _ = build(work, setup)
    monkeypatch.setattr(encoding.Encoder, "_encode", lambda *a, **k: pytest.fail("encoded before the check"))
    watched = {root: _snapshot(root) for root in (setup["dataset"], work)}
    code = eval_cir.main(_base(setup["model"], setup["dataset"]) + extra)
    err = capsys.readouterr().err
    assert code == 2
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert "error: " in last and all(part in last for part in message), last
    assert {root: _snapshot(root) for root in watched} == watched
    assert (work / "notes.txt").read_text() == "the user's own notes"


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="permissions do not stop root")
def test_read_only_folder(setup, tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        code = eval_cir.main(_base(setup["model"], setup["dataset"]) + ["--output", str(locked / "results.json")])
    finally:
        locked.chmod(0o755)
    assert code == 2 and "not writable" in capsys.readouterr().err
    assert not any(locked.iterdir())


@pytest.mark.parametrize("damage", [_truncate, _garble, _replace_vectors], ids=["truncated", "garbage", "replaced"])
def test_damaged_cache_is_named_and_encoded_again(setup, tmp_path, capsys, damage):
    cache = tmp_path / "cache"
    shutil.copytree(setup["cache"], cache)
    entry = _cache_entry(cache)
    damage(entry)
    output = tmp_path / "results.json"
    code = eval_cir.main(_base(setup["model"], setup["dataset"]) + ["--cache-dir", str(cache), "--output", str(output)])
    err = capsys.readouterr().err
    assert code == 0 and "Traceback" not in err
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and entry.name in warnings[0]
    results = json.loads(output.read_text())
    assert results["protocol"]["gallery_cache"] == {"dress": "rebuilt"}
    assert results["configs"] == setup["clean"]["configs"]  # R@K unchanged: the damaged entry was not used
    assert eval_cir.main(_base(setup["model"], setup["dataset"]) + ["--cache-dir", str(cache), "--output", str(output)]) == 0
    assert json.loads(output.read_text())["protocol"]["gallery_cache"] == {"dress": "hit"}  # the entry was repaired


def test_truncated_model_weights(setup, tmp_path, capsys):
    model = tmp_path / "model"
    shutil.copytree(setup["model"], model)
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    code = eval_cir.main(_base(model, setup["dataset"]))
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert f"cannot load a model from {model}" in err.strip().splitlines()[-1]


def test_folder_code_never_runs_without_trust_remote_code(setup, tmp_path, capsys):
    marker = tmp_path / "code-ran"
    folder = tmp_path / "foreign"
    folder.mkdir()
    config = {"model_type": "foreign-cir", "auto_map": {"AutoConfig": "modeling_foreign.Config", "AutoModel": "modeling_foreign.Model"}}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "modeling_foreign.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    code = eval_cir.main(_base(folder, setup["dataset"]))
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert str(folder) in last and "--trust-remote-code" in last
    assert not marker.exists()
