"""Exact conversion of a transformers `Blip2ForImageTextRetrieval` checkpoint (e.g. `Salesforce/blip2-itm-vit-g`)
into FashionBLIP-2: snapshot download, safetensors shard reading, config mapping and key mapping.
`FashionBlip2Model.from_blip2` is the public entry; the command line lives in `python -m modeling_fashionblip2`.

Remote-code rule: copied next to saved weights (the modeling file imports it) and imported by transformers as a
dynamic module, so it imports only torch, transformers, safetensors, huggingface_hub, the standard library and flat
siblings (`from .x import Y`).
"""

from __future__ import annotations

import json
import os

import torch

from .configuration_fashionblip2 import FashionBlip2Config

# BLIP-2 retrieval tensors that FashionBLIP-2 never uses: the ITM classifier (always) and, in multi-head mode,
# the ITC text projection (the candidate-side ITC projection seeds ChannelMix instead).
BLIP2_ITM_HEAD_PREFIX = "itm_head."
WEIGHTS_NAME = "model.safetensors"
WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
# The BLIP-2 parts every FashionBLIP-2 model takes over one to one.
BLIP2_PARTS = ("vision_model", "qformer", "embeddings")


class ConversionError(ValueError):
    """A checkpoint given to `from_blip2` is not a usable BLIP-2 retrieval checkpoint."""


