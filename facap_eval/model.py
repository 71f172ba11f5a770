"""Loading a model for evaluation and resolving the device it runs on."""

from __future__ import annotations

import contextlib
import os
from typing import Iterator

import torch

from facap_io.errors import first_line

from .errors import EvalError

REQUIRED_METHODS = ("get_query_embeddings", "get_candidate_embeddings")


def load_model_and_processor(
    path_or_id: str | os.PathLike, device: str | torch.device | None = None, trust_remote_code: bool = False
):
    """A saved FashionBLIP-2 (or compatible) model and its processor, in eval mode on `device`.

    FashionBLIP-2 folders load through the installed classes; code shipped inside a folder (its `auto_map`)
    runs only with `trust_remote_code=True`.
    """
    import modeling_fashionblip2  # noqa: F401  (registers the Auto classes for model_type="fashionblip2")
    from transformers import AutoModel, AutoProcessor

    hint = "" if trust_remote_code else " (a folder that ships its own code needs --trust-remote-code)"
    try:
        model = AutoModel.from_pretrained(path_or_id, trust_remote_code=trust_remote_code)
    except Exception as error:  # noqa: BLE001 - OS, config, safetensors (a truncated file) errors: one line each
        raise EvalError(f"cannot load a model from {path_or_id!s}: {first_line(error)}{hint}") from None
    check_compatible(model, str(path_or_id))
    try:
        processor = AutoProcessor.from_pretrained(path_or_id, trust_remote_code=trust_remote_code)
    except Exception as error:  # noqa: BLE001 - as for the model
        raise EvalError(f"cannot load the processor of {path_or_id!s}: {first_line(error)}{hint}") from None
    return model.to(resolve_device(device)).eval(), processor


def check_compatible(model, name: str) -> None:
    """Raise EvalError naming `name` when `model` lacks the query/candidate embedding methods."""
    missing = [m for m in REQUIRED_METHODS if not callable(getattr(model, m, None))]
    if missing:
        model_type = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
        raise EvalError(
            f"{name} (model_type={model_type!r}) is not a FashionBLIP-2-compatible model: it lacks {', '.join(missing)}"
        )


def resolve_device(device: str | torch.device | None) -> torch.device:
    """`device` as a torch.device (None: cuda when available, else cpu); EvalError when it cannot be used."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as error:
        raise EvalError(f"{device!r} is not a torch device: {error}") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise EvalError(f"device {device!r} asked for, but CUDA is not available")
    return resolved


def place_model(model, device: str | torch.device | None = None, accelerator=None) -> torch.device:
    """Move `model` to the accelerator's device, or to `device`; with neither it stays where it is."""
    if accelerator is not None:
        target = accelerator.device
    elif device is not None:
        target = resolve_device(device)
    else:
        return next(model.parameters()).device
    model.to(target)
    return target


@contextlib.contextmanager
def evaluation_mode(model) -> Iterator[None]:
    """Eval mode without grad for the block; the model comes back in the train/eval mode it had."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        model.train(was_training)

