"""`inspect`: split sizes, caption statistics, attribute oracles and the contact sheet."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from datasets import Dataset, DatasetDict
from PIL import Image

from facap_dataset.cli import main
from facap_dataset.errors import DataError
from facap_dataset.export import DatasetCardInfo, write_dataset
from facap_dataset.inspect import CONTACT_SHEET_CELL, inspect_dataset
from facap_dataset.schema import FASHIONIQ_CATEGORIES, TRIPLET_FEATURES
from facap_dataset.synthetic import triplet_counts
from facap_dataset.synthetic_oracle import oracle_recall

ATTRS = {"colour": "red", "pattern": "solid", "sleeve": "long", "length": "short", "neckline": "v"}


def test_oracle_recall_is_the_exact_expectation_over_ties():
    gallery = {
        "target": {**ATTRS, "colour": "blue"},
        "distractor": {**ATTRS, "colour": "blue", "sleeve": "short"},
        "reference": ATTRS,
        "other": {**ATTRS, "colour": "green", "pattern": "striped"},
    }
    query = [(["is blue", "is in blue"], ATTRS, "target")]
    assert oracle_recall("text", query, gallery, (1, 2)) == {"recall@1": 50.0, "recall@2": 100.0}
    assert oracle_recall("composed", query, gallery, (1,)) == {"recall@1": 100.0}
    # the reference matches all five attributes, the target four, the distractor three
    assert oracle_recall("image", query, gallery, (1, 2)) == {"recall@1": 0.0, "recall@2": 100.0}
    with pytest.raises(KeyError, match="missing"):
        oracle_recall("text", [(["is blue"], ATTRS, "missing")], gallery)


def test_inspect_synthetic(synthetic_dir, tmp_path):
    sheet = tmp_path / "sheet.png"
    stats = inspect_dataset(synthetic_dir, contact_sheet=sheet, num_triplets=4)
    counts = triplet_counts(300)
    for category in FASHIONIQ_CATEGORIES:
        assert stats["configs"][category] == counts[category]
        assert stats["configs"][f"{category}-gallery"]["validation"] == 7 * counts[category]["validation"]
        captions = stats["captions"][f"{category}/train"]
        assert captions["triplets"] == counts[category]["train"] and captions["captions_per_triplet"] == [1, 2]
        assert 2 <= captions["words_min"] <= captions["words_mean"] <= captions["words_max"] <= 30
        oracles = stats["oracles"][f"{category}/validation"]
        assert oracles["text"]["recall@1"] < oracles["composed"]["recall@1"]
        assert oracles["image"]["recall@1"] == 0.0  # the reference itself always ranks first

    with Image.open(sheet) as image:
        assert image.format == "PNG" and image.height == 4 * CONTACT_SHEET_CELL
        pixels = np.asarray(image.convert("RGB"))
    reference_cell = pixels[:CONTACT_SHEET_CELL, :CONTACT_SHEET_CELL]
    target_cell = pixels[:CONTACT_SHEET_CELL, -CONTACT_SHEET_CELL:]
    assert reference_cell.std() > 10 and target_cell.std() > 10  # garments drawn, not blank cells


def test_inspect_cli(synthetic_dir, tmp_path, capsys):
    sheet = tmp_path / "sub" / "sheet.png"
    assert main(["inspect", str(synthetic_dir), "--contact-sheet", str(sheet), "--num-triplets", "2"]) == 0
    out = capsys.readouterr().out
    assert f"contact sheet: {sheet}" in out and sheet.is_file()
    assert "dress-gallery" in out and "text R@1" in out

    assert main(["inspect", str(synthetic_dir), "--num-triplets", "0", "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert "contact_sheet" not in stats and stats["configs"]["toptee"]["test"] == triplet_counts(300)["toptee"]["test"]


def test_inspect_dataset_without_attributes_and_hidden_targets(tmp_path):
    buffer = io.BytesIO()
    Image.new("RGB", (20, 10), "red").save(buffer, format="JPEG")
    image = {"bytes": buffer.getvalue(), "path": None}
    rows = {"reference_id": ["a"], "target_id": [None], "captions": [["", " is blue"]], "category": ["dress"],
            "reference_image": [image], "target_image": [None]}
    folder = write_dataset(
        tmp_path / "ds", {"dress": DatasetDict(test=Dataset.from_dict(rows, features=TRIPLET_FEATURES))},
        card=DatasetCardInfo("Tiny", "d", "s", "mit", "test"),
    )
    stats = inspect_dataset(folder, num_triplets=3)
    assert stats["oracles"] == {}
    assert stats["captions"]["dress/test"]["empty_captions"] == 1
    assert stats["contact_sheet"] == str(tmp_path / "ds-contact-sheet.png")
    with Image.open(stats["contact_sheet"]) as sheet:
        assert sheet.height == CONTACT_SHEET_CELL  # one triplet available


def test_inspect_refuses_a_folder_that_is_not_a_dataset(tmp_path, capsys):
    with pytest.raises(DataError, match="not a dataset folder"):
        inspect_dataset(tmp_path)
    assert main(["inspect", str(tmp_path)]) == 2
    assert "not a dataset folder" in capsys.readouterr().err


def _copy(folder, tmp_path):
    import shutil

    return Path(shutil.copytree(folder, tmp_path / "copy"))


def test_corrupt_parquet_shard_is_one_line_naming_it(synthetic_dir, tmp_path, capsys):
    folder = _copy(synthetic_dir, tmp_path)
    shard = next((folder / "dress").glob("validation-*.parquet"))
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])  # truncated, as by a full disk
    with pytest.raises(DataError, match=f"{shard} is not a readable Parquet shard"):
        inspect_dataset(folder, num_triplets=0)
    assert main(["inspect", str(folder), "--num-triplets", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {shard} is not a readable Parquet shard")


def test_contact_sheet_in_a_read_only_place_fails_before_reading(synthetic_dir, tmp_path, capsys, monkeypatch):
    import errno
    import tempfile

    read_only = tmp_path / "read-only"
    read_only.mkdir()
    read_only.chmod(0o555)
    mkstemp = tempfile.mkstemp

    def refuse_in_read_only(*args, dir=None, **kwargs):  # root ignores permission bits: refuse as the kernel would
        if dir is not None and Path(dir) == read_only:
            raise PermissionError(errno.EACCES, "Permission denied", str(dir))
        return mkstemp(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", refuse_in_read_only)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    for sheet in (read_only / "sheet.png", blocker / "sheet.png"):
        assert main(["inspect", str(synthetic_dir), "--contact-sheet", str(sheet)]) == 2
        captured = capsys.readouterr()
        err = captured.err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"error: contact sheet {sheet}") and "not writable" in err[0]
        assert captured.out == ""  # nothing was computed before the check
    assert list(read_only.iterdir()) == []
