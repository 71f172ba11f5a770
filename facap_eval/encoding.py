"""Turning gallery images and triplets into embeddings, sharded over the processes of an Accelerate launch.

Gallery: candidate embeddings `(N, D)` (or `(N, n_q, D)` for `max` matching). Queries: `(Q, V, D)` with V
caption orderings per triplet (2 for the `both-orders` join, whose scores are averaged, else 1). Each
process encodes its contiguous slice (`distributed.shard`) and every process gets the whole tensor back.
"""

from __future__ import annotations

import contextlib
import functools
import sys
from dataclasses import dataclass
from typing import Sequence

import datasets
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from facap_dataset.captions import join_captions
from facap_dataset.errors import DataError
from facap_dataset.images import load_rgb
from facap_retrieval.ranking import inner_product

from .distributed import agree, gather_rows, shard
from .protocol import Runtime


@dataclass(frozen=True)
class Encoder:
    """A model, its processor and how to run them: `device` is where the model already is."""

    model: torch.nn.Module
    processor: object
    run: Runtime
    device: torch.device

    def gallery(self, gallery: datasets.Dataset, description: str) -> torch.Tensor:
        """Candidate embeddings of every gallery row, in row order: `(N, D)` or `(N, n_q, D)`."""
        gallery = gallery.select_columns(["image_id", "image"]).cast_column("image", datasets.Image(decode=False))
        collate = functools.partial(_collate_gallery, self.processor)
        return self._encode(gallery, collate, self._embed_gallery, description)

    def queries(self, triplets: datasets.Dataset, mode: str, caption_join: str, description: str) -> torch.Tensor:
        """Query embeddings `(Q, V, D)` of every triplet, in row order."""
        triplets = triplets.select_columns(["reference_id", "captions", "reference_image"]).cast_column(
            "reference_image", datasets.Image(decode=False)
        )
        collate = functools.partial(_collate_queries, self.processor, caption_join)
        embed = functools.partial(_embed_queries, self.model, mode)
        return self._encode(triplets, collate, lambda batch: embed(*self._to_device(batch)), description)

    def _embed_gallery(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model.get_candidate_embeddings(pixel_values.to(self.device))

    def _to_device(self, batch):
        pixel_values, input_ids, attention_mask, variants = batch
        return pixel_values.to(self.device), input_ids.to(self.device), attention_mask.to(self.device), variants

    def _encode(self, rows: datasets.Dataset, collate, embed, description: str) -> torch.Tensor:
        mine = shard(len(rows), self.run.accelerator)
        encoded = agree(self.run.accelerator, lambda: self._encode_rows(rows, mine, collate, embed, description))
        return gather_rows(self.run.accelerator, encoded)

    def _encode_rows(self, rows: datasets.Dataset, mine: range, collate, embed, description: str) -> torch.Tensor | None:
        """The rows `mine` of `rows`, encoded; None when there are none."""
        if len(mine) == 0:
            return None
        loader = DataLoader(rows.select(mine), batch_size=self.run.batch_size, num_workers=self.run.num_workers, collate_fn=collate)
        parts = []
        for batch in tqdm(loader, desc=description, disable=not self.run.progress, file=sys.stderr, leave=False):
            with self._autocast():
                parts.append(embed(batch).to(self.run.dtype))
        return torch.cat(parts)

    def _autocast(self):
        # Mixed precision only on accelerators; on CPU the precision is the embeddings' storage type.
        if self.device.type == "cpu" or self.run.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.run.dtype)


def _decode(image: dict | None, name: str):
    if image is None or image.get("bytes") is None:
        raise DataError(f"image {name} has no embedded bytes (the dataset must embed its images)")
    return load_rgb(image["bytes"], name=name)


def _collate_gallery(processor, rows: list[dict]) -> torch.Tensor:
    images = [_decode(row["image"], row["image_id"]) for row in rows]
    return processor(images=images, return_tensors="pt")["pixel_values"]


def _collate_queries(processor, caption_join: str, rows: list[dict]):
    texts = [query_texts(row["captions"], caption_join, row["reference_id"]) for row in rows]
    images = [_decode(row["reference_image"], row["reference_id"]) for row in rows]
    pixel_values = processor(images=images, return_tensors="pt")["pixel_values"]
    tokens = processor(text=[t for variants in texts for t in variants], return_tensors="pt")
    return pixel_values, tokens["input_ids"], tokens["attention_mask"], len(texts[0])


def query_texts(captions: Sequence[str], rule: str, name: str) -> list[str]:
    """The query text(s) of one triplet under the caption-join `rule` (two orderings for `both-orders`)."""
    try:
        joined = join_captions(captions, rule)
    except ValueError as error:
        raise DataError(f"triplet with reference {name}: {error}") from None
    return joined if isinstance(joined, list) else [joined]


def _embed_queries(model, mode, pixel_values, input_ids, attention_mask, variants) -> torch.Tensor:
    """`(B, V, D)` query embeddings for the model or one of the two trivial baselines."""
    if mode == "image-only":  # the reference image's own candidate embedding: ignores the text
        return model.get_candidate_embeddings(pixel_values)[:, None]
    if mode == "text-only":  # the model's query branch with the reference replaced by the mean image
        pixel_values = torch.zeros_like(pixel_values)
    embeddings = model.get_query_embeddings(pixel_values.repeat_interleave(variants, dim=0), input_ids, attention_mask)
    return embeddings.reshape(len(pixel_values), variants, *embeddings.shape[1:])


def score_fn(model, gallery: torch.Tensor):
    """Scores `(q, N)` of `(q, V, ...)` queries against `gallery`: the mean over the V caption orderings.

    `(N, D)` galleries score by inner product, `(N, n_q, D)` ones through `model.score` (`max` matching)."""
    base = inner_product if gallery.ndim == 2 else model.score

    def score(queries: torch.Tensor, gallery: torch.Tensor) -> torch.Tensor:
        scores = base(queries[:, 0], gallery)
        for variant in range(1, queries.shape[1]):
            scores += base(queries[:, variant], gallery)
        return scores / queries.shape[1] if queries.shape[1] > 1 else scores

    return score
