"""FashionBLIP-2 config, model, processor and remote-code publishing, on tiny random models."""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap

import pytest
import torch
from PIL import Image

from modeling_fashionblip2 import (
    FASHIONIQ_TARGET_PAD_RATIO,
    FashionBlip2Config,
    FashionBlip2Model,
    FashionBlip2Processor,
    target_pad,
)

TEXTS = ["is red with long sleeves", "has stripes and is shorter", "is more blue", "the dress is floral"]


def tiny_model(seed: int = 0, **overrides) -> FashionBlip2Model:
    torch.manual_seed(seed)
    return FashionBlip2Model(FashionBlip2Config.from_preset("tiny", **overrides))


@pytest.fixture(scope="module")
def batch(tiny_processor):
    torch.manual_seed(3)
    images = [Image.fromarray((torch.rand(48, 40, 3) * 255).byte().numpy()) for _ in TEXTS]
    targets = [Image.fromarray((torch.rand(40, 40, 3) * 255).byte().numpy()) for _ in TEXTS]
    text = tiny_processor(images=images, text=TEXTS)
    return {
        "reference_pixel_values": text["pixel_values"],
        "input_ids": text["input_ids"],
        "attention_mask": text["attention_mask"],
        "target_pixel_values": tiny_processor(images=targets)["pixel_values"],
    }


# ------------------------------------------------------------------------------------------------------ config
@pytest.mark.parametrize("preset", ["tiny", "demo", "blip2-vit-g"])
def test_config_round_trips(preset):
    config = FashionBlip2Config.from_preset(preset)
    assert FashionBlip2Config.from_dict(config.to_dict()).to_dict() == config.to_dict()
    assert config.qformer_config.encoder_hidden_size == config.vision_config.hidden_size
    assert config.qformer_config.use_qformer_text_input


def test_presets_have_the_documented_sizes():
    sizes = {}
    for preset in ("tiny", "demo"):
        model = FashionBlip2Model(FashionBlip2Config.from_preset(preset))
        sizes[preset] = sum(p.numel() for p in model.parameters())
        assert not model.config.freeze_vision and all(p.requires_grad for p in model.parameters())
    assert 80_000 < sizes["tiny"] < 120_000
    assert 1_300_000 < sizes["demo"] < 1_800_000
    assert FashionBlip2Config.from_preset("blip2-vit-g").freeze_vision
    # Only the CPU demo preset drops the Q-Former's dropout (docs/model.md); the others keep BLIP-2's 0.1.
    dropouts = {preset: (config.qformer_config.hidden_dropout_prob, config.qformer_config.attention_probs_dropout_prob)
                for preset in ("tiny", "demo", "blip2-vit-g")
                for config in [FashionBlip2Config.from_preset(preset)]}
    assert dropouts == {"tiny": (0.1, 0.1), "demo": (0.0, 0.0), "blip2-vit-g": (0.1, 0.1)}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"matching": "late"}, "matching='late' is unknown"),
        ({"adapter_layers": [7]}, "adapter_layers contains 7"),
        ({"max_text_length": 500}, "max_text_length=500 exceeds"),
        ({"temperature_init": 0.0}, "temperature_init=0.0"),
    ],
)
def test_bad_config_values_are_named(overrides, message):
    with pytest.raises(ValueError, match=message):
        FashionBlip2Config.from_preset("tiny", **overrides)


def test_unknown_preset_is_refused():
    with pytest.raises(ValueError, match="preset 'huge' is unknown"):
        FashionBlip2Config.from_preset("huge")


# ------------------------------------------------------------------------------------------------------ model
def test_embeddings_are_unit_rows_and_score_is_mean_row_cosine(batch):
    model = tiny_model().eval()
    images, texts, mask = batch["reference_pixel_values"], batch["input_ids"], batch["attention_mask"]
    with torch.no_grad():
        queries = model.get_query_embeddings(images, texts, mask)
        candidates = model.get_candidate_embeddings(batch["target_pixel_values"])
        query_states = model.get_query_states(model.get_vision_tokens(images), texts, mask)
        query_rows = _head_rows(model, query_states[:, : model.config.num_query_tokens])
        candidate_rows = _head_rows(
            model, model.get_candidate_states(model.get_vision_tokens(batch["target_pixel_values"]))
        )
    assert queries.shape == candidates.shape == (len(TEXTS), model.config.embedding_dim)
    torch.testing.assert_close(queries.norm(dim=-1), torch.ones(len(TEXTS)))
    mean_cosine = torch.einsum("qhd,chd->qch", query_rows, candidate_rows).mean(dim=-1)
    torch.testing.assert_close(model.score(queries, candidates), mean_cosine, atol=1e-6, rtol=0)
    torch.testing.assert_close(model.score(queries, candidates), queries @ candidates.T)


