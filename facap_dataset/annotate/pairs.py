"""Pair mining: for each reference image, targets of the same category that look similar but are not
near-duplicates, from the embeddings of any image model.

The model is a saved FashionBLIP-2 folder (its `get_candidate_embeddings`) or any CLIP-like model
(`get_image_features`). No code from the model folder runs unless the caller trusts it: a FashionBLIP-2
folder loads through the installed `modeling_fashionblip2` classes, anything else through transformers'
Auto classes, with `trust_remote_code` only when asked for.
Selection is deterministic for a seed: references are visited in a seeded order and each takes up to
`pairs_per_image` targets at random among its `top_k` most similar images inside the similarity band,
while no image appears in more than `max_uses` pairs (either role).
"""

from __future__ import annotations

import importlib
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from facap_io import write_json

from ..errors import DataError
from ..images import load_rgb
from .backends import BackendError
from .sources import PAIRS_FORMAT


@dataclass(frozen=True)
class MiningOptions:
    min_similarity: float = 0.5
    max_similarity: float = 0.95
    top_k: int = 20
    pairs_per_image: int = 1
    max_uses: int = 3
    seed: int = 0

    def __post_init__(self) -> None:
        if not -1.0 <= self.min_similarity < self.max_similarity <= 1.0:
            raise DataError(
                f"need -1 <= min_similarity < max_similarity <= 1, got {self.min_similarity} and {self.max_similarity}"
            )
        for name in ("top_k", "pairs_per_image", "max_uses"):
            if getattr(self, name) < 1:
                raise DataError(f"{name} must be >= 1, got {getattr(self, name)}")


@dataclass(frozen=True)
class MinedPair:
    candidate: str
    target: str
    similarity: float


# ------------------------------------------------------------------------------------------- embeddings
FASHIONBLIP2_MODEL_TYPE = "fashionblip2"
# The package whose classes load a FashionBLIP-2 folder without running the folder's copy of its code.
FASHIONBLIP2_PACKAGE = "modeling_fashionblip2"


def load_image_model(name_or_path: str, device: str | torch.device = "cpu", *, trust_remote_code: bool = False,
                     ) -> tuple[Any, Any]:
    """Model and image processor. A folder or repo that ships its own code (`auto_map`) is refused unless
    `trust_remote_code`; a model that cannot be loaded (e.g. an id not cached offline) is a BackendError."""
    settings = _config_dict(name_or_path)
    if settings.get("model_type") == FASHIONBLIP2_MODEL_TYPE:
        model, processor = _load_fashionblip2(name_or_path, trust_remote_code)
    else:
        auto_map = settings.get("auto_map")
        if auto_map and not trust_remote_code:
            raise BackendError(
                f"model {name_or_path!r} ships its own code (auto_map: {', '.join(sorted(auto_map))}), which is not "
                "run without consent: pass --trust-remote-code if you trust it"
            )
        model, processor = _load_auto(name_or_path, trust_remote_code)
    if not (hasattr(model, "get_candidate_embeddings") or hasattr(model, "get_image_features")):
        raise BackendError(
            f"model {name_or_path!r} ({type(model).__name__}) has neither get_candidate_embeddings nor "
            "get_image_features"
        )
    return model.to(device).eval(), processor


def _config_dict(name_or_path: str) -> dict[str, Any]:
    """The model's config.json as a dict: reading it runs no code."""
    from transformers import PretrainedConfig

    try:
        settings, _ = PretrainedConfig.get_config_dict(name_or_path)
    except (OSError, ValueError) as error:
        raise BackendError(f"cannot load image model {name_or_path!r} (offline?): {error}") from error
    return settings


def _load_fashionblip2(name_or_path: str, trust_remote_code: bool) -> tuple[Any, Any]:
    try:
        # By name, not a static import: the dataset package does not depend on the model package. When that
        # package is installed, its classes load the folder and the folder's own copy of the code never runs.
        package = importlib.import_module(FASHIONBLIP2_PACKAGE)
    except ImportError:
        if not trust_remote_code:
            raise BackendError(
                f"model {name_or_path!r} is a FashionBLIP-2 folder and the {FASHIONBLIP2_PACKAGE} package is not "
                "installed: install it, or pass --trust-remote-code to run the folder's own code"
            ) from None
        return _load_auto(name_or_path, trust_remote_code=trust_remote_code)  # the user passed the flag
    try:
        return (package.FashionBlip2Model.from_pretrained(name_or_path),
                package.FashionBlip2Processor.from_pretrained(name_or_path))
    except (OSError, ValueError, KeyError) as error:
        raise BackendError(f"cannot load FashionBLIP-2 model {name_or_path!r}: {error}") from error


def _load_auto(name_or_path: str, trust_remote_code: bool) -> tuple[Any, Any]:
    from transformers import AutoImageProcessor, AutoModel, AutoProcessor

    try:
        model = AutoModel.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError) as error:
        raise BackendError(f"cannot load image model {name_or_path!r} (offline?): {error}") from error
    try:
        processor = AutoProcessor.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError, TypeError):
        try:
            processor = AutoImageProcessor.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
        except (OSError, ValueError, KeyError) as error:
            raise BackendError(f"cannot load an image processor for {name_or_path!r}: {error}") from error
    return model, processor


