"""Gallery embeddings, read from or written to the cache keyed by model and data fingerprints."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import datasets
import torch

from facap_dataset.errors import DataError
from facap_retrieval.cache import (
    CacheEntryError,
    cache_key,
    gallery_fingerprint,
    load_cached_gallery,
    model_fingerprint,
    save_cached_gallery,
)

from .distributed import agree, gather_objects
from .encoding import Encoder
from .model import evaluation_mode, place_model
from .protocol import Runtime

logger = logging.getLogger(__name__)

CACHE_STATES = ("off", "hit", "miss", "rebuilt")  # rebuilt: an untrustworthy entry was encoded again


@dataclass(frozen=True)
class GalleryEmbeddings:
    """The candidate embeddings of one gallery.

    embeddings: `(N, D)` (or `(N, n_q, D)` for `max` matching), row i for `ids[i]`.
    ids: the N gallery image ids, in the gallery's row order.
    fingerprint: sha256 of the gallery's ids and image bytes.
    cache: one of `CACHE_STATES`.
    """

    embeddings: torch.Tensor
    ids: tuple[str, ...]
    fingerprint: str
    cache: str


def gallery_embeddings(
    model,
    processor,
    gallery: datasets.Dataset,
    *,
    name: str = "gallery",
    run: Runtime = Runtime(),
    model_fp: str | None = None,
) -> GalleryEmbeddings | None:
    """Candidate embeddings of a gallery split (`image_id`, `image` columns), through the cache in
    `run.cache_dir` that `evaluate` shares.

    `name` labels progress and messages; `model_fp` is `facap_retrieval.cache.model_fingerprint(model,
    processor)` when the caller has it. With `run.accelerator` of N processes, each encodes a contiguous slice;
    the main process gets the whole gallery and the others get None. The model stays on its device unless
    `run.device` names another (or the accelerator's), and comes back in the train/eval mode it had.
    """
    device = place_model(model, run.device, run.accelerator)
    ids, fingerprint = gallery_ids(gallery, name), gallery_fingerprint(gallery)
    with evaluation_mode(model):
        embedded = embed_gallery(Encoder(model, processor, run, device), gallery, ids, fingerprint, model_fp, name)
    return embedded if run.is_main_process else None


def gallery_ids(gallery: datasets.Dataset, name: str) -> tuple[str, ...]:
    ids = tuple(gallery["image_id"])
    if len(set(ids)) != len(ids):
        duplicate = next(i for i in ids if ids.count(i) > 1)
        raise DataError(f"gallery {name} has duplicate image id {duplicate!r}")
    return ids


def embed_gallery(
    encoder: Encoder, gallery: datasets.Dataset, ids: tuple[str, ...], fingerprint: str, model_fp: str | None, name: str
) -> GalleryEmbeddings:
    """The gallery's embeddings on every process: from the cache when every process reads a valid entry,
    else encoded (sharded) and written to the cache by the main process."""
    run = encoder.run
    if run.cache_dir is None:
        return GalleryEmbeddings(encoder.gallery(gallery, f"{name} gallery"), ids, fingerprint, "off")
    model_fp = model_fp or model_fingerprint(encoder.model, encoder.processor)
    key = cache_key(model_fp, fingerprint, run.precision)
    try:
        cached, state = load_cached_gallery(run.cache_dir, key, ids), "miss"
    except CacheEntryError as error:
        logger.warning("warning: %s; encoding the gallery again", error)
        cached, state = None, "rebuilt"
    if all(gather_objects(run.accelerator, cached is not None)):
        return GalleryEmbeddings(cached.to(encoder.device), ids, fingerprint, "hit")
    embeddings = encoder.gallery(gallery, f"{name} gallery")
    # written once, by the main process; `agree` is also the barrier after which every process may read it
    agree(run.accelerator, lambda: save_cached_gallery(run.cache_dir, key, embeddings, ids) if run.is_main_process else None)
    return GalleryEmbeddings(embeddings, ids, fingerprint, state)
