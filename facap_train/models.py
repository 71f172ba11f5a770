"""The model a run starts from: a preset, a saved FashionBLIP-2 folder, a BLIP-2 checkpoint, or a trained run."""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path
from typing import Any, Sequence

from facap_io.errors import first_line
import modeling_fashionblip2
from modeling_fashionblip2 import PRESETS, FashionBlip2Config, FashionBlip2Model, FashionBlip2Processor

from .errors import TrainingError


def load_model_and_processor(args: argparse.Namespace, texts: Sequence[str]):
    """--model PRESET | saved FashionBLIP-2 folder | BLIP-2 checkpoint, or --init-from a trained model/run."""
    overrides = args.model_overrides
    if args.init_from is not None:
        model, processor = _load_saved(resolve_init_from(args.init_from), overrides)
    elif args.model in PRESETS:
        model, processor = _from_preset(args.model, texts, overrides)
    elif is_fashionblip2_folder(Path(args.model)):
        model, processor = _load_saved(Path(args.model), overrides)
    else:
        model, processor = _from_blip2(args.model, overrides)
    if args.targetpad is not None:
        # A processor attribute, saved with it: evaluation and the app pad exactly as training did.
        processor.target_pad_ratio = args.targetpad
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    return model, processor


def _from_preset(name: str, texts: Sequence[str], overrides: dict[str, Any]):
    """A random-init model; its tokenizer is built offline from the training texts' words."""
    config = _model_config(FashionBlip2Config.from_preset, name, overrides)
    processor = FashionBlip2Processor.from_texts(
        texts, image_size=config.vision_config.image_size, max_text_length=config.max_text_length
    )
    if len(processor.tokenizer) > config.qformer_config.vocab_size:
        qformer = {**overrides.get("qformer_config", {}), "vocab_size": len(processor.tokenizer)}
        config = _model_config(FashionBlip2Config.from_preset, name, {**overrides, "qformer_config": qformer})
    return FashionBlip2Model(config), processor


def _model_config(factory, name: str, overrides: dict[str, Any]):
    try:
        config = factory(name, **copy.deepcopy(overrides))
    except (ValueError, TypeError) as error:
        raise TrainingError(f"--model-overrides {json.dumps(overrides)}: {error}") from error
    unknown = sorted(set(overrides) - set(type(config)().to_dict()))  # a typo would become a stray attribute
    if unknown:
        raise TrainingError(f"--model-overrides: {', '.join(unknown)} is not a FashionBLIP-2 config field")
    return config


def is_fashionblip2_folder(path: Path) -> bool:
    config_file = path / "config.json"
    try:
        return config_file.is_file() and json.loads(config_file.read_text()).get("model_type") == "fashionblip2"
    except (OSError, ValueError, AttributeError):
        return False


def _conversion_errors() -> tuple[type[BaseException], ...]:
    """The model package's error for a checkpoint that cannot be converted: `ConversionError`, formerly
    (before the model package's rename) `CheckpointError`; whichever the installed package has."""
    names = ("ConversionError", "CheckpointError")
    return tuple(error for name in names if isinstance(error := getattr(modeling_fashionblip2, name, None), type))


def _from_blip2(path_or_id: str, overrides: dict[str, Any]):
    """Convert a BLIP-2 retrieval checkpoint; its own tokenizer and image processor become the processor."""
    try:
        model = FashionBlip2Model.from_blip2(path_or_id, **copy.deepcopy(overrides))
        processor = FashionBlip2Processor.from_blip2(path_or_id, max_text_length=model.config.max_text_length)
    except (OSError, ValueError, *_conversion_errors()) as error:
        raise TrainingError(
            f"--model {path_or_id!r} is neither a preset ({', '.join(PRESETS)}), a saved FashionBLIP-2 folder, "
            f"nor a loadable BLIP-2 retrieval checkpoint: {first_line(error)}"
        ) from error
    return model, processor


def resolve_init_from(path: Path) -> Path:
    """A model folder, or a run folder whose best/ (else final/) is taken."""
    if is_fashionblip2_folder(path):
        return path
    for name in ("best", "final"):
        if is_fashionblip2_folder(path / name):
            return path / name
    raise TrainingError(f"--init-from {path}: neither a saved FashionBLIP-2 folder nor a run folder with best/ or final/")


def _load_saved(path: Path, overrides: dict[str, Any]):
    config = _model_config(FashionBlip2Config.from_pretrained, str(path), overrides)
    try:
        return FashionBlip2Model.from_pretrained(path, config=config), FashionBlip2Processor.from_pretrained(path)
    except OSError as error:
        raise TrainingError(f"cannot load the model in {path}: {first_line(error)}") from None
