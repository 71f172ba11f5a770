"""Inputs and outputs of the pipeline: image sources, pairs files, and FACap / Fashion IQ output files.

Formats: FACap's `image_captions/{cat}_{split}_captions.json` maps an image id to its stage-1
caption and `cir_triplets/{cat}_{split}_triplets.json` lists `{"candidate", "target", "captions": [text]}`;
Fashion IQ's `captions/cap.{cat}.{split}.json` has the same entries. A pairs file is either what
`annotate pairs` writes (an object with metadata and `pairs`) or any FACap / Fashion IQ triplet list.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Protocol

import facap_io

from ..errors import DataError, MissingImageError, SchemaError, UnsafePathError
from ..images import safe_image_path
from ..schema import gallery_config, is_gallery_config

PAIRS_FORMAT = "facap-pairs-v1"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")


# ----------------------------------------------------------------------------------------------- images
class ImageSource(Protocol):
    def ids(self) -> list[str]: ...

    def read(self, image_id: str) -> bytes: ...


class FolderImages:
    """Images under a root folder. An id is a path relative to the root (FACap) or a file stem with one
    of IMAGE_SUFFIXES (Fashion IQ's ASINs: `images/<ASIN>.jpg`)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(f"image folder {self.root} does not exist")

    def ids(self) -> list[str]:
        return sorted(
            path.relative_to(self.root).as_posix()
            for path in self.root.rglob("*")
            if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()
        )

    def path(self, image_id: str) -> Path | None:
        exact = safe_image_path(self.root, image_id)
        if exact.is_file():
            return exact
        for suffix in IMAGE_SUFFIXES:
            candidate = safe_image_path(self.root, image_id + suffix)
            if candidate.is_file():
                return candidate
        return None

    def read(self, image_id: str) -> bytes:
        path = self.path(image_id)
        if path is None:
            raise MissingImageError(f"image {image_id!r} is not in {self.root}")
        try:
            return path.read_bytes()
        except OSError as error:
            raise DataError(f"image {path} cannot be read: {error}") from error

    def missing(self, image_ids: Iterable[str]) -> list[str]:
        return [image_id for image_id in image_ids if self.path(image_id) is None]


class DatasetImages:
    """The gallery images of one config and split of a built dataset folder."""

    def __init__(self, dataset_dir: str | Path, config: str, split: str):
        import datasets

        self.name = f"{dataset_dir} {config}/{split}"
        gallery = config if is_gallery_config(config) else gallery_config(config)
        try:
            table = datasets.load_dataset(str(dataset_dir), gallery, split=split)
        except (FileNotFoundError, ValueError) as error:
            raise DataError(f"cannot load config {gallery!r} split {split!r} from {dataset_dir}: {error}") from error
        table = table.cast_column("image", datasets.Image(decode=False))
        ids = table["image_id"]
        if len(set(ids)) != len(ids):
            raise SchemaError(f"{self.name} repeats image ids")
        self._table = table
        self._row = {image_id: row for row, image_id in enumerate(ids)}

    def ids(self) -> list[str]:
        return list(self._row)

    def read(self, image_id: str) -> bytes:
        row = self._row.get(image_id)
        if row is None:
            raise MissingImageError(f"image {image_id!r} is not in {self.name}")
        data = self._table[row]["image"]["bytes"]
        if data is None:
            raise DataError(f"image {image_id!r} of {self.name} has no embedded bytes")
        return data

    def missing(self, image_ids: Iterable[str]) -> list[str]:
        return [image_id for image_id in image_ids if image_id not in self._row]


def check_known(source: Any, image_ids: Iterable[str], origin: str) -> None:
    """Raise naming the count and the first few ids that `source` does not hold."""
    missing = sorted(set(source.missing(image_ids)))
    if missing:
        shown = ", ".join(repr(i) for i in missing[:5])
        raise MissingImageError(f"{origin} references {len(missing)} unknown image(s), e.g. {shown}")


# ------------------------------------------------------------------------------------------------ pairs
@dataclass(frozen=True)
class Pair:
    candidate: str
    target: str
    original_captions: tuple[str, ...] = ()


@dataclass(frozen=True)
class PairsFile:
    pairs: list[Pair]
    category: str | None
    split: str | None


def read_pairs(path: str | Path) -> PairsFile:
    path = Path(path)
    data = read_json(path)
    category = split = None
    if isinstance(data, dict):
        if data.get("format") != PAIRS_FORMAT or not isinstance(data.get("pairs"), list):
            raise SchemaError(f"{path} is neither a pairs file ({PAIRS_FORMAT}) nor a triplet list")
        category, split, entries = data.get("category"), data.get("split"), data["pairs"]
        # They name output files: a hostile file must not steer a write out of --out.
        category = None if category is None else plain(category, what=f"{path}: category")
        split = None if split is None else plain(split, what=f"{path}: split")
    elif isinstance(data, list):
        entries = data
    else:
        raise SchemaError(f"{path} holds a JSON {type(data).__name__}, not pairs")
    pairs = []
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("candidate"), str):
            raise SchemaError(f"{path} entry {index} has no candidate image id")
        if not isinstance(entry.get("target"), str):
            raise SchemaError(f"{path} entry {index} has no target image id (a Fashion IQ test split?)")
        captions = entry.get("captions", [])
        if not isinstance(captions, list) or not all(isinstance(c, str) for c in captions):
            raise SchemaError(f"{path} entry {index} has captions that are not a list of strings")
        pairs.append(Pair(entry["candidate"], entry["target"], tuple(captions)))
    if not pairs:
        raise SchemaError(f"{path} holds no pairs")
    return PairsFile(pairs, category, split)


