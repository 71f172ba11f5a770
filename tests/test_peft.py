"""LoRA on the Q-Former through peft, and adapters that `AutoPeftModel` loads without our package."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

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


AUTO_PEFT_SCRIPT = textwrap.dedent(
    """
    import importlib.abc, json, sys
    class BlockOurPackages(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("modeling_fashionblip2", "facap_io"):
                raise ImportError(name + " must not be importable here")
    sys.meta_path.insert(0, BlockOurPackages())
    import torch
    from peft import AutoPeftModel
    model = AutoPeftModel.from_pretrained(sys.argv[1], trust_remote_code=True).eval()
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randn(3, 3, 32, 32, generator=generator)
    input_ids = torch.randint(5, 200, (3, 6), generator=generator)
    with torch.no_grad():
        q = model.get_query_embeddings(pixels, input_ids)
    print(json.dumps({"base": type(model.get_base_model()).__module__, "q": q.tolist()}))
    """
)


def test_saved_adapter_loads_with_auto_peft_model_without_our_package(tiny_model_dir, inputs, tmp_path):
    from modeling_fashionblip2.lora import AdapterError, save_adapter

    pixels, input_ids = inputs
    lora = add_qformer_lora(FashionBlip2Model.from_pretrained(tiny_model_dir))
    with torch.no_grad():  # move LoRA B and the saved modules off their start so that loading them matters
        for parameter in lora.parameters():
            if parameter.requires_grad:
                parameter.normal_(std=0.1)
    lora.eval()
    with torch.no_grad():
        expected = lora.get_query_embeddings(pixels, input_ids)
    folder = save_adapter(lora, tmp_path / "adapter")
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["auto_mapping"] == {"base_model_class": "AutoModel", "parent_library": "transformers"}
    assert config["base_model_name_or_path"] == str(tiny_model_dir)
    result = subprocess.run(
        [sys.executable, "-c", AUTO_PEFT_SCRIPT, str(folder)], cwd=tmp_path, capture_output=True, text=True,
        timeout=240, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "HF_HOME": str(tmp_path / "hf")},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    remote = json.loads(result.stdout.strip().splitlines()[-1])
    assert remote["base"].startswith("transformers_modules.")
    torch.testing.assert_close(torch.tensor(remote["q"]), expected, atol=1e-5, rtol=0)

    from modeling_fashionblip2 import FashionBlip2Config

    unsaved = add_qformer_lora(FashionBlip2Model(FashionBlip2Config.from_preset("tiny")))
    with pytest.raises(AdapterError, match="pass base_model="):
        save_adapter(unsaved, tmp_path / "orphan")
    assert not (tmp_path / "orphan").exists()
