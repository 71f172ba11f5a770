"""The data commands' bad-input table, walked case by case through the command line: exit code 2, one line
on stderr that names the culprit (after the progress bar, if any), no traceback, and nothing changed anywhere
on disk (outputs included)."""

from __future__ import annotations

import errno
import io
import json
from pathlib import Path

import pytest
from datasets import Dataset
from PIL import Image

from cirr_release import write_cirr_release
from facap_dataset.cli import main
from facap_dataset.synthetic import build_synthetic


def _jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(buffer, format="JPEG")
    return buffer.getvalue()


def _fashioniq(root: Path, triplets=None) -> Path:
    raw = root / "raw"
    for folder in ("captions", "image_splits", "images"):
        (raw / folder).mkdir(parents=True)
    triplets = triplets or [{"candidate": "A1", "target": "A2", "captions": ["is red", "x"]}]
    (raw / "captions" / "cap.dress.val.json").write_text(json.dumps(triplets))
    (raw / "image_splits" / "split.dress.val.json").write_text(json.dumps(["A1", "A2"]))
    for asin in ("A1", "A2"):
        (raw / "images" / f"{asin}.jpg").write_bytes(_jpeg())
    return raw


def _built(root: Path) -> Path:
    return build_synthetic(root / "built", num_images=150, image_size=16)


def _fiq_argv(raw: Path, out: Path, *extra: str) -> list[str]:
    return ["build", "fashioniq", "--raw-dir", str(raw), "--out", str(out), *extra]


def nul_byte(tmp, monkeypatch):
    raw = _fashioniq(tmp, [{"candidate": "A1\u0000x", "target": "A2", "captions": ["a", "b"]}])
    return _fiq_argv(raw, tmp / "out", "--on-missing", "skip"), "'A1\\x00x.jpg' holds a NUL byte"


def escaping_path(tmp, monkeypatch):
    raw = _fashioniq(tmp, [{"candidate": "../../etc/passwd", "target": "A2", "captions": ["a", "b"]}])
    return _fiq_argv(raw, tmp / "out"), "'../../etc/passwd.jpg' escapes the image root"


def malformed_json(tmp, monkeypatch):
    raw = _fashioniq(tmp)
    (raw / "captions" / "cap.dress.val.json").write_text('[{"candidate": ')
    return _fiq_argv(raw, tmp / "out"), "cap.dress.val.json: malformed JSON"


def foreign_files_in_out(tmp, monkeypatch, overwrite=False):
    raw = _fashioniq(tmp)
    assert main(_fiq_argv(raw, tmp / "out")) == 0
    (tmp / "out" / "NOTES.md").write_text("mine")
    (tmp / "out" / "analysis").mkdir()
    (tmp / "out" / "analysis" / "plot.png").write_bytes(b"png")
    argv = _fiq_argv(raw, tmp / "out", *(["--overwrite"] if overwrite else []))
    return argv, "holds files a build did not write: NOTES.md, analysis/plot.png"


def foreign_files_with_overwrite(tmp, monkeypatch):
    return foreign_files_in_out(tmp, monkeypatch, overwrite=True)


def out_is_a_file(tmp, monkeypatch):
    (tmp / "out").write_text("a file")
    return ["build", "synthetic", "--out", str(tmp / "out"), "--num-images", "150"], "exists and is not a folder"


