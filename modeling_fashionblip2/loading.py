"""Loading a retrieval model for evaluation, training and the app, without running code from the model folder.

Policy:
- a folder or Hub id whose `config.json` has `model_type: fashionblip2` loads through the installed
  `FashionBlip2Model` / `FashionBlip2Processor`; the folder's `.py` files are never imported;
- anything else loads through `AutoModel` / `AutoProcessor`, and code shipped with it (an `auto_map`) runs only
  with `trust_remote_code=True` (the `--trust-remote-code` flag of the command lines);
- every failure is one `ModelLoadError` line naming the path: missing folder or id, a truncated or corrupt
  `model.safetensors`, a model without `get_query_embeddings` / `get_candidate_embeddings`.

Not part of the remote code (it uses `facap_io`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from facap_io.errors import FacapError, first_line

MODEL_TYPE = "fashionblip2"
CONFIG_NAME = "config.json"
# Files whose `auto_map` makes transformers import code from the model folder.
AUTO_MAP_FILES = (CONFIG_NAME, "processor_config.json", "preprocessor_config.json", "tokenizer_config.json")
RETRIEVAL_METHODS = ("get_query_embeddings", "get_candidate_embeddings")


class ModelLoadError(FacapError):
    """A model folder or Hub id that cannot be loaded (missing, corrupt, untrusted code, wrong kind of model)."""


def load_pretrained(path_or_id: str | os.PathLike, *, trust_remote_code: bool = False):
    """`(model, processor)` for a saved folder or Hub id, the model in eval mode; see the module policy."""
    name = str(path_or_id)
    folder = _local_folder(name)
    config = _read_json(folder / CONFIG_NAME, name, required=True)
    _check_weights(folder, name)
    if config.get("model_type") == MODEL_TYPE:
        model, processor = _load_installed(folder, name)
    else:
        if not trust_remote_code:
            _refuse_folder_code(folder, name)
        model, processor = _load_auto(folder, name, trust_remote_code)
    return model.eval(), processor


def _check_retrieval_methods(model, name: str) -> None:
    missing = [method for method in RETRIEVAL_METHODS if not callable(getattr(model, method, None))]
    if missing:
        raise ModelLoadError(
            f"{name}: {type(model).__name__} has no {' / '.join(missing)}; expected a composed-retrieval model"
        )


def _local_folder(name: str) -> Path:
    """`name` as a folder: a local directory, else the Hub snapshot of that id (config, weights, processor)."""
    if os.path.isdir(name):
        return Path(name)
    if os.path.exists(name):
        raise ModelLoadError(f"{name} is a file; expected a model folder or a Hub id")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, HfHubHTTPError

    try:
        return Path(snapshot_download(name, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model", "*.py"]))
    except (HFValidationError, HfHubHTTPError, OSError) as error:
        reason = first_line(error)
        raise ModelLoadError(f"{name}: no such model folder, and not a downloadable Hub id ({reason})") from None


def _read_json(path: Path, name: str, *, required: bool) -> dict:
    if not path.is_file():
        if required:
            raise ModelLoadError(f"{name} has no {path.name}; expected a saved model folder")
        return {}
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelLoadError(f"{name}: {path.name} is not valid JSON ({error})") from None
    if not isinstance(value, dict):
        raise ModelLoadError(f"{name}: {path.name} holds a {type(value).__name__}, not an object")
    return value


def _check_weights(folder: Path, name: str) -> None:
    """Open every safetensors file's header: a truncated or overwritten file fails here, before any model is built.
    Only safetensors weights are ever loaded (never pickle)."""
    from safetensors import SafetensorError, safe_open

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ModelLoadError(f"{name} has no .safetensors weights (pickle weights are never loaded)")
    for path in files:
        try:
            with safe_open(str(path), framework="pt") as handle:
                handle.keys()
        except (SafetensorError, OSError) as error:
            raise ModelLoadError(f"{name}: {path.name} is truncated or corrupt ({error})") from None


def _refuse_folder_code(folder: Path, name: str) -> None:
    for file_name in AUTO_MAP_FILES:
        if _read_json(folder / file_name, name, required=False).get("auto_map"):
            raise ModelLoadError(
                f"{name} ships its own code ({file_name} has an auto_map) and is not a FashionBLIP-2 folder; "
                "pass --trust-remote-code (trust_remote_code=True) to run it"
            )


def _load_installed(folder: Path, name: str):
    from .modeling_fashionblip2 import FashionBlip2Model
    from .processing_fashionblip2 import FashionBlip2Processor

    try:
        return FashionBlip2Model.from_pretrained(folder), FashionBlip2Processor.from_pretrained(folder)
    except (OSError, ValueError, RuntimeError, KeyError, TypeError) as error:
        raise ModelLoadError(f"{name}: cannot load the FashionBLIP-2 model ({_one_line(error)})") from None


def _load_auto(folder: Path, name: str, trust_remote_code: bool):
    from transformers import AutoModel, AutoProcessor

    errors = (OSError, ValueError, RuntimeError, KeyError, TypeError, ImportError)
    try:
        model = AutoModel.from_pretrained(folder, trust_remote_code=trust_remote_code)
    except errors as error:
        raise ModelLoadError(f"{name}: cannot load the model ({_one_line(error)})") from None
    _check_retrieval_methods(model, name)
    try:
        processor = AutoProcessor.from_pretrained(folder, trust_remote_code=trust_remote_code)
    except errors as error:
        raise ModelLoadError(f"{name}: cannot load the processor ({_one_line(error)})") from None
    return model, processor


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())[:500] or type(error).__name__


__all__ = ["ModelLoadError", "load_pretrained"]