def pair_images(pairs: Iterable[Pair]) -> list[str]:
    """Every image the pairs use, each once, in order of first use."""
    return list(dict.fromkeys(image for pair in pairs for image in (pair.candidate, pair.target)))


# ---------------------------------------------------------------------------------------------- outputs
def plain(name: str, *, what: str) -> str:
    """`name` when it can be a file-name component (a category, a split); else UnsafePathError naming it."""
    try:
        return facap_io.plain_name(name, what=what)
    except facap_io.FacapError as error:
        raise UnsafePathError(str(error)) from None


def derived_path(root: str | Path, folder: str, name: str) -> Path:
    """`root/folder/name` for a file name made from data, checked to be a plain name and, symlinks followed,
    to stay inside `root`."""
    plain(name, what="file name")
    try:
        return facap_io.inside(root, folder, name, what="file")
    except facap_io.FacapError as error:
        raise UnsafePathError(str(error)) from None


def captions_path(out: str | Path, category: str, split: str) -> Path:
    return derived_path(out, "image_captions", f"{category}_{split}_captions.json")


def triplets_path(out: str | Path, category: str, split: str) -> Path:
    return derived_path(out, "cir_triplets", f"{category}_{split}_triplets.json")


def fashioniq_captions_path(out: str | Path, category: str, split: str) -> Path:
    return derived_path(out, "captions", f"cap.{category}.{split}.json")


def read_captions(path: str | Path, category: str | None, split: str | None) -> dict[str, str]:
    """A stage-1 caption file, given as the file itself or as the output folder that holds it."""
    path = Path(path)
    if path.is_dir():
        if not category or not split:
            raise DataError(f"{path} is a folder: the category and split are needed to find its caption file")
        path = captions_path(path, category, split)
    data = read_json(path)
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
        raise SchemaError(f"{path} is not a caption file (a JSON object mapping image id to caption)")
    return data


def read_json(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as file:
            return json.load(file)
    except FileNotFoundError:
        raise DataError(f"{path} does not exist") from None
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise SchemaError(f"{path} is not readable JSON: {error}") from None