def full_disk(tmp, monkeypatch):
    def no_space(self, path, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(Dataset, "to_parquet", no_space)
    return (["build", "synthetic", "--out", str(tmp / "out"), "--num-images", "150", "--image-size", "16"],
            "No space left on device")


def cirr_repeated_pairid(tmp, monkeypatch):
    release = write_cirr_release(tmp / "cirr", splits=("val",))
    release.captions["val"][2]["pairid"] = 0
    release.rewrite()
    return ["build", "cirr", "--raw-dir", str(release.root), "--out", str(tmp / "out")], "pairid 0 is repeated"


def cirr_absent_image(tmp, monkeypatch):
    release = write_cirr_release(tmp / "cirr", splits=("val",))
    release.captions["val"][1]["reference"] = "dev-ghost-img0"
    release.captions["val"][1]["img_set"]["members"][0] = "dev-ghost-img0"
    release.rewrite()
    return (["build", "cirr", "--raw-dir", str(release.root), "--out", str(tmp / "out")],
            "pair 1 names image 'dev-ghost-img0' (reference), absent from")


def cirr_reference_outside_its_set(tmp, monkeypatch):
    release = write_cirr_release(tmp / "cirr", splits=("val",))
    release.captions["val"][3]["img_set"]["members"][0] = "dev-unused-0-img0"
    release.rewrite()
    return (["build", "cirr", "--raw-dir", str(release.root), "--out", str(tmp / "out")],
            "pair 3: its img_set 3 does not hold its reference 'dev-3-3-img0'")


def inspect_corrupt_shard(tmp, monkeypatch):
    built = _built(tmp)
    shard = next((built / "shirt").glob("train-*.parquet"))
    shard.write_bytes(b"PAR1 this is not parquet PAR1")
    return ["inspect", str(built), "--num-triplets", "0"], f"{shard} is not a readable Parquet shard"


def inspect_sheet_below_a_file(tmp, monkeypatch):
    built = _built(tmp)
    (tmp / "a-file").write_text("")
    sheet = tmp / "a-file" / "sheet.png"
    return ["inspect", str(built), "--contact-sheet", str(sheet)], f"contact sheet {sheet} is not writable"


def inspect_not_a_dataset(tmp, monkeypatch):
    (tmp / "notes").mkdir()
    (tmp / "notes" / "a.txt").write_text("x")
    return ["inspect", str(tmp / "notes")], "is not a dataset folder"


def push_symlinked_shard(tmp, monkeypatch):
    built = _built(tmp)
    shard = next((built / "dress").glob("train-*.parquet"))
    (tmp / "elsewhere.parquet").write_bytes(shard.read_bytes())
    shard.unlink()
    shard.symlink_to(tmp / "elsewhere.parquet")
    return (["push", str(built), "me/data", "--dry-run"],
            f"refusing to upload {shard.relative_to(built).as_posix()}: it is a symbolic link")


def push_bad_repo_id(tmp, monkeypatch):
    return ["push", str(_built(tmp)), "me/bad--name", "--dry-run"], "invalid Hub repo id 'me/bad--name'"


def push_not_a_dataset(tmp, monkeypatch):
    (tmp / "empty").mkdir()
    return ["push", str(tmp / "empty"), "me/data", "--dry-run"], "is not a built dataset folder"


CASES = [nul_byte, escaping_path, malformed_json, foreign_files_in_out, foreign_files_with_overwrite,
         out_is_a_file, full_disk, cirr_repeated_pairid, cirr_absent_image, cirr_reference_outside_its_set,
         inspect_corrupt_shard, inspect_sheet_below_a_file, inspect_not_a_dataset, push_symlinked_shard,
         push_bad_repo_id, push_not_a_dataset]


def _snapshot(root: Path) -> dict[str, bytes | str]:
    return {p.relative_to(root).as_posix(): (f"-> {p.readlink()}" if p.is_symlink() else p.read_bytes())
            for p in sorted(root.rglob("*")) if p.is_file() or p.is_symlink()}


@pytest.mark.parametrize("case", CASES, ids=[case.__name__ for case in CASES])
def test_bad_input_is_one_line_and_changes_nothing(case, tmp_path, capsys, monkeypatch):
    argv, culprit = case(tmp_path, monkeypatch)
    capsys.readouterr()
    before = _snapshot(tmp_path)
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = [line for line in captured.err.strip().splitlines() if not line.startswith("images:")]  # progress bar
    assert len(lines) == 1 and lines[0].startswith("error: ") and culprit in lines[0], captured.err
    assert "Traceback" not in captured.err + captured.out
    assert _snapshot(tmp_path) == before
