"""Readers for the raw releases of DESIGN.md 3.1, each checking the structure it relies on.

Fashion IQ (and enhFashionIQ, which keeps its format):
  `captions/cap.{cat}.{split}.json`: a JSON list of `{"candidate": ASIN, "target": ASIN, "captions": [str, ...]}`
  (test entries have no `target`); `image_splits/split.{cat}.{split}.json`: a JSON list of ASINs.
FACap:
  `cir_triplets/{cat}_train_triplets.json`: a JSON list of `{"candidate": path, "target": path, "captions": [str]}`;
  `image_captions/{cat}_train_captions.json`: a JSON object mapping an image path to its stage-1 caption.

Captions are kept exactly as released (empty ones and leading spaces included): the join rule of
`facap_dataset.captions` decides how they become query text, not the reader.

Images (`prepare_images`): each file is checked to stay inside its image root, fully decoded once, and
embedded as released when it is an 8-bit RGB JPEG, else converted to RGB and re-encoded.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from .errors import DataError, SchemaError, UnsafePathError
from .images import encode_jpeg, load_rgb, safe_image_path

# Dataset split name -> the name Fashion IQ's files use.
FASHIONIQ_FILE_SPLITS = {"train": "train", "validation": "val", "test": "test"}

FACAP_TRIPLETS_DIR = "cir_triplets"
FACAP_CAPTIONS_DIR = "image_captions"
_FACAP_TRIPLETS_SUFFIX = "_train_triplets.json"
_FACAP_CAPTIONS_SUFFIX = "_train_captions.json"


@dataclass(frozen=True)
class RawTriplet:
    """One annotation entry: image keys as released (an ASIN, a path relative to the image root, a name).

    `extra` holds dataset-specific columns as (name, value) pairs, e.g. CIRR's pair id and image set.
    """

    reference: str
    target: str | None
    captions: tuple[str, ...]
    extra: tuple[tuple[str, Any], ...] = ()


def fashioniq_caption_file(folder: Path, category: str, split: str) -> Path:
    """`folder/cap.{category}.{split}.json`: Fashion IQ's name, also used for enhanced captions."""
    return Path(folder) / f"cap.{category}.{FASHIONIQ_FILE_SPLITS[split]}.json"


def fashioniq_captions_path(raw_dir: Path, category: str, split: str) -> Path:
    return fashioniq_caption_file(Path(raw_dir) / "captions", category, split)


def fashioniq_split_path(raw_dir: Path, category: str, split: str) -> Path:
    return Path(raw_dir) / "image_splits" / f"split.{category}.{FASHIONIQ_FILE_SPLITS[split]}.json"


def facap_triplets_path(raw_dir: Path, category: str) -> Path:
    return Path(raw_dir) / FACAP_TRIPLETS_DIR / f"{category}{_FACAP_TRIPLETS_SUFFIX}"


def facap_captions_path(raw_dir: Path, category: str) -> Path:
    return Path(raw_dir) / FACAP_CAPTIONS_DIR / f"{category}{_FACAP_CAPTIONS_SUFFIX}"


