"""The `composed-image-retrieval` pipeline, saved next to the weights (the config's `custom_pipelines` names it):

    retrieve = pipeline("composed-image-retrieval", model=FOLDER_OR_ID, trust_remote_code=True)
    retrieve({"image": reference, "text": "is red with long sleeves"})   # query embedding, shape (D,)
    retrieve(image)                                                      # candidate embedding
    retrieve([{"image": ..., "text": ...}, ...])                         # one result per input
    retrieve(query, gallery=[image, ...], top_k=5)                       # [{"id": index, "score": s}, ...]
    retrieve(query, gallery=index, top_k=5)   # any object with search(query_embeddings, k) -> .ids / .scores

Images are PIL images, paths or URLs. Embeddings are unit-norm CPU tensors (`(n_q, D)` per candidate for
`matching="max"`); scores are the model's `score`.

Remote-code rule: copied next to saved weights and imported without this package, so it imports only torch,
transformers, PIL and the standard library.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from PIL import Image
from transformers import Pipeline
from transformers.image_utils import load_image

PIPELINE_TASK = "composed-image-retrieval"
GALLERY_BATCH_SIZE = 32  # images embedded per forward pass when the gallery is a list of images


@dataclass
class GallerySearch:
    """Top-k of each query: `scores` of shape `(num_queries, k)`, `ids` a list of `k` ids per query."""

    scores: torch.Tensor
    ids: list


class ImageGallery:
    """A list of images embedded once with the pipeline's model; `search` ranks them with `model.score` and
    names each by its position in the list."""

    def __init__(self, pipe: "ComposedImageRetrievalPipeline", images: Sequence):
        if not len(images):
            raise ValueError("gallery is empty")
        self.model = pipe.model
        chunks = []
        for start in range(0, len(images), GALLERY_BATCH_SIZE):
            chunk = images[start : start + GALLERY_BATCH_SIZE]
            batch = [_image(image, f"gallery[{start + offset}]") for offset, image in enumerate(chunk)]
            pixels = pipe.processor(images=batch, return_tensors="pt")["pixel_values"]
            pixels = pixels.to(pipe.device, pipe.model.dtype)
            with torch.no_grad():
                chunks.append(self.model.get_candidate_embeddings(pixels).cpu())
        self.embeddings = torch.cat(chunks)

    def __len__(self) -> int:
        return len(self.embeddings)

    def search(self, query_embeddings: torch.Tensor, k: int) -> GallerySearch:
        """`query_embeddings` of shape `(num_queries, D)` -> the top `k` gallery items of each."""
        if not 1 <= k <= len(self):
            raise ValueError(f"top_k={k} must be between 1 and the gallery size ({len(self)})")
        scores = self.model.score(query_embeddings.to(self.embeddings.dtype), self.embeddings)
        top = scores.topk(k, dim=1)
        return GallerySearch(top.values, top.indices.tolist())


def _image(value, name: str) -> Image.Image:
    if isinstance(value, Image.Image):
        return value.convert("RGB")
    if isinstance(value, str):
        return load_image(value).convert("RGB")
    raise TypeError(f"{name} must be a PIL image, a path or a URL, got {type(value).__name__}")


class ComposedImageRetrievalPipeline(Pipeline):
    """Query embeddings for `{"image", "text"}` inputs, candidate embeddings for bare images, or the top-k of a
    gallery (`gallery=`, `top_k=`)."""

    _load_processor = True
    _load_image_processor = False
    _load_feature_extractor = False
    _load_tokenizer = False

    def _sanitize_parameters(self, gallery=None, top_k=None, **kwargs):
        if kwargs:
            raise TypeError(f"unexpected arguments: {', '.join(sorted(kwargs))}")
        if top_k is not None and gallery is None:
            raise ValueError("top_k needs a gallery (a list of images, or an index with search(queries, k))")
        postprocess = {}
        if gallery is not None:
            searchable = gallery if callable(getattr(gallery, "search", None)) else ImageGallery(self, gallery)
            postprocess = {"gallery": searchable, "top_k": 10 if top_k is None else int(top_k)}
        return {}, {}, postprocess

    def preprocess(self, inputs):
        if isinstance(inputs, Mapping):
            unknown = set(inputs) - {"image", "text"}
            if unknown or "image" not in inputs:
                raise ValueError(
                    f"a query is {{'image': ..., 'text': ...}} (or a bare image); got keys {sorted(inputs)}"
                )
            image = _image(inputs["image"], "image")
            if inputs.get("text") is None:
                return {"pixel_values": self._pixels(image)}
            if not isinstance(inputs["text"], str):
                raise TypeError(f"text must be a string, got {type(inputs['text']).__name__}")
            text = self.processor(text=[inputs["text"]], return_tensors="pt")
            return {"pixel_values": self._pixels(image), "input_ids": text["input_ids"],
                    "attention_mask": text["attention_mask"]}
        return {"pixel_values": self._pixels(_image(inputs, "input"))}

    def _pixels(self, image: Image.Image) -> torch.Tensor:
        return self.processor(images=[image], return_tensors="pt")["pixel_values"].to(self.model.dtype)

    def _forward(self, model_inputs):
        if "input_ids" in model_inputs:
            embeddings = self.model.get_query_embeddings(
                model_inputs["pixel_values"], model_inputs["input_ids"], model_inputs["attention_mask"]
            )
        else:
            embeddings = self.model.get_candidate_embeddings(model_inputs["pixel_values"])
        return {"embeddings": embeddings}

    def postprocess(self, model_outputs, gallery=None, top_k=10):
        embeddings = model_outputs["embeddings"].float()
        if gallery is None:
            return embeddings[0]
        found = gallery.search(embeddings, top_k)
        return [{"id": item, "score": float(score)} for item, score in zip(found.ids[0], found.scores[0].tolist())]


__all__ = ["ComposedImageRetrievalPipeline", "GallerySearch", "ImageGallery", "PIPELINE_TASK"]
