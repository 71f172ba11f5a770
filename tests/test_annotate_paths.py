"""Output paths derived from data (a category or split from the command line or a pairs file) stay inside
--out: a name that is not plain is one clear error before any request, and nothing is written anywhere."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from facap_dataset.annotate import MODIFICATION_RULES, StageRun, read_pairs
from facap_dataset.annotate.stub import StubServer
from facap_dataset.cli import main
from facap_dataset.errors import DataError

# "ABSOLUTE" stands for an absolute path inside the test's folder (never a real system path).
HOSTILE = ["../../../x", "..", "a/b", "ABSOLUTE", ".hidden", "x\x00y"]


def _files(root: Path) -> set[str]:
    return {str(path.relative_to(root)) for path in root.rglob("*")}


@pytest.fixture
def work(tmp_path) -> Path:
    """Inputs in tmp_path; --out is three levels down, so an escape up to three levels stays in tmp_path."""
    captions = {f"img{i}": f"A dress number {i} in a plain weave with short sleeves." for i in range(4)}
    (tmp_path / "captions.json").write_text(json.dumps(captions))
    (tmp_path / "images").mkdir()
    (tmp_path / "a" / "b").mkdir(parents=True)
    return tmp_path


def _pairs_file(work: Path, category: str, split: str = "train") -> Path:
    path = work / "pairs.json"
    path.write_text(json.dumps({"format": "facap-pairs-v1", "category": category, "split": split,
                                "pairs": [{"candidate": f"img{i}", "target": f"img{i + 1}"} for i in range(3)]}))
    return path


def _backend_args(server: StubServer, work: Path) -> list[str]:
    return ["--backend", "openai", "--base-url", server.url, "--model", "stub", "--out", str(work / "a" / "b" / "out"),
            "--no-progress"]


@pytest.mark.parametrize("category", HOSTILE)
def test_a_hostile_category_option_is_refused_before_any_request(work, category, capsys):
    category = str(work / "abs") if category == "ABSOLUTE" else category
    before = _files(work)
    with StubServer() as server:
        code = main(["annotate", "captions", "--images", str(work / "images"), "--category", category,
                     *_backend_args(server, work)])
        assert server.requests == 0
    assert code == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: category") and "not a plain name" in error and "\n" not in error
    assert _files(work) == before


@pytest.mark.parametrize("field", ["category", "split"])
def test_a_pairs_file_with_a_hostile_category_or_split_is_refused(work, field, capsys):
    values = {"category": "dress", "split": "train", field: "../../../x"}
    pairs = _pairs_file(work, **values)
    before = _files(work)
    with StubServer() as server:
        code = main(["annotate", "modifications", "--pairs", str(pairs), "--captions", str(work / "captions.json"),
                     *_backend_args(server, work)])
        assert server.requests == 0
    assert code == 2
    error = capsys.readouterr().err.strip()
    assert f"{field} '../../../x' is not a plain name" in error and str(pairs) in error
    assert _files(work) == before
    with pytest.raises(DataError, match=f"{field} '../../../x' is not a plain name"):
        read_pairs(pairs)


def test_a_hostile_split_option_is_refused(work, capsys):
    with StubServer() as server:
        code = main(["annotate", "modifications", "--pairs", str(_pairs_file(work, "dress")), "--split", "../up",
                     "--captions", str(work / "captions.json"), *_backend_args(server, work)])
    assert code == 2 and "split '../up' is not a plain name" in capsys.readouterr().err


def test_stage_runs_refuse_hostile_names(tmp_path):
    for field in ("category", "split"):
        values = {"category": "dress", "split": "train", field: "../x"}
        with pytest.raises(DataError, match=f"{field} '../x' is not a plain name"):
            StageRun(out=tmp_path, rules=MODIFICATION_RULES, **values)


def test_an_output_folder_symlinked_outside_out_is_refused(work, capsys):
    outside = work / "elsewhere"
    outside.mkdir()
    out = work / "a" / "b" / "out"
    out.mkdir()
    os.symlink(outside, out / "cir_triplets")
    with StubServer() as server:
        code = main(["annotate", "modifications", "--pairs", str(_pairs_file(work, "dress")),
                     "--captions", str(work / "captions.json"), *_backend_args(server, work)])
    assert code == 2
    assert "leaves" in capsys.readouterr().err
    assert list(outside.iterdir()) == []
