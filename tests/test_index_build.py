"""`python -m facap_eval.build_index`: an index folder from a tiny model and the synthetic gallery, equal to the
evaluation's gallery embeddings; IVF-PQ; refusal by another model; bad input before encoding; 2 processes
build the same index as one, and stop together, before encoding, when they see different galleries."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
from pathlib import Path

import datasets
import pytest
import torch

from facap_eval import Runtime, gallery_embeddings, load_model_and_processor
from facap_eval.build_index import main
from facap_retrieval.cache import model_fingerprint
from facap_retrieval.index import MANIFEST_FILE, CIRIndex, IndexMismatchError, check_index

REPO = Path(__file__).resolve().parents[1]


def _argv(model, dataset, out, *extra):
    return ["--model", str(model), "--dataset", str(dataset), "--config", "dress-gallery", "--split", "validation",
            "--out", str(out), "--batch-size", "8", "--no-progress", *extra]  # fmt: skip


def _gallery(dataset):
    return datasets.load_dataset(str(dataset), "dress-gallery", split="validation")


def test_exact_index_holds_the_evaluation_embeddings_and_its_source(tiny_model_dir, synthetic_dir, tmp_path, capsys):
    assert main(_argv(tiny_model_dir, synthetic_dir, tmp_path / "index", "--block-size", "10")) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    model, processor = load_model_and_processor(tiny_model_dir, "cpu")
    fingerprint = model_fingerprint(model, processor)
    index = CIRIndex.load(tmp_path / "index", expect_model=fingerprint, expect_dim=model.config.embedding_dim)
    with torch.inference_mode():
        expected = gallery_embeddings(model, processor, _gallery(synthetic_dir), run=Runtime(batch_size=8, progress=False))
    assert index.ids == list(expected.ids) and summary["images"] == len(expected.ids) > 10  # three blocks of 10
    torch.testing.assert_close(index.embeddings, expected.embeddings.float())
    assert index.source.config == "dress-gallery" and index.source.split == "validation"
    assert index.source.gallery_fingerprint == expected.fingerprint
    assert summary["backend"] == "exact" and summary["processes"] == 1 and summary["images_per_s"] > 0


def test_ivfpq_index_records_its_parameters_and_refuses_another_model(tiny_model_dir, synthetic_dir, tmp_path, capsys):
    pytest.importorskip("faiss")
    out = tmp_path / "pq"
    assert main(_argv(tiny_model_dir, synthetic_dir, out, "--backend", "faiss-ivfpq", "--nlist", "2", "--nprobe", "2",
                      "--m", "4", "--nbits", "3")) == 0  # fmt: skip
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    assert manifest["parameters"] == {"nlist": 2, "nprobe": 2, "m": 4, "nbits": 3, "rerank": 0} and not manifest["has_embeddings"]
    model, processor = load_model_and_processor(tiny_model_dir, "cpu")
    index = CIRIndex.load(out, expect_model=model_fingerprint(model, processor))
    gallery = _gallery(synthetic_dir)
    assert index.search(torch.nn.functional.normalize(torch.randn(2, index.dim), dim=1), 5).ids[0][0] in gallery["image_id"]
    with torch.no_grad():
        next(model.parameters()).add_(1.0)  # the same architecture, other weights
    with pytest.raises(IndexMismatchError, match=f"{manifest['source']['model_fingerprint'][:12]}.*"
                                                 f"{model_fingerprint(model, processor)[:12]}"):  # fmt: skip
        check_index(out, model_fingerprint=model_fingerprint(model, processor), embedding_dim=index.dim)


def test_reranking_ivfpq_index_keeps_its_embeddings_and_ranks_exactly(tiny_model_dir, synthetic_dir, tmp_path, capsys):
    pytest.importorskip("faiss")
    out = tmp_path / "pq"
    assert main(_argv(tiny_model_dir, synthetic_dir, out, "--backend", "faiss-ivfpq", "--nlist", "2", "--nprobe", "2",
                      "--m", "4", "--nbits", "3", "--rerank", "100")) == 0  # fmt: skip
    assert [path.name for path in tmp_path.iterdir()] == ["pq"]  # the spilled rows left nothing behind
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    assert manifest["parameters"]["rerank"] == 100 and manifest["has_embeddings"]
    index = CIRIndex.load(out)
    queries = torch.nn.functional.normalize(torch.randn(4, index.dim, generator=torch.Generator().manual_seed(0)), dim=1)
    # a shortlist of 100 k covers this small gallery: re-ranked IVF-PQ returns the exact ranking
    exact = CIRIndex.build(index.embeddings.clone(), index.ids)
    assert index.search(queries, 3).ids == exact.search(queries, 3).ids


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--config", "hat-gallery"], "has no config 'hat-gallery'"),
        (["--config", "dress"], "config 'dress' of .* is not a gallery: it lacks column\\(s\\) image_id, image"),
        (["--backend", "faiss-ivfpq", "--m", "5"], "m=5 must divide the embedding width"),
        (["--backend", "faiss-ivfpq", "--nbits", "8"], "nbits=8 trains 256 centroids .* gallery has \\d+ vectors"),
        (["--block-size", "0"], "--block-size must be >= 1"),
        (["--backend", "faiss-hnsw", "--rerank", "4"], "rerank=4 applies to faiss-ivfpq only"),
        (["--backend", "faiss-ivfpq", "--rerank", "4", "--keep-embeddings", "--nbits", "3", "--rerank", "-2"], "rerank=-2 must be 0"),
    ],
)
def test_bad_input_is_one_line_before_any_encoding(tiny_model_dir, synthetic_dir, tmp_path, capsys, monkeypatch, extra, message):
    monkeypatch.setattr("facap_eval.build_index.gallery_embeddings", lambda *a, **k: pytest.fail("encoded"))
    assert main([*_argv(tiny_model_dir, synthetic_dir, tmp_path / "index"), *extra]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and re.search(message, errors[0]) and "Traceback" not in err, err
    assert not (tmp_path / "index").exists()


def test_a_folder_of_other_files_is_never_replaced(tiny_model_dir, synthetic_dir, tmp_path, capsys):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    assert main(_argv(tiny_model_dir, synthetic_dir, tmp_path / "mine")) == 2
    assert "holds files that are not an index" in capsys.readouterr().err
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


LAUNCHED = """import json, os, sys
from facap_eval import build_index