def _head_rows(model, tokens):
    """The n_t matching rows written out: TokenMix, ChannelMix, cosine-normalised rows."""
    head = model.matching_head
    rows = torch.einsum("tq,bqd->btd", head.token_mix.weight, tokens) + head.token_mix.bias[None, :, None]
    return torch.nn.functional.normalize(head.channel_mix(rows), dim=-1)


def test_adapters_start_as_identity_and_vision_can_be_frozen(batch):
    model = tiny_model(freeze_vision=True).eval()
    pixels = batch["reference_pixel_values"]
    with torch.no_grad():
        torch.testing.assert_close(
            model.get_vision_tokens(pixels), model.vision_model(pixel_values=pixels).last_hidden_state
        )
    assert not any(p.requires_grad for p in model.vision_model.parameters())
    assert all(p.requires_grad for p in model.adapters.parameters())
    assert all(adapter.up.weight.abs().max().item() == 0 for adapter in model.adapters.values())


def test_loss_falls_on_a_fixed_batch(batch):
    model = tiny_model().train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(15):
        loss = model(**batch, return_loss=True).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert min(losses[-3:]) < 0.6 * losses[0], losses
    assert model.temperature.grad is not None and model.query_tokens.grad is not None


def test_forward_outputs(batch):
    model = tiny_model().eval()
    with torch.no_grad():
        out = model(**batch, return_loss=True)
        query_only = model(batch["reference_pixel_values"], batch["input_ids"], batch["attention_mask"])
    assert out.loss.ndim == 0 and out.logits_per_query.shape == (len(TEXTS), len(TEXTS))
    torch.testing.assert_close(out.logits_per_query, model.score(out.query_embeds, out.candidate_embeds) / 0.07)
    assert query_only.loss is None and query_only.logits_per_query is None
    torch.testing.assert_close(query_only.query_embeds, out.query_embeds)


def test_reference_negatives_extend_the_loss_with_the_references(batch):
    model = tiny_model(reference_negatives=True).eval()
    with torch.no_grad():
        out = model(**batch, return_loss=True)
        references = model.get_candidate_embeddings(batch["reference_pixel_values"])
    candidates = torch.cat([out.candidate_embeds, references])
    expected = model.score(out.query_embeds, candidates) / model.config.temperature_init
    torch.testing.assert_close(out.logits_per_query, expected)
    torch.testing.assert_close(out.loss, torch.nn.functional.cross_entropy(expected, torch.arange(len(TEXTS))))
    with torch.no_grad():  # scoring without the loss is unchanged: targets only
        assert model(**batch).logits_per_query.shape == (len(TEXTS), len(TEXTS))


@pytest.mark.parametrize("reference_negatives", [False, True])
def test_negative_pixel_values_add_candidates_after_the_targets(batch, reference_negatives):
    model = tiny_model(reference_negatives=reference_negatives).eval()
    negatives = torch.randn(3, *batch["target_pixel_values"].shape[1:], generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = model(**batch, negative_pixel_values=negatives, return_loss=True)
        extra = [model.get_candidate_embeddings(negatives)]
        if reference_negatives:
            extra.append(model.get_candidate_embeddings(batch["reference_pixel_values"]))
        plain = model(**batch, return_loss=True)
    candidates = torch.cat([out.candidate_embeds, *extra])
    expected = model.score(out.query_embeds, candidates) / model.config.temperature_init
    torch.testing.assert_close(out.logits_per_query, expected)
    torch.testing.assert_close(out.loss, torch.nn.functional.cross_entropy(expected, torch.arange(len(TEXTS))))
    torch.testing.assert_close(out.candidate_embeds, plain.candidate_embeds)
    assert out.loss > plain.loss  # more negatives, same positives


def test_negative_pixel_values_need_targets(batch):
    model = tiny_model().eval()
    with pytest.raises(ValueError, match="negative_pixel_values needs target_pixel_values"):
        model(batch["reference_pixel_values"], batch["input_ids"], negative_pixel_values=batch["target_pixel_values"])
    with pytest.raises(ValueError, match="negative_pixel_values"):
        model(**batch, negative_pixel_values=batch["target_pixel_values"][:, :, :8])


def test_max_matching_keeps_per_token_candidates(batch):
    model = tiny_model(matching="max").eval()
    with torch.no_grad():
        out = model(**batch, return_loss=True)
    num_queries = model.config.num_query_tokens
    assert out.candidate_embeds.shape == (len(TEXTS), num_queries, model.config.image_text_hidden_size)
    expected = torch.stack([(out.candidate_embeds @ q).amax(dim=-1) for q in out.query_embeds])
    torch.testing.assert_close(model.score(out.query_embeds, out.candidate_embeds), expected)


def test_saved_model_reloads_with_identical_outputs(tiny_model_dir, batch):
    from transformers import AutoModel

    model = AutoModel.from_pretrained(tiny_model_dir).eval()
    torch.manual_seed(0)
    fresh = FashionBlip2Model(FashionBlip2Config.from_preset("tiny")).eval()  # the fixture's seed and preset
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).query_embeds, fresh(**batch).query_embeds, atol=0, rtol=0)
        pixels = batch["target_pixel_values"]
        torch.testing.assert_close(
            model.get_candidate_embeddings(pixels), fresh.get_candidate_embeddings(pixels), atol=0, rtol=0
        )
    assert isinstance(model, FashionBlip2Model)


