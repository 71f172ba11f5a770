"""`annotate pairs --model DIR` never runs a folder's own code unless `--trust-remote-code` is passed; a
FashionBLIP-2 folder loads through the installed `modeling_fashionblip2` classes without it."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from facap_dataset.annotate import read_pairs
from facap_dataset.cli import main
from tiny_clip import save_tiny_clip

MARKER_CODE = "import pathlib as _p; _p.Path({marker!r}).write_text('ran')\n"


@pytest.fixture(scope="module")
def foreign_model_dir(tmp_path_factory) -> Path:
    """A tiny CLIP saved under a made-up model type whose config maps the Auto classes to the folder's own
    files; importing those files writes a marker next to the folder."""
    folder = save_tiny_clip(tmp_path_factory.mktemp("foreign") / "model")
    marker = folder.parent / "MARKER"
    (folder / "configuration_foreign.py").write_text(
        MARKER_CODE.format(marker=str(marker))
        + "from transformers import CLIPConfig\n\n\nclass ForeignConfig(CLIPConfig):\n    model_type = 'foreign-clip'\n")
    (folder / "modeling_foreign.py").write_text(
        MARKER_CODE.format(marker=str(marker))
        + "from transformers import CLIPModel\n\nfrom .configuration_foreign import ForeignConfig\n\n\n"
        "class ForeignModel(CLIPModel):\n    config_class = ForeignConfig\n")
    settings = json.loads((folder / "config.json").read_text())
    settings.update(model_type="foreign-clip", auto_map={"AutoConfig": "configuration_foreign.ForeignConfig",
                                                         "AutoModel": "modeling_foreign.ForeignModel"})
    (folder / "config.json").write_text(json.dumps(settings))
    return folder


@pytest.fixture
def fashionblip2_copy(tmp_path, tiny_model_dir) -> Path:
    """The tiny FashionBLIP-2 folder, its remote-code files rigged to write a marker when executed."""
    folder = tmp_path / "fashionblip2"
    shutil.copytree(tiny_model_dir, folder)
    code_files = sorted(folder.glob("*.py"))
    assert any(path.name == "modeling_fashionblip2.py" for path in code_files)
    for path in code_files:
        path.write_text(_with_marker(path.read_text(), tmp_path / "MARKER"))
    return folder


def _with_marker(code: str, marker: Path) -> str:
    """`code` with the marker line first, after a `from __future__` import (which must stay first)."""
    head, future, rest = code.partition("from __future__ import annotations\n")
    if not future:
        return MARKER_CODE.format(marker=str(marker)) + code
    return head + future + MARKER_CODE.format(marker=str(marker)) + rest


def _mine(synthetic_dir: Path, model: Path, out: Path, *extra: str) -> int:
    return main(["annotate", "pairs", "--dataset", str(synthetic_dir), "--config", "dress", "--split", "validation",
                 "--model", str(model), "--min-similarity", "-1", "--max-similarity", "0.9999", "--out", str(out),
                 "--no-progress", *extra])


def test_a_folder_with_its_own_code_needs_trust_remote_code(tmp_path, synthetic_dir, foreign_model_dir, capsys):
    marker = foreign_model_dir.parent / "MARKER"
    assert _mine(synthetic_dir, foreign_model_dir, tmp_path / "pairs.json") == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and str(foreign_model_dir) in error and "pass --trust-remote-code" in error
    assert not marker.exists() and not (tmp_path / "pairs.json").exists()

    assert _mine(synthetic_dir, foreign_model_dir, tmp_path / "pairs.json", "--trust-remote-code") == 0
    assert marker.exists() and len(read_pairs(tmp_path / "pairs.json").pairs) >= 1


def test_a_fashionblip2_folder_loads_through_the_installed_classes(tmp_path, synthetic_dir, fashionblip2_copy):
    assert _mine(synthetic_dir, fashionblip2_copy, tmp_path / "pairs.json") == 0
    assert not (tmp_path / "MARKER").exists()
    assert len(read_pairs(tmp_path / "pairs.json").pairs) >= 1


def test_a_fashionblip2_folder_without_the_package_needs_the_flag(tmp_path, synthetic_dir, fashionblip2_copy,
                                                                   monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "modeling_fashionblip2", None)  # importing it now raises ImportError
    assert _mine(synthetic_dir, fashionblip2_copy, tmp_path / "pairs.json") == 2
    error = capsys.readouterr().err
    assert "modeling_fashionblip2" in error and "--trust-remote-code" in error
    assert not (tmp_path / "MARKER").exists()
