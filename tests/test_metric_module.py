"""The `evaluate` module metrics/cir_recall gives the same numbers as eval_cir's recall on the same rankings."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from facap_retrieval.ranking import NO_INDEX, rank_gallery, recall_at_k

METRIC_DIR = Path(__file__).resolve().parent.parent / "metrics" / "cir_recall"


@pytest.fixture(scope="module")
def metric():
    evaluate = pytest.importorskip("evaluate")
    return evaluate.load(str(METRIC_DIR))


def test_metric_equals_eval_cir_recall_with_ties(metric):
    generator = torch.Generator().manual_seed(0)
    queries = torch.randint(0, 3, (40, 3), generator=generator).float()  # ties everywhere
    gallery = torch.randint(0, 3, (60, 3), generator=generator).float()
    targets = torch.randint(0, 60, (40,), generator=generator)
    targets[::9] = NO_INDEX
    exclude = torch.randint(0, 60, (40,), generator=generator)
    ranking = rank_gallery(queries, gallery, 10, targets=targets, exclude=exclude)
    ids = [f"g{i}" for i in range(60)]
    predictions = [[ids[i] for i in row] for row in ranking.indices.tolist()]
    references = ["not-in-gallery" if t == NO_INDEX else ids[t] for t in targets.tolist()]
    k_values = [1, 5, 10]
    expected = recall_at_k(ranking.target_ranks, k_values, max_rank=ranking.k)
    assert 0 < expected["recall@10"] < 100
    assert metric.compute(predictions=predictions, references=references, k_values=k_values) == pytest.approx(expected)


def test_metric_known_answer_and_bad_k(metric):
    result = metric.compute(predictions=[["a", "b"], ["c", "d"]], references=["b", "c"], k_values=[1, 2])
    assert result == {"recall@1": 50.0, "recall@2": 100.0}
    with pytest.raises(ValueError, match="recall@3 needs rankings of at least 3 ids"):
        metric.compute(predictions=[["a", "b"]], references=["b"], k_values=[3])


# ------------------------------------------------------------------------------------------------- Space


def test_readme_front_matter_is_an_evaluate_metric_space():
    from huggingface_hub.repocard import metadata_load
    from packaging.requirements import Requirement

    meta = metadata_load(METRIC_DIR / "README.md")
    assert meta["sdk"] == "gradio" and meta["app_file"] == "app.py" and meta["sdk_version"].startswith("3.")
    assert {"evaluate", "metric"} <= set(meta["tags"]) and meta["title"] and meta["description"]
    assert (METRIC_DIR / meta["app_file"]).is_file()
    requirements = [Requirement(line) for line in (METRIC_DIR / "requirements.txt").read_text().split()]
    assert "evaluate" in {r.name for r in requirements}


def test_space_app_hands_this_folders_module_to_evaluates_widget(monkeypatch):
    """app.py as the Space runs it, with evaluate's widget (which needs Gradio 3) replaced by a recorder."""
    import runpy

    evaluate = pytest.importorskip("evaluate")
    launched = []
    monkeypatch.setattr(evaluate.utils, "launch_gradio_widget", launched.append)
    runpy.run_path(str(METRIC_DIR / "app.py"), run_name="__main__")
    (module,) = launched
    assert module.name == "cir_recall"
    assert module.compute(predictions=[["a", "b"], ["c", "d"]], references=["b", "c"], k_values=[1, 2]) == {
        "recall@1": 50.0,
        "recall@2": 100.0,
    }
