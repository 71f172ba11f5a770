"""The model the app serves: the torch device, and loading under the project's remote-code policy
(FashionBLIP-2 folders through the installed classes; other folders' code only with `--trust-remote-code`)."""

from __future__ import annotations

import torch
from PIL import Image

from facap_eval import EvalError, resolve_device
from modeling_fashionblip2 import ModelLoadError, load_pretrained

from .errors import AppError
from .options import DEFAULT_MODEL


def select_device(name: str | None) -> torch.device:
    try:
        return resolve_device(name)
    except EvalError as error:
        raise AppError(f"--device {error}") from None


def load_model(name: str, device: torch.device, *, trust_remote_code: bool = False):
    """`(model, processor)`, the model in eval mode on `device`; one AppError line naming `name` otherwise."""
    try:
        model, processor = load_pretrained(name, trust_remote_code=trust_remote_code)
    except ModelLoadError as error:
        hint = "; `make demo` trains it" if name == DEFAULT_MODEL else ""
        raise AppError(f"model {error}{hint}") from None
    return model.to(device).eval(), processor


@torch.inference_mode()
def embedding_width(model, processor, device: torch.device) -> int:
    """D, the width of the model's candidate embeddings (what an index must hold), from one blank image."""
    pixel_values = processor(images=[Image.new("RGB", (32, 32))], return_tensors="pt")["pixel_values"].to(device)
    return model.get_candidate_embeddings(pixel_values).shape[-1]
