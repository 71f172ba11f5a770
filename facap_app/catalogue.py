"""The catalogues the app searches: one gallery config each (ids, image bytes, CIRIndex), and the example
triplets shown under the search box."""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import datasets
import torch
from PIL import Image

from facap_dataset.captions import join_captions
from facap_dataset.images import load_rgb
from facap_dataset.loading import OpenedDataset
from facap_dataset.schema import GALLERY_SUFFIX, is_gallery_config
from facap_io.atomic import write_file
from facap_io.paths import inside, plain_name
from facap_eval import Runtime, gallery_embeddings
from facap_retrieval.cache import gallery_fingerprint
from facap_retrieval.index import CIRIndex, IndexSource, check_index

from .errors import AppError
from .options import AppOptions


def category_of(config: str) -> str:
    return config[: -len(GALLERY_SUFFIX)]


def gallery_configs(dataset: OpenedDataset, requested: Sequence[str] | None) -> list[str]:
    """The gallery configs to search: `requested` (each checked), else every `*-gallery` config of `dataset`."""
    galleries = [name for name in dataset.configs if is_gallery_config(name)]
    if not galleries:
        raise AppError(f"dataset {dataset.name!r} has no gallery config (*{GALLERY_SUFFIX}); it has {list(dataset.configs)}")
    if requested is None:
        return galleries
    unknown = [name for name in requested if name not in galleries]
    if unknown:
        raise AppError(f"dataset {dataset.name!r} has no gallery config {unknown[0]!r}; choose from {galleries}")
    return list(requested)


@dataclass
class Catalogue:
    """One gallery config: ids, encoded image bytes (decoded only when shown or queried) and its index."""

    config: str
    ids: list[str]
    image_bytes: list[bytes]
    index: CIRIndex
    index_source: str
    files_dir: Path
    rows: dict[str, int] = field(init=False)

    def __post_init__(self):
        self.rows = {image_id: row for row, image_id in enumerate(self.ids)}
        stray = [image_id for image_id in self.index.ids if image_id not in self.rows]
        if stray:
            raise AppError(
                f"the index ({self.index_source}) holds {len(stray)} ids that are not in gallery {self.config}, "
                f"e.g. {stray[0]!r}: it was built for another catalogue"
            )

    @property
    def category(self) -> str:
        return category_of(self.config)

    def image_path(self, row: int) -> str:
        """Path of the image of gallery row `row`, written on first use (the browser is served files)."""
        path = self.files_dir / plain_name(self.config, what="gallery config") / f"{row:07d}.{_image_suffix(self.image_bytes[row])}"
        if not path.exists():
            # Atomic: handlers run in threads, and none may serve a half-written file.
            write_file(path, lambda temporary: Path(temporary).write_bytes(self.image_bytes[row]))
        return str(path)

    def image(self, row: int) -> Image.Image:
        return load_rgb(self.image_bytes[row], name=f"{self.config}/{self.ids[row]}")


def _image_suffix(data: bytes) -> str:
    with Image.open(io.BytesIO(data)) as image:
        return (image.format or "png").lower().replace("jpeg", "jpg")


def load_gallery(dataset: OpenedDataset, config: str, split: str) -> datasets.Dataset:
    gallery = dataset.load_split(config, split)
    if len(gallery) == 0:
        raise AppError(f"gallery {config}/{split} of {dataset.name!r} is empty")
    return gallery


@dataclass(frozen=True)
class ModelInfo:
    """What indexes are checked against: the model's name, its embedding width and (computed on first use,
    since hashing a BLIP-2-sized model's weights costs seconds) its fingerprint."""

    name: str
    width: int
    fingerprint: Callable[[], str]


