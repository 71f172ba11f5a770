"""The local `transformers` backend with tiny random models built here (their text is gibberish: the
mechanics are what is tested — batching, chat and plain prompts, retries, caching, outputs)."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from facap_dataset.annotate import FolderImages, OutputRules, Pair, StageRun, annotate_captions, annotate_modifications
from facap_dataset.annotate import load_template
from facap_dataset.annotate.backends import BackendOptions, Request, make_backend
from facap_dataset.annotate.local import TransformersBackend

WORDS = "a the red blue green dress skirt long short sleeves make it is with and more fitted lace".split()
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
CHAT_TEMPLATE = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}assistant:"
# Generation never stops early (no end token), so every answer has max_new_tokens words from WORDS.
ANSWER_RULES = OutputRules(min_words=1, max_words=50, one_sentence=False, exclusive_category=False)


def _tokenizer(directory):
    from transformers import BertTokenizer

    vocab = directory / "vocab.txt"
    vocab.write_text("\n".join(SPECIAL + WORDS) + "\n")
    return BertTokenizer(str(vocab))


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    from transformers import (BlipConfig, BlipForConditionalGeneration, BlipImageProcessor, BlipProcessor,
                              GPT2Config, GPT2LMHeadModel)

    root = tmp_path_factory.mktemp("tiny_generators")
    tokenizer = _tokenizer(root)
    vocab_size = len(SPECIAL) + len(WORDS)
    with torch.random.fork_rng():  # seeded weights without touching the session's global RNG
        torch.manual_seed(0)
        blip = BlipForConditionalGeneration(BlipConfig(
            text_config=dict(vocab_size=vocab_size, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                             num_attention_heads=2, max_position_embeddings=512, bos_token_id=2, sep_token_id=None,
                             eos_token_id=None, pad_token_id=0),
            vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                               image_size=32, patch_size=16),
            projection_dim=16,
        ))
    blip.save_pretrained(root / "vlm")
    BlipProcessor(image_processor=BlipImageProcessor(size={"height": 32, "width": 32}),
                  tokenizer=tokenizer).save_pretrained(root / "vlm")
    for name, chat in (("llm", False), ("chat-llm", True)):
        with torch.random.fork_rng():
            torch.manual_seed(1)
            gpt = GPT2LMHeadModel(GPT2Config(vocab_size=vocab_size, n_embd=16, n_layer=1, n_head=2, n_positions=512,
                                             bos_token_id=2, eos_token_id=None, pad_token_id=0))
        gpt.generation_config.eos_token_id = None
        gpt.save_pretrained(root / name)
        tokenizer.chat_template = CHAT_TEMPLATE if chat else None
        tokenizer.save_pretrained(root / name)
    return root


def _run(tmp_path, category="dress"):
    return StageRun(out=tmp_path / "out", category=category, split="train", rules=ANSWER_RULES, progress=False)


def test_local_captioner_batches_images_and_caches(tmp_path, tiny_models):
    images = tmp_path / "images"
    images.mkdir()
    for index in range(5):
        Image.new("RGB", (40, 30), (50 * index, 20, 200 - 30 * index)).save(images / f"{index}.png")
    backend = TransformersBackend("image-text-to-text", str(tiny_models / "vlm"), batch_size=2, max_new_tokens=4)
    assert not backend.chat and backend.batch_size == 2
    source = FolderImages(images)
    summary, path = annotate_captions(source, source.ids(), backend, load_template("caption"), _run(tmp_path))
    captions = json.loads(path.read_text())
    assert summary.done + summary.rejected == 5 and summary.done >= 1
    assert set(captions) <= {f"{i}.png" for i in range(5)}
    assert all(set(text.split()) <= set(WORDS) for text in captions.values())

    again, _ = annotate_captions(source, source.ids(), backend, load_template("caption"), _run(tmp_path))
    assert (again.done, again.cached) == (0, 5)


@pytest.mark.parametrize("model", ["llm", "chat-llm"])
def test_local_text_generation_plain_and_chat(tmp_path, tiny_models, model):
    backend = make_backend(
        BackendOptions(backend="transformers", model=str(tiny_models / model), batch_size=3, max_new_tokens=5),
        "text-generation",
    )
    assert backend.chat == (model == "chat-llm")
    pairs = [Pair(f"i{k}", f"i{k + 1}") for k in range(4)]
    captions = {f"i{k}": f"a {colour} dress with long sleeves" for k, colour in enumerate(["red", "blue", "green",
                                                                                          "red", "blue"])}
    summary, path = annotate_modifications(pairs, captions, backend, load_template("modification"), _run(tmp_path))
    triplets = json.loads(path.read_text())
    assert summary.done == 4 and len(triplets) == 4
    assert all(set(t["captions"][0].split()) <= set(WORDS) for t in triplets), triplets


def test_local_retries_sample_instead_of_repeating_greedy_output(tiny_models):
    backend = TransformersBackend("text-generation", str(tiny_models / "llm"), batch_size=2, max_new_tokens=6)
    request = [Request(text="make it red")]
    greedy = {backend.generate(request, attempt=0)[0].text for _ in range(2)}
    assert len(greedy) == 1
    # Random weights give near-uniform next-token probabilities: four samples of six tokens all equal is
    # vanishingly unlikely, while greedy decoding is always the same.
    sampled = {backend.generate(request, attempt=1)[0].text for _ in range(4)}
    assert len(sampled) > 1