def read_json(path: Path) -> Any:
    """Parse a JSON annotation file; a missing, empty or malformed file raises a DataError naming it."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"annotation file not found: {path}") from None
    except UnicodeDecodeError as err:
        raise SchemaError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    if not text.strip():
        raise SchemaError(f"{path}: the annotation file is empty")
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise SchemaError(f"{path}: malformed JSON: {err.msg} at line {err.lineno} column {err.colno}") from None


def _json_list(path: Path, what: str) -> list:
    data = read_json(path)
    if not isinstance(data, list):
        raise SchemaError(f"{path}: expected a JSON list of {what}, found a {type(data).__name__}")
    if not data:
        raise SchemaError(f"{path}: the annotation file holds no {what}")
    return data


def _image_key(path: Path, index: int, entry: dict, field: str) -> str:
    value = entry.get(field)
    if not isinstance(value, str) or not value:
        found = "missing" if field not in entry else f"{value!r} (not a non-empty string)"
        raise SchemaError(f"{path}: entry {index} has no usable {field!r}: {found}")
    return value


def _captions(path: Path, index: int, entry: dict) -> tuple[str, ...]:
    captions = entry.get("captions")
    if "captions" not in entry:
        raise SchemaError(f"{path}: entry {index} has no 'captions'")
    if not isinstance(captions, list) or not captions or not all(isinstance(c, str) for c in captions):
        raise SchemaError(f"{path}: entry {index} 'captions' must be a non-empty list of strings, found {captions!r}")
    return tuple(captions)


def read_triplets(path: Path, *, target_required: bool) -> list[RawTriplet]:
    """Read a triplet file in the Fashion IQ / FACap layout (`candidate`, `target`, `captions`).

    `target_required=False` is for Fashion IQ's test split, whose targets are hidden: a target present
    anyway is kept.
    """
    path = Path(path)
    triplets = []
    for index, entry in enumerate(_json_list(path, "triplets")):
        if not isinstance(entry, dict):
            raise SchemaError(f"{path}: entry {index} is a {type(entry).__name__}, expected an object")
        reference = _image_key(path, index, entry, "candidate")
        target = None
        if target_required or entry.get("target") is not None:
            target = _image_key(path, index, entry, "target")
        triplets.append(RawTriplet(reference, target, _captions(path, index, entry)))
    return triplets


def read_image_split(path: Path) -> list[str]:
    """Read a Fashion IQ gallery file (a JSON list of ASINs), in file order without repeats."""
    path = Path(path)
    images = _json_list(path, "image ids")
    for index, image in enumerate(images):
        if not isinstance(image, str) or not image:
            raise SchemaError(f"{path}: entry {index} is {image!r}, expected a non-empty image id string")
    return list(dict.fromkeys(images))


def read_facap_captions(path: Path) -> dict[str, str]:
    """Read a FACap stage-1 caption file: a JSON object mapping an image path to its long caption."""
    path = Path(path)
    data = read_json(path)
    if not isinstance(data, dict):
        raise SchemaError(
            f"{path}: expected a JSON object mapping image paths to captions, found a {type(data).__name__}"
        )
    for image, caption in data.items():
        if not isinstance(caption, str):
            raise SchemaError(f"{path}: the caption of {image!r} is {caption!r}, expected a string")
    return data


def discover_facap_categories(raw_dir: Path) -> list[str]:
    """The categories of a FACap release: one per `cir_triplets/{cat}_train_triplets.json`, sorted."""
    folder = Path(raw_dir) / FACAP_TRIPLETS_DIR
    if not folder.is_dir():
        raise DataError(f"not a FACap release: {folder} does not exist")
    categories = sorted(p.name[: -len(_FACAP_TRIPLETS_SUFFIX)] for p in folder.glob(f"*{_FACAP_TRIPLETS_SUFFIX}"))
    if not categories:
        raise DataError(f"not a FACap release: no *{_FACAP_TRIPLETS_SUFFIX} file in {folder}")
    return categories


# Start-of-frame markers (baseline, progressive, lossless, arithmetic): the frame header follows them.
_JPEG_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})


def is_rgb_jpeg(data: bytes) -> bool:
    """Whether `data` is a JPEG of three 8-bit components, which Pillow decodes as RGB.

    Reads only the marker headers up to the frame header: a second `Image.open` of every image (its
    marker parser is Python) would cost a third of the decode itself.
    """
    if data[:2] != b"\xff\xd8":
        return False
    offset = 2
    while offset + 4 <= len(data) and data[offset] == 0xFF:
        marker = data[offset + 1]
        if marker == 0xFF:  # fill byte
            offset += 1
            continue
        length = int.from_bytes(data[offset + 2 : offset + 4], "big")
        if marker in _JPEG_SOF:
            header = data[offset + 4 : offset + 10]  # precision, height (2), width (2), components
            return len(header) == 6 and header[0] == 8 and header[5] == 3
        offset += 2 + length
    return False


def read_image_bytes(path: Path) -> bytes:
    """The bytes to embed for one raw image, after a full verification decode.

    An 8-bit RGB JPEG is embedded as released (decoding it proved it complete; re-encoding would only
    lose quality and time). Anything else (CMYK, grayscale, palette, alpha, 16-bit, PNG/WebP/...) is
    converted to RGB by `images.load_rgb` and embedded as a quality-95 JPEG.

    Raises:
        FileNotFoundError: the file does not exist (the caller counts missing images).
        DataError: the file is truncated, corrupt or a decompression bomb (named).
    """
    data = Path(path).read_bytes()
    rgb = load_rgb(data, name=str(path))
    return data if is_rgb_jpeg(data) else encode_jpeg(rgb)


# ------------------------------------------------------------------------------------------------ images


@dataclass
class PreparedImages:
    """Every image of a build, sorted by outcome (keys as in the annotations)."""

    data: dict[str, bytes]  # image key -> bytes to embed
    missing: dict[str, str]  # image key -> path
    unreadable: dict[str, str]  # image key -> reason


def _prepare_one(item: tuple[str, str, str]) -> tuple[str, str, bytes | str]:
    """(key, status, payload) for one image; runs in the worker processes, path check included (it stats
    every folder of the path, as costly as a small decode)."""
    key, root, relative = item
    try:
        path = safe_image_path(root, relative)
    except UnsafePathError as err:
        return key, "unsafe", str(err)
    try:
        return key, "ok", read_image_bytes(path)
    except FileNotFoundError:
        return key, "missing", os.fspath(path)
    except DataError as err:
        return key, "unreadable", str(err)
    except OSError as err:  # a folder, no permission, an I/O error: unreadable, not missing
        return key, "unreadable", f"image {path} cannot be read: {err.strerror or err}"


def prepare_images(
    keys: Iterable[str],
    images_dir: Path,
    suffix: str,
    *,
    num_proc: int = 1,
    progress: bool = False,
    paths: Mapping[str, str] | None = None,
) -> PreparedImages:
    """Verify and encode every image `images_dir/<key><suffix>` (or `images_dir/<paths[key]>`) once, in
    `num_proc` processes.

    Raises:
        UnsafePathError: a key leaves `images_dir` (never skippable).
    """
    items = [(key, os.fspath(images_dir), paths[key] if paths is not None else key + suffix) for key in keys]
    prepared = PreparedImages({}, {}, {})
    pool = multiprocessing.get_context().Pool(num_proc) if num_proc > 1 and len(items) > 1 else None
    try:
        results = pool.imap(_prepare_one, items, chunksize=64) if pool else map(_prepare_one, items)
        if progress:
            results = tqdm(results, total=len(items), desc="images", unit="img", file=sys.stderr)
        for key, status, payload in results:
            if status == "unsafe":
                raise UnsafePathError(payload)
            {"ok": prepared.data, "missing": prepared.missing, "unreadable": prepared.unreadable}[status][key] = payload
    finally:
        if pool:
            pool.terminate()
    return prepared
