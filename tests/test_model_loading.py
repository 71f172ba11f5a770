"""The loading policy of `modeling_fashionblip2.load_pretrained`: FashionBLIP-2 folders load through the installed
classes without executing the folder's code; other code runs only with `trust_remote_code=True`; every failure
is one `ModelLoadError` line naming the path."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from facap_io.errors import FacapError
from modeling_fashionblip2 import FashionBlip2Model, FashionBlip2Processor, ModelLoadError, load_pretrained

MARKER_CODE = "\nimport pathlib as _p\n_p.Path({marker!r}).write_text('folder code ran')\n"


def _tampered_copy(source, folder, marker, config_edit=None):
    """A copy of a saved folder whose modeling file writes `marker` when it is imported."""
    shutil.copytree(source, folder)
    modeling = folder / "modeling_fashionblip2.py"
    modeling.write_text(modeling.read_text() + MARKER_CODE.format(marker=str(marker)))
    if config_edit:
        config = json.loads((folder / "config.json").read_text())
        config_edit(config)
        (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_fashionblip2_folder_loads_through_the_installed_classes_without_running_its_code(tiny_model_dir, tmp_path):
    marker = tmp_path / "marker"
    folder = _tampered_copy(tiny_model_dir, tmp_path / "model", marker)
    model, processor = load_pretrained(folder)
    assert type(model) is FashionBlip2Model and type(processor) is FashionBlip2Processor
    assert not model.training and not marker.exists()
    with torch.no_grad():
        embeds = model.get_candidate_embeddings(torch.zeros(1, 3, 32, 32))
    assert embeds.shape == (1, model.config.embedding_dim)


def test_foreign_code_needs_trust_remote_code(tiny_model_dir, tmp_path):
    marker = tmp_path / "marker"

    def foreign(config):
        config["model_type"] = "someone-elses-model"

    folder = _tampered_copy(tiny_model_dir, tmp_path / "foreign", marker, foreign)
    with pytest.raises(ModelLoadError, match=r"foreign ships its own code .*pass --trust-remote-code") as error:
        load_pretrained(folder)
    assert "\n" not in str(error.value) and not marker.exists()
    model, _ = load_pretrained(folder, trust_remote_code=True)  # the explicit opt-in runs the folder's code
    assert marker.exists() and type(model).__module__.startswith("transformers_modules.")


def test_missing_folder_is_one_line_naming_it(tmp_path):
    missing = tmp_path / "nowhere" / "model"
    with pytest.raises(ModelLoadError, match=f"{missing}: no such model folder") as error:
        load_pretrained(missing)
    assert "\n" not in str(error.value) and isinstance(error.value, FacapError)


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _zero_header(path):
    data = bytearray(path.read_bytes())
    data[8:200] = bytes(192)  # the JSON header follows the 8-byte length
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", [_truncate, _zero_header], ids=["truncated", "zeroed-header"])
def test_corrupt_weights_are_named(tiny_model_dir, tmp_path, damage):
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    damage(folder / "model.safetensors")
    with pytest.raises(ModelLoadError, match=f"{folder}: model.safetensors is truncated or corrupt") as error:
        load_pretrained(folder)
    assert "\n" not in str(error.value)


def test_pickle_only_folder_is_refused(tiny_model_dir, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    with pytest.raises(ModelLoadError, match="has no .safetensors weights"):
        load_pretrained(folder)


def test_a_model_without_retrieval_methods_is_refused(tmp_path):
    from transformers import BertConfig, BertModel

    folder = tmp_path / "bert"
    config = BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16)
    BertModel(config).save_pretrained(folder)
    with pytest.raises(ModelLoadError, match="BertModel has no get_query_embeddings / get_candidate_embeddings"):
        load_pretrained(folder)