# ------------------------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        ({"reference_pixel_values": torch.zeros(4, 3, 48, 48)}, ValueError, r"expected \(batch_size, 3, 32, 32\)"),
        ({"target_pixel_values": torch.zeros(4, 32, 32)}, ValueError, r"target_pixel_values has shape \(4, 32, 32\)"),
        ({"input_ids": torch.ones(4, 40, dtype=torch.long), "attention_mask": None}, ValueError,
         "40 tokens, more than max_text_length=32"),
        ({"target_pixel_values": torch.zeros(3, 3, 32, 32)}, ValueError, "4 reference images but 3 targets"),
        ({"input_ids": torch.ones(3, 5, dtype=torch.long), "attention_mask": None}, ValueError,
         "4 reference images but 3 texts"),
        ({"input_ids": torch.full((4, 5), 5000), "attention_mask": None}, ValueError, "outside the vocabulary"),
        ({"attention_mask": torch.ones(4, 2, dtype=torch.long)}, ValueError, "attention_mask has shape"),
    ],
)
def test_bad_input_is_refused_with_a_clear_message(batch, change, error, message):
    model = tiny_model().eval()
    with pytest.raises(error, match=message), torch.no_grad():
        model(**{**batch, **change}, return_loss=True)


def test_loss_needs_targets(batch):
    model = tiny_model()
    with pytest.raises(ValueError, match="return_loss=True needs target_pixel_values"):
        model(batch["reference_pixel_values"], batch["input_ids"], return_loss=True)


# ------------------------------------------------------------------------------------------------------ speed paths
def test_gradient_checkpointing_gives_the_same_gradients(batch):
    grads = []
    for checkpointing in (False, True):
        model = tiny_model(freeze_vision=True)
        model.config.qformer_config.hidden_dropout_prob = 0.0
        model.eval()  # no dropout: the recomputed forward must be identical
        if checkpointing:
            model.activation_checkpointing_enable()
            assert model.vision_model.encoder.layers[0].gradient_checkpointing
        model(**batch, return_loss=True).loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and any(k.startswith("adapters.") for k in grads[0])
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], atol=1e-6, rtol=1e-5)


def test_sdpa_is_the_default_and_matches_eager(batch):
    model = tiny_model().eval()
    assert model.config._attn_implementation == "sdpa"
    assert model.qformer.config._attn_implementation == "sdpa"
    with torch.no_grad():
        sdpa = model(**batch).query_embeds
        model.set_attn_implementation("eager")
        eager = model(**batch).query_embeds
    torch.testing.assert_close(sdpa, eager, atol=1e-5, rtol=0)