def build_index(options: AppOptions, model, processor, config: str, gallery: datasets.Dataset, info: ModelInfo) -> tuple[CIRIndex, str]:
    """An exact CIRIndex over the gallery's candidate embeddings, encoded with a progress bar and cached the way
    the evaluation caches them (one `--cache-dir` serves both), recording the model and gallery it was built
    from. Returns the index and where its embeddings came from."""
    run = Runtime(batch_size=options.batch_size, cache_dir=options.cache_dir)
    with torch.inference_mode():
        embedded = gallery_embeddings(model, processor, gallery, name=config, run=run, model_fp=info.fingerprint())
    if embedded.embeddings.ndim != 2:
        raise AppError(
            f"model {options.model!r} gives per-token candidate embeddings (matching='max'); "
            "the demo searches the (N, D) embeddings of a multihead-matching model"
        )
    source = IndexSource(info.fingerprint(), options.model, options.dataset, config, options.split, embedded.fingerprint)
    index = CIRIndex.build(embedded.embeddings.float(), embedded.ids, source=source)
    where = f"read from the cache in {options.cache_dir}" if embedded.cache == "hit" else f"built, cached in {options.cache_dir}"
    return index, where


def load_index(folder: Path, gallery: datasets.Dataset, info: ModelInfo) -> tuple[CIRIndex, str]:
    """A saved CIRIndex folder, with whichever backend it was saved with (exact, FAISS IVF-PQ, ...), refused
    (naming both sides) when its embedding width differs from the model's, or when it records a model or
    gallery fingerprint that differs from the model's or the gallery's. A folder that records none (an
    embedding cache entry, an index from an older version) is checked by width and ids only."""
    try:
        recorded = check_index(folder).source
        index = CIRIndex.load(
            folder,
            expect_dim=info.width,
            expect_model=info.fingerprint() if recorded.model_fingerprint else None,
            expect_gallery=gallery_fingerprint(gallery) if recorded.gallery_fingerprint else None,
            model=info.name,
        )
    except (ValueError, OSError) as error:  # RetrievalError (IndexMismatchError), or a missing optional backend
        raise AppError(f"--index {folder}: {error}") from None
    return index, f"loaded from {folder} ({index.backend})"


def load_catalogue(
    options: AppOptions, dataset: OpenedDataset, model, processor, config: str, index_dir: Path | None,
    info: ModelInfo, files_dir: Path,
) -> Catalogue:  # fmt: skip
    gallery = load_gallery(dataset, config, options.split)
    if index_dir is not None:
        index, source = load_index(index_dir, gallery, info)
    else:
        index, source = build_index(options, model, processor, config, gallery, info)
    images = [item["bytes"] for item in gallery.cast_column("image", datasets.Image(decode=False))["image"]]
    return Catalogue(config, list(gallery["image_id"]), images, index, source, files_dir)


@dataclass(frozen=True)
class Example:
    reference_path: str
    text: str
    category: str
    target_path: str


def _save_png(path: Path, image: Image.Image) -> str:
    write_file(path, lambda temporary: image.convert("RGB").save(temporary, format="PNG"))
    return str(path)


def load_examples(options: AppOptions, dataset: OpenedDataset, categories: Sequence[str], files_dir: Path) -> list[Example]:
    """The first `num_examples` triplets (with a target and captions) of each category that has a triplet config;
    their images are written to `files_dir/examples` for the browser."""
    folder = files_dir / "examples"
    examples: list[Example] = []
    for category in (c for c in categories if c in dataset.configs and options.num_examples > 0):
        triplets = dataset.load_split(category, options.split)
        usable = triplets.filter(
            lambda target, captions: target is not None and any(c.strip() for c in captions),
            input_columns=["target_id", "captions"],
        )
        for number, row in enumerate(usable.select(range(min(options.num_examples, len(usable))))):
            reference = _save_png(inside(folder, f"{plain_name(category)}-{number}-reference.png"), row["reference_image"])
            target = _save_png(inside(folder, f"{plain_name(category)}-{number}-target.png"), row["target_image"])
            examples.append(Example(reference, join_captions(row["captions"]), category, target))
    return examples
