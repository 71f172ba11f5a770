"""Exact conversion from a transformers Blip2ForImageTextRetrieval checkpoint (tiny and random, built here): the
proof that a real Salesforce/blip2-itm-vit-g converts correctly."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from modeling_fashionblip2 import ConversionError, FashionBlip2Model, FashionBlip2Processor

ATOL = 1e-5
NEW_PARTS = ("adapters.", "matching_head.token_mix.", "temperature")


@pytest.fixture(scope="module")
def blip2(tiny_blip2_config, tmp_path_factory):
    """A random tiny Blip2ForImageTextRetrieval saved to a folder: (model, folder)."""
    from transformers import Blip2ForImageTextRetrieval

    torch.manual_seed(0)
    model = Blip2ForImageTextRetrieval(tiny_blip2_config).eval()
    with torch.no_grad():  # transformers starts the query tokens at zero; random ones make the test sharper
        model.query_tokens.normal_(std=0.5)
    folder = tmp_path_factory.mktemp("blip2_itm")
    model.save_pretrained(folder)
    return model, folder


@pytest.fixture(scope="module")
def batch(tiny_processor):
    torch.manual_seed(1)
    text = tiny_processor(text=["is red with long sleeves", "has stripes and a v neck instead of a round neck"])
    return {"pixel_values": torch.randn(2, 3, 32, 32), **text}


@pytest.fixture(scope="module")
def converted(blip2):
    return FashionBlip2Model.from_blip2(blip2[1], output_loading_info=True)


@pytest.fixture(scope="module")
def converted_max(blip2):
    return FashionBlip2Model.from_blip2(blip2[1], matching="max")


def test_vision_features_equal_blip2_with_adapters_at_init(blip2, converted, batch):  # (a)
    model, info = converted
    with torch.no_grad():
        expected = blip2[0].vision_model(pixel_values=batch["pixel_values"]).last_hidden_state
        actual = model.get_vision_tokens(batch["pixel_values"])
    assert len(model.adapters) == model.config.vision_config.num_hidden_layers
    torch.testing.assert_close(actual, expected, atol=ATOL, rtol=0)


def test_candidate_branch_equals_blip2_itc_image_pass(blip2, converted, batch):  # (b)
    captured = []
    handle = blip2[0].qformer.register_forward_hook(lambda module, args, output: captured.append(output))
    try:
        with torch.no_grad():
            blip2[0](**batch, use_image_text_matching_head=False)
    finally:
        handle.remove()
    image_pass = captured[0].last_hidden_state  # ITC: first the query-only image pass, then the text pass
    with torch.no_grad():
        actual = converted[0].get_candidate_states(converted[0].get_vision_tokens(batch["pixel_values"]))
    assert actual.shape == image_pass.shape
    torch.testing.assert_close(actual, image_pass, atol=ATOL, rtol=0)


def test_query_branch_equals_blip2_itm_pass(blip2, converted, batch):  # (c)
    with torch.no_grad():
        itm = blip2[0](**batch, use_image_text_matching_head=True).text_model_output.last_hidden_state
        vision_tokens = converted[0].get_vision_tokens(batch["pixel_values"])
        actual = converted[0].get_query_states(vision_tokens, batch["input_ids"], batch["attention_mask"])
    torch.testing.assert_close(actual, itm, atol=ATOL, rtol=0)


def test_max_matching_reproduces_blip2_itc_similarity(blip2, converted_max, batch):  # (d)
    blip2_model = blip2[0]
    with torch.no_grad():
        itc = blip2_model(**batch, use_image_text_matching_head=False)
        candidates = converted_max.get_candidate_embeddings(batch["pixel_values"])
        scores = converted_max.score(itc.text_embeds, candidates)
        # The query side is defined alike too: ITC's text projection of the fused text [CLS] of the ITM pass.
        itm_states = blip2_model(**batch, use_image_text_matching_head=True).text_model_output.last_hidden_state
        fused = torch.nn.functional.normalize(
            blip2_model.text_projection(itm_states[:, blip2_model.config.num_query_tokens]), dim=-1
        )
        queries = converted_max.get_query_embeddings(**batch)
    torch.testing.assert_close(candidates, itc.image_embeds, atol=ATOL, rtol=0)
    torch.testing.assert_close(scores, itc.logits_per_text, atol=ATOL, rtol=0)
    torch.testing.assert_close(queries, fused, atol=ATOL, rtol=0)


def test_only_new_parts_start_fresh(blip2, converted):
    model, info = converted
    assert info["missing_keys"], "the adapters and TokenMix are new"
    assert all(key.startswith(NEW_PARTS) for key in info["missing_keys"]), info["missing_keys"]
    dropped = ["itm_head.bias", "itm_head.weight", "text_projection.bias", "text_projection.weight"]
    assert info["dropped_keys"] == dropped
    torch.testing.assert_close(model.matching_head.channel_mix.weight, blip2[0].vision_projection.weight)
    assert model.config.freeze_vision and not any(p.requires_grad for p in model.vision_model.parameters())


def test_converted_model_saves_and_reloads(converted, batch, tmp_path):
    from transformers import AutoModel

    converted[0].save_pretrained(tmp_path)
    reloaded = AutoModel.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(
            reloaded.get_query_embeddings(**batch), converted[0].get_query_embeddings(**batch), atol=0, rtol=0
        )


def _copy_checkpoint(source, target, *, drop_prefix=None, extra=None, config_edit=None):
    target.mkdir()
    state = load_file(source / "model.safetensors")
    if drop_prefix:
        state = {k: v for k, v in state.items() if not k.startswith(drop_prefix)}
    state.update(extra or {})
    save_file(state, target / "model.safetensors")
    config = json.loads((source / "config.json").read_text())
    if config_edit:
        config_edit(config)
    (target / "config.json").write_text(json.dumps(config))
    return target


def test_checkpoint_without_text_embeddings_names_what_is_missing(blip2, tmp_path):
    folder = _copy_checkpoint(blip2[1], tmp_path / "ckpt", drop_prefix="embeddings.")
    with pytest.raises(ConversionError, match=r"not a BLIP-2 retrieval checkpoint: it lacks 2 tensors.*embeddings\."):
        FashionBlip2Model.from_blip2(folder)


def test_checkpoint_with_unknown_tensors_is_refused(blip2, tmp_path):
    extra = {"language_projection.weight": torch.zeros(2, 2)}
    folder = _copy_checkpoint(blip2[1], tmp_path / "ckpt", extra=extra)
    with pytest.raises(ConversionError, match="language_projection.weight"):
        FashionBlip2Model.from_blip2(folder)


def test_generation_checkpoint_without_text_input_is_refused(blip2, tmp_path):
    def no_text_input(config):
        config["qformer_config"]["use_qformer_text_input"] = False

    folder = _copy_checkpoint(blip2[1], tmp_path / "ckpt", config_edit=no_text_input)
    with pytest.raises(ConversionError, match="use_qformer_text_input=False"):
        FashionBlip2Model.from_blip2(folder)


def test_non_blip2_checkpoint_is_refused(blip2, tmp_path):
    def bert(config):
        config["model_type"] = "bert"

    folder = _copy_checkpoint(blip2[1], tmp_path / "ckpt", config_edit=bert)
    with pytest.raises(ConversionError, match="'bert' checkpoint, not BLIP-2"):
        FashionBlip2Model.from_blip2(folder)


def test_pickle_only_checkpoint_is_refused(blip2, tmp_path):
    folder = _copy_checkpoint(blip2[1], tmp_path / "ckpt")
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    with pytest.raises(ConversionError, match="only safetensors"):
        FashionBlip2Model.from_blip2(folder)


def test_processor_from_a_blip2_checkpoint(blip2, tiny_processor, tmp_path):
    from transformers import Blip2Processor

    folder = _copy_checkpoint(blip2[1], tmp_path / "ckpt")
    tokenizer = copy.deepcopy(tiny_processor.tokenizer)  # Blip2Processor adds an <image> token to it
    Blip2Processor(tiny_processor.image_processor, tokenizer).save_pretrained(folder)
    processor = FashionBlip2Processor.from_blip2(str(folder), max_text_length=16, target_pad_ratio=1.25)
    text = "is red with long sleeves"
    assert processor(text=text)["input_ids"].tolist() == tiny_processor(text=text)["input_ids"].tolist()
    assert processor.image_processor.size["height"] == 32 and processor.target_pad_ratio == 1.25


def test_convert_command_writes_a_loadable_folder(blip2, tiny_processor, batch, tmp_path, capsys):
    from transformers import AutoModel, Blip2Processor

    from modeling_fashionblip2.cli import main

    source = _copy_checkpoint(blip2[1], tmp_path / "ckpt")
    Blip2Processor(tiny_processor.image_processor, copy.deepcopy(tiny_processor.tokenizer)).save_pretrained(source)
    output = tmp_path / "out" / "fashionblip2"
    assert main(["convert", str(source), str(output), "--matching", "max", "--adapter-dim", "4", "--target-pad"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["output"] == str(output) and report["dropped_keys"] == ["itm_head.bias", "itm_head.weight"]
    model = AutoModel.from_pretrained(output, trust_remote_code=True).eval()
    assert model.config.matching == "max" and model.config.adapter_dim == 4
    assert json.loads((output / "processor_config.json").read_text())["target_pad_ratio"] == 1.25
    with torch.no_grad():
        expected = blip2[0](**batch, use_image_text_matching_head=False).image_embeds
        torch.testing.assert_close(model.get_candidate_embeddings(batch["pixel_values"]), expected, atol=ATOL, rtol=0)
    assert main(["convert", str(source), str(output)]) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err
    assert sorted(p.name for p in output.parent.iterdir()) == ["fashionblip2"]  # no staging folder left behind


def test_convert_command_reports_a_bad_checkpoint(blip2, tmp_path, capsys):
    from modeling_fashionblip2.cli import main

    source = _copy_checkpoint(blip2[1], tmp_path / "ckpt", drop_prefix="qformer.")
    assert main(["convert", str(source), str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.startswith("error: ") and not (tmp_path / "out").exists()


def test_convert_command_runs_as_documented(tmp_path):
    import subprocess
    import sys

    from conftest import REPO_ROOT

    result = subprocess.run(
        [sys.executable, "-m", "modeling_fashionblip2", "convert", str(tmp_path / "missing"), str(tmp_path / "out")],
        capture_output=True, text=True, timeout=120, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
        cwd=REPO_ROOT,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.startswith(f"error: {tmp_path / 'missing'}: no such folder") and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()