rank = int(os.environ["RANK"])
work, argv = sys.argv[1], sys.argv[2:]
codes = {"build": build_index.main(argv)}
encoded = []
original = build_index.gallery_embeddings
build_index.gallery_embeddings = lambda *a, **k: encoded.append(1) or original(*a, **k)
split = ["validation", "test"][rank]  # the processes see different galleries
codes["mismatch"] = build_index.main([*argv, "--out", work + "/mismatch", "--split", split])  # the last --out wins
codes["encoded_on_mismatch"] = len(encoded)
with open(f"{work}/codes-{rank}.json", "w") as stream:
    json.dump(codes, stream)
"""


def test_two_processes_build_the_index_one_process_builds(tiny_model_dir, synthetic_dir, tmp_path):
    script = tmp_path / "launched.py"
    script.write_text(LAUNCHED)
    argv = _argv(tiny_model_dir, synthetic_dir, tmp_path / "two", "--block-size", "9")
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
        str(script), str(tmp_path), *argv,
    ]  # fmt: skip  (blocks of 9, 9, 9 and 1 gallery rows: the last leaves one process without a row)
    launched = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert launched.returncode == 0, launched.stderr[-3000:]
    summary = json.loads(launched.stdout.strip().splitlines()[0])
    assert summary["processes"] == 2  # a launch that silently ran one process would compare one with one
    codes = [json.loads((tmp_path / f"codes-{rank}.json").read_text()) for rank in (0, 1)]
    assert codes == [{"build": 0, "mismatch": 2, "encoded_on_mismatch": 0}] * 2
    assert launched.stderr.count("error: processes see different galleries") == 2 and not (tmp_path / "mismatch").exists()
    assert main(_argv(tiny_model_dir, synthetic_dir, tmp_path / "one")) == 0
    two, one = CIRIndex.load(tmp_path / "two"), CIRIndex.load(tmp_path / "one")
    assert two.ids == one.ids and two.source == one.source
    torch.testing.assert_close(two.embeddings, one.embeddings)
