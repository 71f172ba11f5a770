"""`eval_cir.py --index CONFIG=DIR`: a saved index's embeddings serve as the gallery's (no encoding), with the
same numbers; an index of another gallery, or one that keeps no embeddings, is refused before encoding."""

from __future__ import annotations

import json

import eval_cir
from facap_eval.build_index import main as build_index

EVAL = ["--configs", "dress", "--split", "validation", "--no-progress", "--device", "cpu", "--k-values", "1,5,10"]


def _build(model, dataset, out, config="dress-gallery", *extra):
    argv = ["--model", str(model), "--dataset", str(dataset), "--config", config, "--split", "validation",
            "--out", str(out), "--batch-size", "8", "--no-progress", *extra]  # fmt: skip
    assert build_index(argv) == 0


def test_evaluating_from_an_index_gives_the_encoded_numbers(tiny_model_dir, synthetic_dir, tmp_path):
    _build(tiny_model_dir, synthetic_dir, tmp_path / "index")
    base = ["--model", str(tiny_model_dir), "--dataset", str(synthetic_dir), *EVAL]
    assert eval_cir.main([*base, "--output", str(tmp_path / "encoded.json")]) == 0
    assert eval_cir.main([*base, "--output", str(tmp_path / "indexed.json"), "--index", str(tmp_path / "index")]) == 0
    encoded, indexed = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("encoded", "indexed"))
    assert indexed["configs"] == encoded["configs"]
    assert indexed["protocol"]["gallery_cache"]["dress"] == "index"


def test_an_index_of_another_gallery_or_without_embeddings_is_refused(tiny_model_dir, synthetic_dir, tmp_path, capsys):
    _build(tiny_model_dir, synthetic_dir, tmp_path / "shirt", "shirt-gallery")
    _build(tiny_model_dir, synthetic_dir, tmp_path / "pq", "dress-gallery", "--backend", "faiss-ivfpq", "--nlist", "2",
           "--nprobe", "2", "--m", "4", "--nbits", "3")
    base = ["--model", str(tiny_model_dir), "--dataset", str(synthetic_dir), *EVAL]
    capsys.readouterr()
    assert eval_cir.main([*base, "--index", f"dress-gallery={tmp_path / 'shirt'}"]) == 2
    assert "gallery" in capsys.readouterr().err
    assert eval_cir.main([*base, "--index", str(tmp_path / "pq")]) == 2
    err = capsys.readouterr().err
    assert "keeps no embeddings" in err and "Traceback" not in err
    assert eval_cir.main([*base, "--index", f"hat-gallery={tmp_path / 'pq'}"]) == 2
    assert "not among" in capsys.readouterr().err
