"""`eval_cir.py --update-card MODEL_DIR`: a new evaluation merged into a saved model's card, readable back as
`model-index` results by huggingface_hub."""

from __future__ import annotations

import json
import shutil

from huggingface_hub import ModelCard

import eval_cir
from modeling_fashionblip2.hub import write_card
from test_eval import dataset_dir, tiny  # noqa: F401  (module fixtures)


def test_update_card_merges_the_evaluation(tiny, dataset_dir, tmp_path):  # noqa: F811
    model, _, folder = tiny
    saved = shutil.copytree(folder, tmp_path / "model")
    write_card(saved, model, training={"steps": 3})
    output = tmp_path / "results.json"
    code = eval_cir.main(
        ["--model", str(saved), "--dataset", str(dataset_dir), "--configs", "dress", "--output", str(output),
         "--device", "cpu", "--no-progress", "--k-values", "1,10", "--update-card", str(saved)]
    )  # fmt: skip
    assert code == 0
    results = json.loads(output.read_text())
    card = ModelCard.load(saved / "README.md")
    found = {(r.dataset_type, r.dataset_split, r.dataset_config, r.metric_type): r.metric_value
             for r in card.data.eval_results}
    dress = {key[3]: value for key, value in found.items() if key[:3] == ("data", "validation", "dress")}
    assert dress == {k: v for k, v in results["configs"]["dress"].items() if k.startswith("recall@")}
    assert "steps" in card.text  # the rest of the card stays


def test_update_card_without_a_card_fails_before_encoding(tiny, dataset_dir, tmp_path, capsys):  # noqa: F811
    _, _, folder = tiny
    saved = shutil.copytree(folder, tmp_path / "model")
    code = eval_cir.main(["--model", str(saved), "--dataset", str(dataset_dir), "--configs", "dress",
                          "--no-progress", "--update-card", str(saved)])
    assert code == 2
    err = capsys.readouterr().err
    assert "--update-card" in err and "README.md" in err and "Traceback" not in err
