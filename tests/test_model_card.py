"""Model cards with `model-index` results and the push of a saved folder, offline (HfApi calls recorded)."""

from __future__ import annotations

import copy
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from huggingface_hub import ModelCard

from facap_io.hub import PushError
from modeling_fashionblip2 import FashionBlip2Config, FashionBlip2Model
from modeling_fashionblip2.hub import (
    CardError,
    CardEvaluation,
    model_card,
    push_folder,
    push_to_hub,
    save_for_hub,
    update_card,
    write_card,
)

RESULTS = {
    "protocol": {"caption_join": "fashioniq", "k_values": [10, 50], "headline_k": [10, 50]},
    "configs": {
        "dress": {"recall@10": 9.5, "recall@50": 40.25, "gallery_size": 28, "num_queries": 4},
        "shirt": {"recall@10": 12.0, "recall@50": 44.0, "gallery_size": 28, "num_queries": 4},
    },
    "average": {"recall@10": 10.75, "recall@50": 42.125, "mean": 26.4375},
}
FASHIONIQ = CardEvaluation("Fashion IQ", "fashioniq", "validation", RESULTS)
TRAINING = {"datasets": ["fashioniq"], "configs": ["dress", "shirt"], "num_triplets": 1234, "max_steps": 300,
            "batch_size": 32, "learning_rate": 1e-4}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return FashionBlip2Model(FashionBlip2Config.from_preset("tiny"))


def _metrics(card) -> dict:
    return {(r.dataset_type, r.dataset_split, r.dataset_config, r.metric_type): r.metric_value
            for r in card.data.eval_results}


def test_card_results_round_trip_through_model_card_load(model, tmp_path):
    path = write_card(tmp_path, model, repo_id="me/fashionblip2-tiny", training=TRAINING, evaluations=[FASHIONIQ])
    card = ModelCard.load(path)
    assert _metrics(card) == {
        ("fashioniq", "validation", "dress", "recall@10"): 9.5,
        ("fashioniq", "validation", "dress", "recall@50"): 40.25,
        ("fashioniq", "validation", "shirt", "recall@10"): 12.0,
        ("fashioniq", "validation", "shirt", "recall@50"): 44.0,
        ("fashioniq", "validation", None, "recall@10"): 10.75,
        ("fashioniq", "validation", None, "recall@50"): 42.125,
        ("fashioniq", "validation", None, "mean_recall"): 26.4375,
    }
    first = card.data.eval_results[0]
    assert (first.task_type, first.dataset_name) == ("composed-image-retrieval", "Fashion IQ")
    assert card.data.model_name == "me/fashionblip2-tiny" and card.data.library_name == "transformers"
    assert card.data.pipeline_tag is None  # no Hub task fits; the custom pipeline is documented instead
    text = card.text
    assert "| dress | 9.50 | 40.25 |" in text and "| average | 10.75 | 42.12 |" in text
    assert "Mean of R@10 and R@50: **26.44**" in text
    assert "| num_triplets | 1234 |" in text and "| learning_rate | 0.0001 |" in text
    assert "| transformers |" in text and "(tiny preset)" in text
    assert 'pipeline("composed-image-retrieval", model="me/fashionblip2-tiny", trust_remote_code=True)' in text


def test_card_metadata_is_valid_model_index(model):
    from huggingface_hub.repocard_data import model_index_to_eval_results

    card = model_card(model, evaluations=[FASHIONIQ])
    reparsed = ModelCard(str(card))  # parses the YAML strictly: a malformed model-index raises here
    name, results = model_index_to_eval_results(reparsed.data.to_dict()["model-index"])
    assert name == "FashionBLIP-2" and len(results) == 7
    assert "Not evaluated yet." in str(model_card(model)) and model_card(model).data.eval_results is None