def test_bf16_autocast_runs_and_stays_close(batch):
    model = tiny_model().eval()
    with torch.no_grad():
        full = model(**batch, return_loss=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = model(**batch, return_loss=True)
    assert torch.isfinite(mixed.loss)
    torch.testing.assert_close(mixed.query_embeds.float(), full.query_embeds, atol=5e-2, rtol=0)


# ------------------------------------------------------------------------------------------------------ processor
def test_processor_pads_to_longest_and_truncates(tiny_processor):
    out = tiny_processor(text=["is red", " ".join(["longer"] * 100)])
    assert out["input_ids"].shape == (2, tiny_processor.max_text_length)
    assert out["attention_mask"][0].tolist()[:5] == [1, 1, 1, 1, 0]  # [CLS] is red [SEP] [PAD]
    assert "token_type_ids" not in out


def test_processor_vocabulary_covers_the_test_words(tiny_processor):
    from conftest import MODEL_TEST_WORDS

    unknown = tiny_processor.tokenizer.unk_token
    assert unknown not in tiny_processor.tokenizer.tokenize(" ".join(MODEL_TEST_WORDS))
    assert tiny_processor.tokenizer.tokenize("reddish") == ["red", "##d", "##i", "##s", "##h"]
    assert tiny_processor.tokenizer.pad_token_id == 0
    assert len(tiny_processor.tokenizer) <= FashionBlip2Config.from_preset("tiny").qformer_config.vocab_size


def test_target_pad_reaches_the_fashioniq_ratio():
    tall = Image.new("RGB", (40, 100), (255, 0, 0))
    padded = target_pad(tall, FASHIONIQ_TARGET_PAD_RATIO)
    assert padded.size == (80, 100)
    assert padded.getpixel((0, 50)) == (0, 0, 0) and padded.getpixel((40, 50)) == (255, 0, 0)
    square = Image.new("RGB", (50, 45))
    assert target_pad(square, FASHIONIQ_TARGET_PAD_RATIO) is square


def test_processor_with_target_pad_round_trips(tmp_path):
    from transformers import AutoProcessor

    processor = FashionBlip2Processor.from_texts(TEXTS, image_size=32, max_text_length=16, target_pad_ratio=1.25)
    processor.save_pretrained(tmp_path)
    reloaded = AutoProcessor.from_pretrained(tmp_path)
    assert isinstance(reloaded, FashionBlip2Processor) and reloaded.target_pad_ratio == 1.25
    assert reloaded.max_text_length == 16
    tall = Image.new("RGB", (20, 80), (255, 255, 255))
    pixels = reloaded(images=tall)["pixel_values"]
    assert pixels.shape == (1, 3, 32, 32)
    # the black side bands come from the pad: the first column is darker than the centre
    assert pixels[0, :, 16, 0].mean() < pixels[0, :, 16, 16].mean()
    torch.testing.assert_close(pixels, processor(images=tall)["pixel_values"])


def test_processor_refuses_empty_calls_and_long_max_length(tiny_processor):
    with pytest.raises(ValueError, match="give images, text or both"):
        tiny_processor()
    with pytest.raises(ValueError, match="max_length=64 exceeds this processor's max_text_length=32"):
        tiny_processor(text="is red", max_length=64)
    assert tiny_processor(text="is red with long sleeves", max_length=4)["input_ids"].shape == (1, 4)
    with pytest.raises(ValueError, match="target_pad_ratio=0.5"):
        FashionBlip2Processor(tiny_processor.image_processor, tiny_processor.tokenizer, target_pad_ratio=0.5)


# ------------------------------------------------------------------------------------------------------ remote code
REMOTE_SCRIPT = textwrap.dedent(
    """
    import importlib.abc, json, sys
    class BlockOurPackage(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "modeling_fashionblip2":
                raise ImportError("modeling_fashionblip2 must not be importable here")
    sys.meta_path.insert(0, BlockOurPackage())
    import torch
    from transformers import AutoModel, AutoProcessor
    folder, texts = sys.argv[1], json.loads(sys.argv[2])
    model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    torch.manual_seed(5)
    pixels = torch.randn(len(texts), 3, 32, 32)
    batch = processor(text=texts)
    with torch.no_grad():
        q = model.get_query_embeddings(pixels, batch["input_ids"], batch["attention_mask"])
    print(json.dumps({"module": type(model).__module__, "processor": type(processor).__module__,
                      "input_ids": batch["input_ids"].tolist(), "q": q.tolist()}))
    """
)


def test_saved_folder_loads_in_a_fresh_process_without_the_package(tiny_model_dir, tiny_processor, tmp_path):
    import json

    result = subprocess.run(
        [sys.executable, "-c", REMOTE_SCRIPT, str(tiny_model_dir), json.dumps(TEXTS)],
        cwd=tmp_path, capture_output=True, text=True, timeout=240,
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "HF_HOME": str(tmp_path / "hf")},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    remote = json.loads(result.stdout.strip().splitlines()[-1])
    assert remote["module"].startswith("transformers_modules.")
    assert remote["processor"].startswith("transformers_modules.")
    from transformers import AutoModel

    model = AutoModel.from_pretrained(tiny_model_dir).eval()
    batch = tiny_processor(text=TEXTS)
    assert remote["input_ids"] == batch["input_ids"].tolist()
    torch.manual_seed(5)
    pixels = torch.randn(len(TEXTS), 3, 32, 32)
    with torch.no_grad():
        local = model.get_query_embeddings(pixels, batch["input_ids"], batch["attention_mask"])
    torch.testing.assert_close(torch.tensor(remote["q"]), local, atol=1e-6, rtol=0)


def test_saved_folder_lists_the_remote_code(tiny_model_dir):
    import json

    config = json.loads((tiny_model_dir / "config.json").read_text())
    assert config["auto_map"]["AutoModel"] == "modeling_fashionblip2.FashionBlip2Model"
    processor_config = json.loads((tiny_model_dir / "processor_config.json").read_text())
    assert processor_config["auto_map"]["AutoProcessor"] == "processing_fashionblip2.FashionBlip2Processor"
    for name in ("configuration_fashionblip2.py", "modeling_fashionblip2.py", "processing_fashionblip2.py",
                 "convert.py", "pipeline_fashionblip2.py", "model.safetensors"):
        assert (tiny_model_dir / name).is_file(), name
    assert not list(tiny_model_dir.glob("*.bin")) and not (tiny_model_dir / "__init__.py").exists()
    assert math.isfinite(config["temperature_init"])


# ------------------------------------------------------------------------------------------------------ structure
def test_interpolate_pos_encoding_follows_blip2_vision_model():
    model = tiny_model(freeze_vision=True).eval()  # adapters start at zero: the tokens are BLIP-2's
    pixels = torch.randn(2, 3, 48, 40, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        tokens = model.get_vision_tokens(pixels, interpolate_pos_encoding=True)
        expected = model.vision_model(pixel_values=pixels, interpolate_pos_encoding=True).last_hidden_state
        embeds = model.get_candidate_embeddings(pixels, interpolate_pos_encoding=True)
    assert tokens.shape == (2, 1 + (48 // 8) * (40 // 8), 32)
    torch.testing.assert_close(tokens, expected)
    assert embeds.shape == (2, model.config.embedding_dim)
    with pytest.raises(ValueError, match=r"expected \(batch_size, 3, 32, 32\).*interpolate_pos_encoding=True"):
        model.get_vision_tokens(pixels)


@pytest.mark.parametrize("matching", ["multihead", "max"])
def test_contrastive_loss_owns_labels_and_scores_through_the_matching_mode(matching):
    from modeling_fashionblip2 import ContrastiveLoss, score_embeddings

    generator = torch.Generator().manual_seed(4)
    shape = (4, 16) if matching == "multihead" else (4, 3, 16)
    queries = torch.nn.functional.normalize(torch.randn(4, 16, generator=generator), dim=-1)
    targets = torch.nn.functional.normalize(torch.randn(*shape, generator=generator), dim=-1)
    extras = torch.nn.functional.normalize(torch.randn(2, *shape[1:], generator=generator), dim=-1)
    loss_fn = ContrastiveLoss(matching)
    loss, logits = loss_fn(queries, targets, extras, torch.tensor(0.1))
    expected = score_embeddings(queries, torch.cat([targets, extras]), matching) / 0.1
    torch.testing.assert_close(logits, expected)
    torch.testing.assert_close(loss, torch.nn.functional.cross_entropy(expected, torch.arange(4)))
    assert loss_fn.get_labels(4, torch.device("cpu")) is loss_fn.get_labels(4, torch.device("cpu"))  # cached
    no_extras, _ = loss_fn(queries, targets, None, torch.tensor(0.1))
    assert no_extras < loss  # same positives, fewer negatives


REMOTE_FILES = ("configuration_fashionblip2.py", "modeling_fashionblip2.py", "processing_fashionblip2.py",
                "convert.py", "pipeline_fashionblip2.py")
REMOTE_IMPORTS = {"__future__", "collections", "copy", "dataclasses", "json", "math", "os", "typing", "torch",
                  "transformers", "safetensors", "huggingface_hub", "tokenizers", "PIL"}


@pytest.mark.parametrize("name", REMOTE_FILES)
def test_remote_code_files_import_nothing_of_ours(name):
    import ast
    from pathlib import Path

    import modeling_fashionblip2

    source = (Path(modeling_fashionblip2.__file__).parent / name).read_text()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.level:
            assert "." not in (node.module or "") and node.module, f"{name}: only flat siblings, got {node.module}"
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module]
            assert {m.split(".")[0] for m in modules} <= REMOTE_IMPORTS, f"{name} imports {modules}"
    assert "DESIGN" not in source


def test_no_blip2_method_name_is_shadowed_with_another_return_type():
    from transformers import Blip2ForImageTextRetrieval, Blip2Model

    blip2_methods = {n for cls in (Blip2Model, Blip2ForImageTextRetrieval) for n in dir(cls) if n.startswith("get_")}
    ours = {n for n in vars(FashionBlip2Model) if n.startswith("get_")}
    assert not ours & blip2_methods, ours & blip2_methods
