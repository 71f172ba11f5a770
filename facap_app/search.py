"""The search engine: a query (reference image + modification text) against the indexed catalogues."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from facap_dataset.images import load_rgb

from .catalogue import Catalogue

# References are shrunk to this longest side before anything else: the processor resizes to the model's input
# size anyway, and a 50-megapixel photo would otherwise cost seconds and hundreds of MB per query.
MAX_QUERY_SIDE = 1024


@dataclass(frozen=True)
class Hits:
    """One query's results: gallery rows best first, their scores, and how long the query took."""

    rows: list[int]
    scores: list[float]
    image_only: bool
    seconds: float


def read_reference(path: str | os.PathLike, name: str | None = None) -> tuple[Image.Image, str]:
    """Decode a reference image file into RGB, shrinking huge ones; returns it and a note (empty unless shrunk).

    A file that is not an image, or a decompression bomb, raises DataError naming `name` (default: the file name).
    """
    image = load_rgb(Path(path), name=name or Path(path).name)
    if max(image.size) <= MAX_QUERY_SIDE:
        return image, ""
    original = image.size
    image.thumbnail((MAX_QUERY_SIDE, MAX_QUERY_SIDE), Image.Resampling.LANCZOS)
    return image, f"Uploaded image downscaled from {original[0]}×{original[1]} to {image.size[0]}×{image.size[1]}."


class SearchEngine:
    """The model, its processor and the indexed catalogues (category -> Catalogue); one query at a time."""

    def __init__(self, model, processor, device: torch.device, catalogues: dict[str, Catalogue], files_dir: Path):
        self.model = model
        self.processor = processor
        self.device = device
        self.catalogues = catalogues
        self.files_dir = files_dir  # catalogue and example images served to the browser

    @torch.inference_mode()
    def encode_query(self, image: Image.Image, text: str) -> tuple[torch.Tensor, bool]:
        """Query embedding `(1, D)`; an empty text gives the reference's own candidate embedding."""
        text = text.strip()
        if not text:
            inputs = self.processor(images=[image], return_tensors="pt")
            pixel_values = inputs["pixel_values"].to(self.device)
            return self.model.get_candidate_embeddings(pixel_values), True
        inputs = self.processor(images=[image], text=[text], return_tensors="pt")
        inputs = {name: tensor.to(self.device) for name, tensor in inputs.items()}
        embeddings = self.model.get_query_embeddings(
            pixel_values=inputs["pixel_values"],
            input_ids=inputs["input_ids"],
            attention_mask=inputs["attention_mask"],
        )
        return embeddings, False

    def search(self, image: Image.Image, text: str, category: str, k: int) -> Hits:
        catalogue = self.catalogues[category]
        k = max(1, min(int(k), len(catalogue.index)))
        start = time.perf_counter()
        query, image_only = self.encode_query(image, text)
        found = catalogue.index.search(query, k)
        seconds = time.perf_counter() - start
        # An approximate backend may return fewer than k items (id None): they are dropped, not shown.
        hits = [(catalogue.rows[i], score) for i, score in zip(found.ids[0], found.scores[0].tolist()) if i is not None]
        return Hits([row for row, _ in hits], [score for _, score in hits], image_only, seconds)
