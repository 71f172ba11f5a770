"""LoRA on the Q-Former through peft, and publishing (model card + the folder push_to_hub uploads), offline."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from modeling_fashionblip2 import FashionBlip2Config, FashionBlip2Model
from modeling_fashionblip2.hub import model_card, push_to_hub, save_for_hub
from modeling_fashionblip2.lora import add_qformer_lora

RESULTS = {
    "protocol": {"caption_join": "fashioniq"},
    "configs": {"dress": {"recall@1": 1.0, "recall@5": 4.0, "recall@10": 9.5, "recall@50": 40.25}},
    "average": {"recall@1": 1.0, "recall@5": 4.0, "recall@10": 9.5, "recall@50": 40.25, "mean": 24.875},
}


@pytest.fixture(scope="module")
def inputs():
    generator = torch.Generator().manual_seed(0)
    return torch.randn(3, 3, 32, 32, generator=generator), torch.randint(5, 200, (3, 6), generator=generator)


def test_lora_outputs_survive_save_load_and_merge(tiny_model_dir, inputs, tmp_path):
    from peft import PeftModel

    pixels, input_ids = inputs
    lora = add_qformer_lora(FashionBlip2Model.from_pretrained(tiny_model_dir), vision_attention=True)
    trainable = [name for name, p in lora.named_parameters() if p.requires_grad]
    assert any("qformer" in n and "crossattention" in n and "lora_A" in n for n in trainable)
    assert any("vision_model" in n and "lora_B" in n for n in trainable)
    assert any("matching_head" in n for n in trainable) and any("adapters.0" in n for n in trainable)
    assert not any(n.endswith(("query_tokens", "temperature")) for n in trainable)
    with torch.no_grad():  # LoRA B starts at zero; move it (and the saved modules) so the test can fail
        for name, parameter in lora.named_parameters():
            if parameter.requires_grad:
                parameter.normal_(std=0.1)
    lora.eval()
    with torch.no_grad():
        expected_q = lora.get_query_embeddings(pixels, input_ids)
        expected_c = lora.get_candidate_embeddings(pixels)
        base_q = FashionBlip2Model.from_pretrained(tiny_model_dir).eval().get_query_embeddings(pixels, input_ids)
    assert (expected_q - base_q).abs().max() > 1e-2
    lora.save_pretrained(tmp_path / "lora")
    assert (tmp_path / "lora" / "adapter_model.safetensors").is_file()

    reloaded = PeftModel.from_pretrained(FashionBlip2Model.from_pretrained(tiny_model_dir), tmp_path / "lora").eval()
    merged = reloaded.merge_and_unload().eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded.get_query_embeddings(pixels, input_ids), expected_q, atol=1e-6, rtol=0)
        torch.testing.assert_close(merged.get_query_embeddings(pixels, input_ids), expected_q, atol=1e-5, rtol=0)
        torch.testing.assert_close(merged.get_candidate_embeddings(pixels), expected_c, atol=1e-5, rtol=0)
    assert type(merged) is FashionBlip2Model
    assert not [key for key in merged.state_dict() if "lora" in key or "modules_to_save" in key]


def test_model_card_describes_architecture_data_and_results():
    model = FashionBlip2Model(FashionBlip2Config.from_preset("tiny"))
    card = model_card(model, repo_id="me/fashionblip2-tiny", training_data="The synthetic set, 3 categories.",
                      results=RESULTS)
    text = str(card)
    assert card.data.library_name == "transformers" and "composed-image-retrieval" in card.data.tags
    assert "(tiny preset)" in text and "2 layers, width 32, 32 px, patch 8, trained" in text
    assert "TokenMix 8->4 tokens, ChannelMix 32->32 channels, embedding size 128" in text
    assert "| dress | 1.00 | 4.00 | 9.50 | 40.25 |" in text and "**24.88**" in text
    assert "The synthetic set, 3 categories." in text
    assert 'AutoModel.from_pretrained("me/fashionblip2-tiny", trust_remote_code=True)' in text
    assert "Not evaluated yet." in str(model_card(model))


class RecordingApi:
    """Stands in for huggingface_hub.HfApi: records the calls and what the uploaded folder held."""

    def __init__(self):
        self.calls = []

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))
        return SimpleNamespace(repo_id=repo_id)

    def upload_folder(self, *, folder_path, repo_id, **kwargs):
        from pathlib import Path

        files = sorted(p.name for p in Path(folder_path).iterdir())
        config = json.loads((Path(folder_path) / "config.json").read_text())
        self.calls.append(("upload_folder", repo_id, files, config["auto_map"]))
        return SimpleNamespace(commit_url=f"https://huggingface.co/{repo_id}/commit/abc")


def test_push_to_hub_uploads_model_processor_code_and_card(tiny_model_dir, tiny_processor):
    api = RecordingApi()
    model = FashionBlip2Model.from_pretrained(tiny_model_dir)
    url = push_to_hub(model, tiny_processor, "me/fashionblip2-tiny", private=True, api=api, results=RESULTS)
    assert url == "https://huggingface.co/me/fashionblip2-tiny/commit/abc"
    assert api.calls[0] == ("create_repo", "me/fashionblip2-tiny", {"repo_type": "model", "private": True,
                                                                    "exist_ok": True})
    _, repo_id, files, auto_map = api.calls[1]
    for name in ("README.md", "config.json", "model.safetensors", "configuration_fashionblip2.py",
                 "modeling_fashionblip2.py", "processing_fashionblip2.py", "processor_config.json",
                 "tokenizer.json"):
        assert name in files, name
    assert auto_map["AutoModel"] == "modeling_fashionblip2.FashionBlip2Model"


def test_saved_hub_folder_reloads(tiny_model_dir, tiny_processor, tmp_path, inputs):
    from transformers import AutoModel, AutoProcessor

    model = FashionBlip2Model.from_pretrained(tiny_model_dir).eval()
    folder = save_for_hub(model, tiny_processor, tmp_path / "hub", training_data="synthetic")
    reloaded = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    assert AutoProcessor.from_pretrained(folder, trust_remote_code=True).max_text_length == 32
    with torch.no_grad():
        torch.testing.assert_close(reloaded.get_candidate_embeddings(inputs[0]),
                                   model.get_candidate_embeddings(inputs[0]), atol=0, rtol=0)
    assert (folder / "README.md").read_text().startswith("---\n")
