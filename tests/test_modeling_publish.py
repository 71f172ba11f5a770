"""LoRA on the Q-Former through peft."""

from __future__ import annotations

import pytest
import torch

from modeling_fashionblip2 import FashionBlip2Model
from modeling_fashionblip2.lora import add_qformer_lora


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