def resolve_checkpoint(path_or_id: str | os.PathLike, *, revision=None, token=None) -> str:
    """A local folder as is, else a Hub snapshot of the config and safetensors files only."""
    if os.path.isdir(path_or_id):
        return str(path_or_id)
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, HfHubHTTPError

    try:
        return snapshot_download(
            str(path_or_id), revision=revision, token=token, allow_patterns=["*.json", "*.safetensors"]
        )
    except (HFValidationError, HfHubHTTPError, OSError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ConversionError(f"{path_or_id}: no such folder, and not a downloadable Hub id ({reason})") from None


def config_from_blip2(folder: str, name: str, overrides: dict) -> FashionBlip2Config:
    """FashionBLIP-2's config for BLIP-2's `config.json`: its vision and Q-Former configs, query tokens and ITC
    width; `overrides` set our fields (`vision_config` / `qformer_config` dicts merge into BLIP-2's)."""
    overrides = dict(overrides)
    config_path = os.path.join(folder, "config.json")
    if not os.path.isfile(config_path):
        raise ConversionError(f"{name} has no config.json; expected a Blip2ForImageTextRetrieval checkpoint")
    with open(config_path, encoding="utf-8") as handle:
        blip2 = json.load(handle)
    if blip2.get("model_type") != "blip-2":
        raise ConversionError(
            f"{name} is a {blip2.get('model_type')!r} checkpoint, not BLIP-2 (model_type 'blip-2'); "
            "expected a Blip2ForImageTextRetrieval checkpoint such as Salesforce/blip2-itm-vit-g"
        )
    qformer = dict(blip2.get("qformer_config") or {})
    if not qformer.get("use_qformer_text_input", False):
        raise ConversionError(
            f"{name} has qformer_config.use_qformer_text_input=False: its Q-Former has no text layers or text "
            "embeddings (a generation checkpoint?); expected a Blip2ForImageTextRetrieval checkpoint"
        )
    vision = dict(blip2.get("vision_config") or {})
    for sub in (vision, qformer):
        for key in ("model_type", "architectures", "transformers_version", "_name_or_path"):
            sub.pop(key, None)
    vision.update(overrides.pop("vision_config", None) or {})
    qformer.update(overrides.pop("qformer_config", None) or {})
    fields = {
        "num_query_tokens": blip2.get("num_query_tokens", 32),
        "image_text_hidden_size": blip2.get("image_text_hidden_size", 256),
        # d_c = the ITC width, so that ChannelMix can start from BLIP-2's ITC vision projection.
        "head_dim": blip2.get("image_text_hidden_size", 256),
        "freeze_vision": True,
        "max_text_length": min(64, qformer.get("max_position_embeddings", 512)),
    }
    fields.update(overrides)
    return FashionBlip2Config(vision_config=vision, qformer_config=qformer, **fields)


def read_safetensors(folder: str, name: str) -> dict[str, torch.Tensor]:
    """Every tensor of the checkpoint (one file or the shards of its index); pickle files are never read."""
    from safetensors.torch import load_file

    index_path = os.path.join(folder, WEIGHTS_INDEX_NAME)
    if os.path.isfile(index_path):
        with open(index_path, encoding="utf-8") as handle:
            shards = sorted(set(json.load(handle)["weight_map"].values()))
    elif os.path.isfile(os.path.join(folder, WEIGHTS_NAME)):
        shards = [WEIGHTS_NAME]
    else:
        raise ConversionError(f"{name} has no {WEIGHTS_NAME} (only safetensors weights are loaded, never pickle)")
    state: dict[str, torch.Tensor] = {}
    for shard in shards:
        state.update(load_file(os.path.join(folder, shard)))
    return state


def map_blip2_state(
    blip2_state: dict[str, torch.Tensor], model: torch.nn.Module, name: str
) -> tuple[dict[str, torch.Tensor], dict]:
    """Rename BLIP-2 tensors to `model`'s; raise if a BLIP-2 part we need is absent or an unknown tensor is present.
    Returns the mapped state and `{"renamed_keys": {...}, "dropped_keys": [...]}`."""
    config = model.config
    ours = set(model.state_dict())
    mapped: dict[str, torch.Tensor] = {}
    renamed: dict[str, str] = {}
    dropped: list[str] = []
    unknown: list[str] = []
    seed_channel_mix = config.matching == "multihead" and config.head_dim == config.image_text_hidden_size
    for key, tensor in blip2_state.items():
        target = key
        if key.startswith(BLIP2_ITM_HEAD_PREFIX):
            dropped.append(key)
            continue
        if config.matching == "multihead" and key.startswith(("vision_projection.", "text_projection.")):
            if key.startswith("text_projection.") or not seed_channel_mix:
                dropped.append(key)
                continue
            target = "matching_head.channel_mix." + key.split(".", 1)[1]
            renamed[key] = target
        if target in ours:
            mapped[target] = tensor
        else:
            unknown.append(key)
    if unknown:
        raise ConversionError(
            f"{name} holds {len(unknown)} tensors that are not part of a BLIP-2 retrieval model, e.g. "
            f"{', '.join(sorted(unknown)[:5])}; expected a Blip2ForImageTextRetrieval checkpoint"
        )
    required = [key for key in ours if key.split(".", 1)[0] in BLIP2_PARTS]
    required += ["query_tokens"] + [key for key in ours if key.startswith(("vision_projection.", "text_projection."))]
    absent = sorted(key for key in required if key not in mapped)
    if absent:
        raise ConversionError(
            f"{name} is not a BLIP-2 retrieval checkpoint: it lacks {len(absent)} tensors, e.g. "
            f"{', '.join(absent[:5])}"
        )
    return mapped, {"renamed_keys": renamed, "dropped_keys": sorted(dropped)}


def convert_blip2(
    model_class, path_or_id: str | os.PathLike, *, revision=None, token=None, **overrides
) -> tuple[torch.nn.Module, dict]:
    """Build `model_class` (FashionBlip2Model) from a BLIP-2 retrieval checkpoint; returns the model (in eval mode)
    and the loading info (`renamed_keys`, `dropped_keys`, `missing_keys`: the new parts that start fresh)."""
    name = str(path_or_id)
    folder = resolve_checkpoint(path_or_id, revision=revision, token=token)
    config = config_from_blip2(folder, name, overrides)
    blip2_state = read_safetensors(folder, name)
    model = model_class(config)
    state, info = map_blip2_state(blip2_state, model, name)
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as error:  # shape mismatch: the overrides changed the architecture
        raise ConversionError(f"{name}: weights do not fit the config: {' '.join(str(error).split())}") from None
    if unexpected:
        raise ConversionError(f"{name}: unexpected tensors {sorted(unexpected)[:5]}")
    info["missing_keys"] = sorted(missing)
    model.config.name_or_path = name
    model.eval()
    return model, info


__all__ = ["ConversionError", "convert_blip2"]
