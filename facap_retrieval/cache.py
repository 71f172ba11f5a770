"""Fingerprints of a model and of a gallery, and the gallery-embedding cache keyed by them.

A cache entry is an embedding folder (`facap_retrieval.index.save_embeddings`) named by a hash of the model fingerprint
(weights, config, image processing), the gallery fingerprint (ids and image bytes) and the storage
precision. Any change to one of them gives a different key, so a stale entry is never read.

An entry also records the sha256 of its embedding bytes: an entry whose files were truncated, garbled or
replaced by other valid vectors is refused on read (`CacheEntryError`), never used.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Sequence

import datasets
import torch

from facap_io.errors import first_line
from facap_retrieval.index import load_embeddings, save_embeddings
from facap_retrieval.ranking import RetrievalError

# Config keys that name or version a model without changing what it computes.
_IDENTITY_ONLY_KEYS = ("_name_or_path", "transformers_version", "_commit_hash")
CACHE_FORMAT = "facap-gallery-v2"  # v2: the entry records the sha256 of its embeddings


def model_fingerprint(model: torch.nn.Module, processor) -> str:
    """sha256 of the weights and buffers, the config and the image processing settings."""
    digest = hashlib.sha256()
    config = {k: v for k, v in model.config.to_dict().items() if k not in _IDENTITY_ONLY_KEYS}
    digest.update(json.dumps(config, sort_keys=True, default=str).encode())
    image_processor = getattr(processor, "image_processor", None)
    if image_processor is not None:
        digest.update(json.dumps(image_processor.to_dict(), sort_keys=True, default=str).encode())
    digest.update(repr(getattr(processor, "target_pad_ratio", None)).encode())
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def gallery_fingerprint(gallery: datasets.Dataset, id_column: str = "image_id", image_column: str = "image") -> str:
    """sha256 of the gallery's ids and image bytes, read from Arrow without decoding any image."""
    digest = hashlib.sha256()
    table = gallery.with_format("arrow")
    for batch in table.iter(batch_size=64):  # bounded memory: a batch of image bytes at a time
        for image_id, image in zip(batch[id_column].to_pylist(), batch[image_column].to_pylist()):
            digest.update(f"{len(image_id)}:{image_id}".encode())
            data = (image or {}).get("bytes") or b""
            digest.update(len(data).to_bytes(8, "little"))
            digest.update(data)
    return digest.hexdigest()


def cache_key(model_fp: str, gallery_fp: str, precision: str) -> str:
    return hashlib.sha256(f"{CACHE_FORMAT}:{model_fp}:{gallery_fp}:{precision}".encode()).hexdigest()[:40]


class CacheEntryError(RetrievalError):
    """A cache entry that cannot be trusted: unreadable, truncated, or not the embeddings it was written with."""


def embeddings_sha256(embeddings: torch.Tensor) -> str:
    """sha256 of the tensor's dtype, shape and raw bytes."""
    tensor = embeddings.detach().cpu().contiguous()
    digest = hashlib.sha256(f"{tensor.dtype}:{tuple(tensor.shape)}".encode())
    digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def load_cached_gallery(cache_dir: str | os.PathLike, key: str, ids: Sequence[str]) -> torch.Tensor | None:
    """The cached embeddings for `key`, or None when there is no entry; CacheEntryError (naming the entry)
    when the entry cannot be read or its ids, key or embedding checksum do not match."""
    entry = Path(cache_dir) / key
    if not entry.exists():
        return None
    try:
        embeddings, cached_ids, metadata = load_embeddings(entry)
    except Exception as error:  # noqa: BLE001 - safetensors, JSON and OS errors all mean "unreadable entry"
        reason = first_line(error)
        raise CacheEntryError(f"gallery cache entry {entry} cannot be read: {reason}") from None
    if metadata.get("cache_key") != key or cached_ids != list(ids):
        raise CacheEntryError(f"gallery cache entry {entry} does not match its key")
    if metadata.get("embeddings_sha256") != embeddings_sha256(embeddings):
        raise CacheEntryError(f"gallery cache entry {entry}: the embeddings do not match their recorded sha256")
    return embeddings


def save_cached_gallery(cache_dir: str | os.PathLike, key: str, embeddings: torch.Tensor, ids: Sequence[str]) -> Path:
    """Write (or replace) the entry `key`: the embeddings, their ids and their sha256."""
    metadata = {"cache_key": key, "format": CACHE_FORMAT, "embeddings_sha256": embeddings_sha256(embeddings)}
    return save_embeddings(Path(cache_dir) / key, embeddings, ids, metadata)