def test_update_card_replaces_the_same_dataset_and_split_and_keeps_the_rest(model, tmp_path):
    write_card(tmp_path, model, training=TRAINING, evaluations=[FASHIONIQ])
    path = tmp_path / "README.md"
    path.write_text(path.read_text() + "\n## Notes\n\nHand-written notes stay.\n")
    better = copy.deepcopy(RESULTS)
    better["configs"]["dress"]["recall@10"] = 20.0
    enhanced = CardEvaluation("enhFashionIQ", "org/enhfashioniq", "test", RESULTS)
    update_card(tmp_path, CardEvaluation("Fashion IQ", "fashioniq", "validation", better))
    update_card(tmp_path, enhanced)
    card = ModelCard.load(path)
    metrics = _metrics(card)
    assert metrics[("fashioniq", "validation", "dress", "recall@10")] == 20.0
    assert metrics[("org/enhfashioniq", "test", "dress", "recall@10")] == 9.5
    assert len(metrics) == 14  # 7 per evaluation, none duplicated
    assert "Hand-written notes stay." in card.text and "| num_triplets | 1234 |" in card.text
    assert "### enhFashionIQ (`org/enhfashioniq`, test split)" in card.text
    assert card.text.count("## Evaluation") == 1 and "| dress | 20.00 | 40.25 |" in card.text


def test_update_card_needs_a_card_and_results(model, tmp_path):
    with pytest.raises(CardError, match="README.md does not exist"):
        update_card(tmp_path, FASHIONIQ)
    with pytest.raises(CardError, match="results for fashioniq \\(validation\\) have no 'configs'"):
        model_card(model, evaluations=[CardEvaluation("Fashion IQ", "fashioniq", "validation", {"mean": 1})])


class RecordingApi:
    """Stands in for huggingface_hub.HfApi: records the calls and the files of the commit."""

    def __init__(self):
        self.calls = []

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))
        return SimpleNamespace(repo_id=repo_id)

    def create_commit(self, repo_id, operations, *, commit_message, **kwargs):
        files = sorted(op.path_in_repo for op in operations)
        self.calls.append(("create_commit", repo_id, files, commit_message, kwargs))
        return SimpleNamespace(commit_url=f"https://huggingface.co/{repo_id}/commit/abc")


SAVED_FILES = ("README.md", "config.json", "model.safetensors", "configuration_fashionblip2.py", "convert.py",
               "modeling_fashionblip2.py", "processing_fashionblip2.py", "processor_config.json", "tokenizer.json")


def test_push_folder_uploads_the_saved_folder_in_one_commit(tiny_model_dir, tiny_processor, tmp_path):
    model = FashionBlip2Model.from_pretrained(tiny_model_dir)
    folder = save_for_hub(model, tiny_processor, tmp_path / "final", evaluations=[FASHIONIQ])
    api = RecordingApi()
    url = push_folder(folder, "me/fashionblip2-tiny", private=True, commit_message="Train run 7", api=api)
    assert url == "https://huggingface.co/me/fashionblip2-tiny/commit/abc"
    assert api.calls[0] == ("create_repo", "me/fashionblip2-tiny",
                            {"repo_type": "model", "private": True, "exist_ok": True})
    _, repo_id, files, message, kwargs = api.calls[1]
    assert message == "Train run 7" and kwargs == {"repo_type": "model"}
    for name in SAVED_FILES:
        assert name in files, name
    assert files == sorted(p.name for p in folder.iterdir())


def test_push_to_hub_saves_then_uploads(tiny_model_dir, tiny_processor):
    api = RecordingApi()
    model = FashionBlip2Model.from_pretrained(tiny_model_dir)
    push_to_hub(model, tiny_processor, "me/fashionblip2-tiny", api=api, training=TRAINING)
    _, _, files, message, _ = api.calls[1]
    assert set(SAVED_FILES) <= set(files) and message == "Upload FashionBLIP-2 model, processor and card"


def test_push_without_token_or_with_a_bad_repo_id_uploads_nothing(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # no cached login either
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "hf" / "token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "hf" / "stored_tokens"))
    before = {p.name: p.stat().st_mtime_ns for p in Path(tiny_model_dir).iterdir()}
    with pytest.raises(PushError, match="no Hugging Face token") as error:
        push_folder(tiny_model_dir, "me/fashionblip2-tiny")
    assert "\n" not in str(error.value)
    api = RecordingApi()
    with pytest.raises(PushError, match="invalid Hub repo id 'not a repo'"):
        push_folder(tiny_model_dir, "not a repo", api=api)
    with pytest.raises(PushError, match="not a saved model \\(no config.json, model.safetensors\\)"):
        push_folder(tmp_path, "me/fashionblip2-tiny", api=api)
    assert api.calls == []
    assert before == {p.name: p.stat().st_mtime_ns for p in Path(tiny_model_dir).iterdir()}