@torch.inference_mode()
def image_embeddings(model: Any, processor: Any, images: list) -> torch.Tensor:
    """Unit-norm embeddings [B, D] of PIL images."""
    pixel_values = processor(images=images, return_tensors="pt")["pixel_values"]
    pixel_values = pixel_values.to(model.device, dtype=model.dtype)
    if hasattr(model, "get_candidate_embeddings"):
        output = model.get_candidate_embeddings(pixel_values)
    else:
        output = model.get_image_features(pixel_values=pixel_values)
    if not isinstance(output, torch.Tensor):
        # transformers 5 returns a model output whose pooler_output holds the projected features.
        output = output.pooler_output
    if output.ndim == 3:
        # Per-query-token embeddings (FashionBLIP-2 with matching="max"): pool tokens into one vector.
        output = output.mean(dim=1)
    return torch.nn.functional.normalize(output.float(), dim=-1)


def embed_source(source: Any, model: Any, processor: Any, *, batch_size: int = 32, progress: bool = True,
                 ) -> tuple[list[str], torch.Tensor, dict[str, str]]:
    """Embeddings of every image of `source`; images that do not decode are returned as {id: reason}."""
    ids, chunks, skipped = [], [], {}
    all_ids = source.ids()
    for start in tqdm(range(0, len(all_ids), batch_size), desc="embed", unit="batch", disable=not progress):
        batch_ids, images = [], []
        for image_id in all_ids[start : start + batch_size]:
            try:
                images.append(load_rgb(source.read(image_id), name=image_id))
                batch_ids.append(image_id)
            except DataError as error:
                skipped[image_id] = str(error)
        if images:
            chunks.append(image_embeddings(model, processor, images).cpu())
            ids.extend(batch_ids)
    if len(ids) < 2:
        raise DataError(f"pair mining needs at least 2 decodable images, found {len(ids)}")
    return ids, torch.cat(chunks), skipped


# ------------------------------------------------------------------------------------------------ mining
def band_neighbours(embeddings: torch.Tensor, options: MiningOptions, block: int = 1024,
                    ) -> list[list[tuple[int, float]]]:
    """For each image, up to top_k other images with similarity in [min, max], most similar first.

    Computed in row blocks so memory stays O(block * N) on large catalogues."""
    count = embeddings.shape[0]
    k = min(options.top_k, count - 1)
    neighbours: list[list[tuple[int, float]]] = []
    for start in range(0, count, block):
        sims = embeddings[start : start + block] @ embeddings.T
        rows = torch.arange(sims.shape[0])
        sims[rows, rows + start] = float("-inf")
        out_of_band = (sims < options.min_similarity) | (sims > options.max_similarity)
        sims = sims.masked_fill(out_of_band, float("-inf"))
        values, indices = sims.topk(k, dim=1)
        for row_values, row_indices in zip(values.tolist(), indices.tolist()):
            neighbours.append([(i, v) for i, v in zip(row_indices, row_values) if v != float("-inf")])
    return neighbours


def select_pairs(ids: list[str], neighbours: list[list[tuple[int, float]]], options: MiningOptions,
                 ) -> list[MinedPair]:
    rng = random.Random(options.seed)
    order = list(range(len(ids)))
    rng.shuffle(order)
    uses = [0] * len(ids)
    chosen: set[tuple[int, int]] = set()
    pairs = []
    for reference in order:
        candidates = neighbours[reference][:]
        rng.shuffle(candidates)
        taken = 0
        for target, similarity in candidates:
            if taken == options.pairs_per_image or uses[reference] >= options.max_uses:
                break
            if uses[target] >= options.max_uses or (reference, target) in chosen:
                continue
            chosen.add((reference, target))
            uses[reference] += 1
            uses[target] += 1
            taken += 1
            pairs.append(MinedPair(ids[reference], ids[target], round(similarity, 6)))
    return pairs


def mine_pairs(source: Any, model_name: str, options: MiningOptions, *, batch_size: int = 32,
               device: str = "cpu", progress: bool = True, trust_remote_code: bool = False,
               ) -> tuple[list[MinedPair], dict[str, str]]:
    """Mined pairs, and the images skipped because they do not decode ({id: reason})."""
    model, processor = load_image_model(model_name, device, trust_remote_code=trust_remote_code)
    ids, embeddings, skipped = embed_source(source, model, processor, batch_size=batch_size, progress=progress)
    return select_pairs(ids, band_neighbours(embeddings, options), options), skipped


def write_pairs(path: str | Path, pairs: list[MinedPair], *, category: str, split: str, source: str,
                model: str, options: MiningOptions, skipped: dict[str, str]) -> Path:
    return write_json(path, {
        "format": PAIRS_FORMAT,
        "category": category,
        "split": split,
        "source": source,
        "model": model,
        "options": asdict(options),
        "skipped_images": skipped,
        "pairs": [asdict(pair) for pair in pairs],
    })
