"""Builders for the real datasets (DESIGN.md 3): Fashion IQ, FACap and enhFashionIQ.

Each builder reads a raw release (`readers`), prepares every image it needs once (in `num_proc`
processes), assembles one triplet config per category plus its `{category}-gallery` config, and writes
them with the shared writer (`export.write_dataset`) together with a dataset card that records the
source, the licence, the build command and what was skipped.

Missing or unreadable images are an error naming the first few and the count, unless
`on_missing="skip"`: then every triplet and gallery entry that needs such an image is dropped and the
counts go into the card. Image paths from the annotations never leave their image root.

Degenerate triplets follow one rule in every builder (`drop_degenerate`): a triplet whose target is its own
reference is dropped (there is nothing to compose), and of exact repeats (same reference, target and
captions) the first is kept; triplets with a hidden target are never compared. Both are counted in the card
and on stderr, like every other drop.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from hashlib import sha256
from pathlib import Path

import pyarrow as pa
from datasets import Dataset, DatasetDict, DatasetInfo, Features, Image, Value
from datasets.fingerprint import generate_random_fingerprint
from datasets.table import InMemoryTable

from facap_io.lists import comma_list

from . import citations, readers
from .errors import DataError, MissingImageError
from .export import DatasetCardInfo, check_destination, write_dataset
from .readers import PreparedImages, RawTriplet, prepare_images
from .schema import FASHIONIQ_CATEGORIES, GALLERY_FEATURES, SPLITS, gallery_config, triplet_features

ON_MISSING_CHOICES = ("error", "skip")
DEFAULT_VAL_FRACTION = 0.02
_SHOWN = 5  # how many culprits an error message names before giving the count
_CARD_LISTED = 50  # how many skipped images the card lists by name

FASHIONIQ_SOURCE = (
    "Fashion IQ (Wu et al., CVPR 2021), https://github.com/XiaoxiaoGuo/fashion-iq: the relative captions "
    "(`captions/cap.{category}.{split}.json`) and gallery lists (`image_splits/split.{category}.{split}.json`) "
    "are released under the Community Data License Agreement (CDLA; the release does not say which variant). "
    "**The images are not covered by that licence**: they are Amazon product photos (the release links to "
    "them by URL); whoever builds or redistributes this dataset is responsible for the right to use them."
)
FACAP_SOURCE = (
    "FACap (fashion composed image retrieval with detailed modification texts): triplets "
    "(`cir_triplets/{category}_train_triplets.json`) and stage-1 image captions "
    "(`image_captions/{category}_train_captions.json`) from the FACap release; check the release for the "
    "licence of the annotations. **The images are not covered**: they come from Fashion200k (product "
    "photos of online shops) under their owners' terms."
)
FASHIONIQ_LICENSE = {"license_name": "fashion-iq-cdla-annotations", "license_link": "https://github.com/XiaoxiaoGuo/fashion-iq"}
FACAP_LICENSE = {"license_name": "facap-release-terms", "license_link": "https://arxiv.org/abs/2507.07135"}


# ----------------------------------------------------------------------------------------------- sources


@dataclass(frozen=True)
class SplitSource:
    """What one split of one category needs: its triplets and its gallery (image keys, in order)."""

    triplets: list[RawTriplet]
    gallery: list[str]


@dataclass
class BuildNotes:
    """Counts of what was dropped or left empty, by reason (written to the card), and named examples."""

    skipped: Counter = field(default_factory=Counter)
    skipped_images: list[str] = field(default_factory=list)


def check_choice(kind: str, values: Sequence[str], allowed: Sequence[str]) -> list[str]:
    unknown = [v for v in values if v not in allowed]
    if unknown:
        raise DataError(f"unknown {kind} {unknown[0]!r}; expected one of: {', '.join(allowed)}")
    if not values:
        raise DataError(f"no {kind} selected")
    return list(dict.fromkeys(values))


def _fashioniq_splits(raw_dir: Path, category: str, splits: Sequence[str] | None) -> list[str]:
    """The requested splits, or by default those whose caption file exists (at least one must)."""
    if splits is not None:
        return check_choice("split", splits, SPLITS)
    found = [split for split in SPLITS if readers.fashioniq_captions_path(raw_dir, category, split).is_file()]
    if not found:
        expected = readers.fashioniq_captions_path(raw_dir, category, "validation").parent
        raise DataError(f"no caption file for category {category!r} in {expected} (cap.{category}.<split>.json)")
    return found


def fashioniq_sources(
    raw_dir: Path, categories: Sequence[str], splits: Sequence[str] | None
) -> dict[str, dict[str, SplitSource]]:
    """Read Fashion IQ's caption and gallery files: category -> split -> SplitSource."""
    raw_dir = Path(raw_dir)
    sources = {}
    for category in categories:
        sources[category] = {
            split: SplitSource(
                readers.read_triplets(
                    readers.fashioniq_captions_path(raw_dir, category, split), target_required=split != "test"
                ),
                readers.read_image_split(readers.fashioniq_split_path(raw_dir, category, split)),
            )
            for split in _fashioniq_splits(raw_dir, category, splits)
        }
    return sources


def enhance_sources(
    sources: dict[str, dict[str, SplitSource]], enhanced_dir: Path, notes: BuildNotes
) -> dict[str, dict[str, SplitSource]]:
    """Replace each triplet's captions with those of the same (candidate, target) pair in `enhanced_dir`.

    Pairs are matched in order of occurrence, so repeated pairs and the target-less test entries pair up
    one to one. Pairs without an enhanced text are dropped and counted, as are enhanced pairs that match
    nothing in Fashion IQ.
    """
    enhanced = {}
    for category, splits in sources.items():
        enhanced[category] = {}
        for split, source in splits.items():
            path = readers.fashioniq_caption_file(enhanced_dir, category, split)
            texts: dict[tuple, deque] = defaultdict(deque)
            for entry in readers.read_triplets(path, target_required=split != "test"):
                texts[(entry.reference, entry.target)].append(entry.captions)
            triplets = []
            for triplet in source.triplets:
                queue = texts.get((triplet.reference, triplet.target))
                if queue:
                    triplets.append(RawTriplet(triplet.reference, triplet.target, queue.popleft()))
            absent = len(source.triplets) - len(triplets)
            unmatched = sum(len(queue) for queue in texts.values())
            if absent:
                notes.skipped[f"{category}/{split}: Fashion IQ pairs absent from the enhanced captions (dropped)"] = (
                    absent
                )
            if unmatched:
                notes.skipped[f"{category}/{split}: enhanced pairs not in Fashion IQ (ignored)"] = unmatched
            if not triplets:
                count = len(source.triplets)
                raise DataError(
                    f"{path}: none of the {count} Fashion IQ pairs of {category}/{split} has an enhanced text"
                )
            enhanced[category][split] = SplitSource(triplets, source.gallery)
    return enhanced


def _validation_references(triplets: Sequence[RawTriplet], val_fraction: float) -> set[str]:
    """ceil(val_fraction x #references) reference images, chosen by a hash of their key: deterministic,
    independent of file order, and stable when other images are added."""
    references = sorted({t.reference for t in triplets}, key=lambda key: (sha256(key.encode()).hexdigest(), key))
    return set(references[: math.ceil(len(references) * val_fraction)])


def split_by_reference(
    category: str, triplets: Sequence[RawTriplet], val_fraction: float, notes: BuildNotes
) -> dict[str, list[RawTriplet]]:
    """FACap's train/validation split: every triplet of a chosen reference image goes to validation.

    The galleries must not share an image, so train triplets that use any validation image (as reference
    or target) are dropped and counted.
    """
    val_references = _validation_references(triplets, val_fraction)
    validation = [t for t in triplets if t.reference in val_references]
    val_images = {t.reference for t in validation} | {t.target for t in validation}
    train = [t for t in triplets if t.reference not in val_images and t.target not in val_images]
    leaked = len(triplets) - len(validation) - len(train)
    if leaked:
        notes.skipped[f"{category}/train: triplets sharing an image with the validation split (dropped)"] = leaked
    if not train:
        raise DataError(
            f"category {category!r}: no train triplet is left after taking the validation split; lower --val-fraction"
        )
    return {"train": train, "validation": validation} if validation else {"train": train}


def facap_sources(
    raw_dir: Path, categories: Sequence[str], val_fraction: float, notes: BuildNotes
) -> dict[str, dict[str, SplitSource]]:
    """Read FACap's triplet files and split them; each split's gallery is the set of images its triplets use."""
    sources = {}
    for category in categories:
        triplets = readers.read_triplets(readers.facap_triplets_path(raw_dir, category), target_required=True)
        sources[category] = {
            split: SplitSource(part, list(dict.fromkeys(key for t in part for key in (t.reference, t.target))))
            for split, part in split_by_reference(category, triplets, val_fraction, notes).items()
        }
    return sources


def facap_image_captions(raw_dir: Path, categories: Sequence[str]) -> dict[str, dict[str, str]] | None:
    """Stage-1 captions per category when the release has `image_captions/` (then every category needs
    its file), else None."""
    if not (Path(raw_dir) / readers.FACAP_CAPTIONS_DIR).is_dir():
        return None
    return {
        category: readers.read_facap_captions(readers.facap_captions_path(raw_dir, category)) for category in categories
    }


# ------------------------------------------------------------------------------------------------ images


def _named(values: Iterable[str], total: int) -> str:
    shown = list(values)[:_SHOWN]
    return "; ".join(shown) + ("; ..." if total > len(shown) else "")


def apply_missing_policy(prepared: PreparedImages, on_missing: str, notes: BuildNotes) -> None:
    """Raise on missing/unreadable images, or (skip) count them; the dependent rows are dropped later."""
    if on_missing == "error":
        if prepared.missing:
            count = len(prepared.missing)
            raise MissingImageError(
                f"{count} image(s) missing: {_named(prepared.missing.values(), count)} "
                "(pass --on-missing skip to drop the triplets and gallery entries that need them)"
            )
        if prepared.unreadable:
            count = len(prepared.unreadable)
            raise DataError(
                f"{count} image(s) unreadable: {_named(prepared.unreadable.values(), count)} "
                "(pass --on-missing skip to drop the triplets and gallery entries that need them)"
            )
        return
    if prepared.missing:
        notes.skipped["images missing from the image folder"] = len(prepared.missing)
    if prepared.unreadable:
        notes.skipped["images unreadable (truncated, corrupt or refused as a decompression bomb)"] = len(
            prepared.unreadable
        )
    notes.skipped_images = [f"`{key}`: missing" for key in prepared.missing] + [
        f"`{key}`: {reason}" for key, reason in prepared.unreadable.items()
    ]


# ------------------------------------------------------------------------------------------------ assembly


def _image_array(values: Sequence[bytes | None], pa_type: pa.DataType) -> pa.Array:
    """An `Image()` column of embedded bytes (null where a value is None) built in one pass."""
    mask = pa.array([v is None for v in values]) if any(v is None for v in values) else None
    fields = [pa.array(values, type=pa_type.field("bytes").type), pa.nulls(len(values), pa_type.field("path").type)]
    return pa.StructArray.from_arrays(fields, fields=list(pa_type), mask=mask)


def _dataset(columns: Mapping[str, list], features: Features, split: str) -> Dataset:
    """An in-memory Dataset from plain columns; image columns hold bytes (or None).

    Built straight in Arrow: `Dataset.from_dict` converts each image dict in Python and hashes the whole
    table for a fingerprint, which costs more than decoding the images did.
    """
    schema = features.arrow_schema
    arrays = [
        _image_array(columns[name], schema.field(name).type)
        if isinstance(feature, Image)
        else pa.array(columns[name], type=schema.field(name).type)
        for name, feature in features.items()
    ]
    table = InMemoryTable(pa.Table.from_arrays(arrays, schema=schema))
    return Dataset(table, info=DatasetInfo(features=features), split=split, fingerprint=generate_random_fingerprint())


def drop_degenerate(
    category: str, split: str, triplets: Sequence[RawTriplet], notes: BuildNotes
) -> list[RawTriplet]:
    """`triplets` without those whose target is their reference and without exact repeats (same reference,
    target and captions; the first is kept), each count noted. Hidden targets (None) are never compared:
    two test queries alike may still have different targets."""
    kept, seen, same, repeats = [], set(), 0, 0
    for triplet in triplets:
        if triplet.target is not None and triplet.target == triplet.reference:
            same += 1
            continue
        if triplet.target is not None:
            key = (triplet.reference, triplet.target, triplet.captions)
            if key in seen:
                repeats += 1
                continue
            seen.add(key)
        kept.append(triplet)
    if same:
        notes.skipped[f"{category}/{split}: triplets whose target is their reference (dropped)"] = same
    if repeats:
        notes.skipped[f"{category}/{split}: repeated triplets, same reference, target and captions (dropped)"] = (
            repeats
        )
    return kept


def triplet_dataset(
    category: str,
    split: str,
    triplets: Sequence[RawTriplet],
    images: Mapping[str, bytes],
    notes: BuildNotes,
    image_captions: Mapping[str, str] | None = None,
    extra_features: Features | None = None,
) -> Dataset:
    """The triplet rows of one split (DESIGN.md 3.2), dropping (and counting) degenerate ones and those that
    need a skipped image. `extra_features` types the columns each triplet carries in `RawTriplet.extra`."""
    triplets = drop_degenerate(category, split, triplets, notes)
    kept = [t for t in triplets if t.reference in images and (t.target is None or t.target in images)]
    if len(kept) < len(triplets):
        notes.skipped[f"{category}/{split}: triplets needing a missing or unreadable image"] = len(triplets) - len(kept)
    if not kept:
        raise DataError(
            f"every triplet of {category}/{split} needs a missing or unreadable image: nothing left to build"
        )
    columns = {
        "reference_id": [t.reference for t in kept],
        "target_id": [t.target for t in kept],
        "captions": [list(t.captions) for t in kept],
        "category": [category] * len(kept),
        "reference_image": [images[t.reference] for t in kept],
        "target_image": [None if t.target is None else images[t.target] for t in kept],
    }
    extra = dict(extra_features or {})
    for name in extra:
        columns[name] = [dict(t.extra)[name] for t in kept]
    if image_captions is not None:
        extra |= {"reference_caption": Value("string"), "target_caption": Value("string")}
        columns["reference_caption"] = [image_captions.get(t.reference) for t in kept]
        columns["target_caption"] = [image_captions.get(t.target) for t in kept]
        uncaptioned = {k for t in kept for k in (t.reference, t.target) if k is not None and k not in image_captions}
        if uncaptioned:
            notes.skipped[f"{category}/{split}: images without a stage-1 caption (caption left null)"] = len(
                uncaptioned
            )
    return _dataset(columns, triplet_features(extra), split)


def gallery_dataset(
    category: str, split: str, gallery: Sequence[str], images: Mapping[str, bytes], notes: BuildNotes
) -> Dataset:
    kept = [key for key in gallery if key in images]
    if len(kept) < len(gallery):
        notes.skipped[f"{gallery_config(category)}/{split}: gallery images missing or unreadable"] = len(gallery) - len(
            kept
        )
    if not kept:
        raise DataError(f"every gallery image of {category}/{split} is missing or unreadable: nothing left to build")
    columns = {"image_id": kept, "category": [category] * len(kept), "image": [images[k] for k in kept]}
    return _dataset(columns, GALLERY_FEATURES, split)


def assemble(
    sources: Mapping[str, Mapping[str, SplitSource]],
    images: Mapping[str, bytes],
    notes: BuildNotes,
    image_captions: Mapping[str, Mapping[str, str]] | None = None,
    extra_features: Features | None = None,
) -> dict[str, DatasetDict]:
    """Config name -> DatasetDict: each category's triplet config followed by its gallery config."""
    configs = {}
    for category, splits in sources.items():
        captions = image_captions[category] if image_captions is not None else None
        configs[category] = DatasetDict(
            {
                s: triplet_dataset(category, s, src.triplets, images, notes, captions, extra_features)
                for s, src in splits.items()
            }
        )
        configs[gallery_config(category)] = DatasetDict(
            {s: gallery_dataset(category, s, src.gallery, images, notes) for s, src in splits.items()}
        )
    return configs


# ------------------------------------------------------------------------------------------------ builds


def _image_keys(sources: Mapping[str, Mapping[str, SplitSource]]) -> list[str]:
    """Every image key the build needs, once, in order of first use."""
    return list(
        dict.fromkeys(
            key
            for splits in sources.values()
            for source in splits.values()
            for key in [
                *source.gallery,
                *(k for t in source.triplets for k in (t.reference, t.target) if k is not None),
            ]
        )
    )


def check_common(on_missing: str, num_proc: int) -> None:
    if on_missing not in ON_MISSING_CHOICES:
        raise DataError(f"unknown on_missing {on_missing!r}; expected one of: {', '.join(ON_MISSING_CHOICES)}")
    if num_proc < 1:
        raise DataError(f"num_proc must be at least 1, got {num_proc}")


def command_line(source: str, options: Mapping[str, object]) -> str:
    parts = ["python -m facap_dataset build", source]
    for name, value in options.items():
        if value is None or value is False:
            continue
        flag = "--" + name.replace("_", "-")
        if value is True:
            parts.append(flag)
        else:
            text = ",".join(value) if isinstance(value, (list, tuple)) else str(value)
            parts += [flag, text if text and " " not in text else repr(text)]
    return " ".join(parts)


def skipped_images_section(notes: BuildNotes) -> dict[str, str]:
    if not notes.skipped_images:
        return {}
    listed = notes.skipped_images[:_CARD_LISTED]
    more = len(notes.skipped_images) - len(listed)
    body = "\n".join(f"- {line}" for line in listed) + (f"\n- ... and {more} more" if more else "")
    return {"Skipped images": f"Images dropped with `--on-missing skip`, with every row that needed them:\n\n{body}"}


def finish(
    sources: Mapping[str, Mapping[str, SplitSource]],
    images_dir: Path,
    suffix: str,
    notes: BuildNotes,
    *,
    out_dir: str | os.PathLike | None,
    card: Callable[[BuildNotes], DatasetCardInfo],
    on_missing: str,
    num_proc: int,
    overwrite: bool,
    progress: bool,
    image_captions: Mapping[str, Mapping[str, str]] | None = None,
    extra_features: Features | None = None,
    image_paths: Mapping[str, str] | None = None,
) -> dict[str, DatasetDict]:
    """The steps every builder shares once its sources are read: images, policy, assembly, writing.
    `image_paths` maps an image key to its path under `images_dir` when it is not `<key><suffix>`."""
    if out_dir is not None:  # before the long part: an output folder it may not write fails now
        check_destination(out_dir, card(notes).pretty_name, overwrite)
    prepared = prepare_images(
        _image_keys(sources), images_dir, suffix, num_proc=num_proc, progress=progress, paths=image_paths
    )
    apply_missing_policy(prepared, on_missing, notes)
    configs = assemble(sources, prepared.data, notes, image_captions, extra_features)
    del prepared  # the Arrow tables hold copies of the bytes now: lower the peak memory while writing
    for reason, count in notes.skipped.items():
        print(f"note: {reason}: {count}", file=sys.stderr)
    if out_dir is not None:
        write_dataset(out_dir, configs, card=card(notes), overwrite=overwrite)
    return configs


def _fashioniq_categories(captions_dir: Path, categories: Sequence[str] | None) -> list[str]:
    """The requested categories, or by default those with at least one caption file in `captions_dir`."""
    if categories is not None:
        return check_choice("category", categories, FASHIONIQ_CATEGORIES)
    found = [
        c
        for c in FASHIONIQ_CATEGORIES
        if any(readers.fashioniq_caption_file(captions_dir, c, s).is_file() for s in SPLITS)
    ]
    if not found:
        raise DataError(
            f"no caption file (cap.<category>.<split>.json) for {', '.join(FASHIONIQ_CATEGORIES)} in {captions_dir}"
        )
    return found


def build_fashioniq(
    raw_dir: str | os.PathLike,
    out_dir: str | os.PathLike | None,
    *,
    images_dir: str | os.PathLike | None = None,
    categories: Sequence[str] | None = None,
    splits: Sequence[str] | None = None,
    on_missing: str = "error",
    num_proc: int = 1,
    overwrite: bool = False,
    progress: bool = False,
) -> dict[str, DatasetDict]:
    """Build Fashion IQ from its release (`raw_dir/captions`, `raw_dir/image_splits`, `raw_dir/images`).

    Configs `dress`, `shirt`, `toptee` (test targets are null) and their `-gallery` configs; by default
    every category and split that has a caption file. Writes `out_dir` (unless None) and returns the configs.
    """
    check_common(on_missing, num_proc)
    raw_dir = Path(raw_dir)
    images = Path(images_dir) if images_dir is not None else raw_dir / "images"
    categories = _fashioniq_categories(raw_dir / "captions", categories)
    sources = fashioniq_sources(raw_dir, categories, splits)
    options = {
        "raw_dir": os.fspath(raw_dir),
        "out": os.fspath(out_dir) if out_dir is not None else None,
        "images_dir": os.fspath(images),
        "categories": categories,
        "splits": [s for s in SPLITS if any(s in found for found in sources.values())],
        "on_missing": on_missing,
        "num_proc": num_proc,
    }

    def card(notes: BuildNotes) -> DatasetCardInfo:
        return DatasetCardInfo(
            pretty_name="Fashion IQ",
            description=(
                "Fashion IQ composed image retrieval: a reference product image, two crowd-sourced relative "
                "captions and the target product, for the categories "
                f"{', '.join(categories)}. Test targets are hidden in the release (null here). Each "
                "`{category}-gallery` config is the release's gallery of that split (`image_splits/`). "
                "Captions are kept exactly as released (some are empty or start with a space)."
            ),
            source=FASHIONIQ_SOURCE,
            license="other",
            **FASHIONIQ_LICENSE,
            citations=(citations.FASHIONIQ,),
            build_command=command_line("fashioniq", options),
            options=options,
            skipped=dict(notes.skipped),
            extra_sections=skipped_images_section(notes),
        )

    return finish(
        sources,
        images,
        ".jpg",
        BuildNotes(),
        out_dir=out_dir,
        card=card,
        on_missing=on_missing,
        num_proc=num_proc,
        overwrite=overwrite,
        progress=progress,
    )


def build_enhfashioniq(
    raw_dir: str | os.PathLike,
    enhanced_captions: str | os.PathLike,
    out_dir: str | os.PathLike | None,
    *,
    images_dir: str | os.PathLike | None = None,
    categories: Sequence[str] | None = None,
    splits: Sequence[str] | None = None,
    on_missing: str = "error",
    num_proc: int = 1,
    overwrite: bool = False,
    progress: bool = False,
) -> dict[str, DatasetDict]:
    """Build enhFashionIQ: Fashion IQ's pairs, galleries and images with the modification texts of
    `enhanced_captions/cap.{cat}.{split}.json`. By default every split that folder has a file for;
    Fashion IQ pairs without an enhanced text are dropped and reported (card and stderr)."""
    check_common(on_missing, num_proc)
    raw_dir, enhanced_dir = Path(raw_dir), Path(enhanced_captions)
    images = Path(images_dir) if images_dir is not None else raw_dir / "images"
    categories = _fashioniq_categories(enhanced_dir, categories)
    if splits is None:
        splits = [
            s for s in SPLITS if any(readers.fashioniq_caption_file(enhanced_dir, c, s).is_file() for c in categories)
        ]
        if not splits:
            raise DataError(
                f"no enhanced caption file (cap.<category>.<split>.json) for {', '.join(categories)} in {enhanced_dir}"
            )
    notes = BuildNotes()
    sources = enhance_sources(fashioniq_sources(raw_dir, categories, splits), enhanced_dir, notes)
    options = {
        "raw_dir": os.fspath(raw_dir),
        "enhanced_captions": os.fspath(enhanced_dir),
        "out": os.fspath(out_dir) if out_dir is not None else None,
        "images_dir": os.fspath(images),
        "categories": categories,
        "splits": list(splits),
        "on_missing": on_missing,
        "num_proc": num_proc,
    }

    def card(notes: BuildNotes) -> DatasetCardInfo:
        return DatasetCardInfo(
            pretty_name="enhFashionIQ",
            description=(
                "enhFashionIQ: Fashion IQ's reference/target pairs, galleries and images, with the modification "
                "texts rewritten by the FACap two-stage annotation pipeline (read from "
                f"`{os.fspath(enhanced_dir)}` in Fashion IQ's caption-file format). Pairs are matched on "
                "(candidate, target) in order of occurrence; pairs without an enhanced text are dropped and "
                "counted below."
            ),
            source=FASHIONIQ_SOURCE + "\n\nThe enhanced modification texts were generated by the FACap "
            "annotation pipeline; their terms are those of whoever generated them.",
            license="other",
            **FASHIONIQ_LICENSE,
            citations=(citations.FACAP, citations.FASHIONIQ),
            build_command=command_line("enhfashioniq", options),
            options=options,
            skipped=dict(notes.skipped),
            extra_sections=skipped_images_section(notes),
        )

    return finish(
        sources,
        images,
        ".jpg",
        notes,
        out_dir=out_dir,
        card=card,
        on_missing=on_missing,
        num_proc=num_proc,
        overwrite=overwrite,
        progress=progress,
    )


def build_facap(
    raw_dir: str | os.PathLike,
    images_dir: str | os.PathLike,
    out_dir: str | os.PathLike | None,
    *,
    categories: Sequence[str] | None = None,
    val_fraction: float = DEFAULT_VAL_FRACTION,
    on_missing: str = "error",
    num_proc: int = 1,
    overwrite: bool = False,
    progress: bool = False,
) -> dict[str, DatasetDict]:
    """Build FACap from `raw_dir/cir_triplets` (+ `raw_dir/image_captions` when present) with images under
    `images_dir`. Categories are discovered from the files; a deterministic validation split takes
    `val_fraction` of the reference images (see `split_by_reference`)."""
    check_common(on_missing, num_proc)
    if not 0 <= val_fraction < 1:
        raise DataError(f"val_fraction must be in [0, 1), got {val_fraction}")
    raw_dir = Path(raw_dir)
    discovered = readers.discover_facap_categories(raw_dir)
    categories = check_choice("category", categories, discovered) if categories is not None else discovered
    notes = BuildNotes()
    sources = facap_sources(raw_dir, categories, val_fraction, notes)
    image_captions = facap_image_captions(raw_dir, categories)
    options = {
        "raw_dir": os.fspath(raw_dir),
        "images_dir": os.fspath(images_dir),
        "out": os.fspath(out_dir) if out_dir is not None else None,
        "categories": categories,
        "val_fraction": val_fraction,
        "on_missing": on_missing,
        "num_proc": num_proc,
    }

    def card(notes: BuildNotes) -> DatasetCardInfo:
        return DatasetCardInfo(
            pretty_name="FACap",
            description=(
                "FACap composed image retrieval triplets: a reference image, one detailed modification text "
                f"and the target image, for the categories {', '.join(categories)}. Image ids are the image "
                "paths of the release (relative to its image root)."
                + (
                    " `reference_caption` and `target_caption` hold the stage-1 long captions of the images."
                    if image_captions is not None
                    else ""
                )
            ),
            source=FACAP_SOURCE,
            license="other",
            **FACAP_LICENSE,
            citations=(citations.FACAP, citations.FASHION200K),
            build_command=command_line("facap", options),
            options=options,
            skipped=dict(notes.skipped),
            extra_sections={
                "Validation split and galleries": (
                    "FACap releases a train split only. The validation split takes every triplet of "
                    f"ceil({val_fraction} x number of reference images) reference images, chosen by the SHA-256 "
                    "of their path (deterministic, independent of file order). The gallery of a split (the "
                    "`{category}-gallery` config) is the set of images its triplets use, references and "
                    "targets. No image is in both galleries: train triplets that use a validation image are "
                    "dropped (counted under Skipped items)."
                ),
                **skipped_images_section(notes),
            },
        )

    return finish(
        sources,
        Path(images_dir),
        "",
        notes,
        out_dir=out_dir,
        card=card,
        on_missing=on_missing,
        num_proc=num_proc,
        overwrite=overwrite,
        progress=progress,
        image_captions=image_captions,
    )


# ------------------------------------------------------------------------------------------------ CLI


def common_arguments(parser: argparse.ArgumentParser, *, splits: bool, categories: bool = True) -> None:
    parser.add_argument("--out", required=True, type=Path, help="output dataset folder")
    if categories:
        parser.add_argument("--categories", type=comma_list, help="comma-separated categories (default: all)")
    if splits:
        parser.add_argument(
            "--splits", type=comma_list, help="comma-separated splits among train,validation,test (default: those present)"
        )
    parser.add_argument(
        "--on-missing",
        choices=ON_MISSING_CHOICES,
        default="error",
        help="missing/unreadable image: fail (default) or drop what needs it and count it in the card",
    )
    parser.add_argument("--num-proc", type=int, default=1, help="processes that verify and encode images")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an output folder holding a different dataset (files a build did not write are never deleted)",
    )


def add_parser(subparsers) -> None:
    """Register `build fashioniq`, `build facap` and `build enhfashioniq`."""
    fiq = subparsers.add_parser(
        "fashioniq", help="build Fashion IQ from its raw release", description=build_fashioniq.__doc__
    )
    fiq.add_argument("--raw-dir", required=True, type=Path, help="folder with captions/, image_splits/ (and images/)")
    fiq.add_argument("--images-dir", type=Path, help="folder of <ASIN>.jpg images (default: RAW_DIR/images)")
    common_arguments(fiq, splits=True)
    fiq.set_defaults(func=_run_fashioniq)

    facap = subparsers.add_parser("facap", help="build FACap from its raw release", description=build_facap.__doc__)
    facap.add_argument("--raw-dir", required=True, type=Path, help="folder with cir_triplets/ (and image_captions/)")
    facap.add_argument("--images-dir", required=True, type=Path, help="image root the triplet paths are relative to")
    facap.add_argument(
        "--val-fraction",
        type=float,
        default=DEFAULT_VAL_FRACTION,
        help="fraction of reference images whose triplets form the validation split (default 0.02)",
    )
    common_arguments(facap, splits=False)
    facap.set_defaults(func=_run_facap)

    enh = subparsers.add_parser(
        "enhfashioniq",
        help="build enhFashionIQ (Fashion IQ with enhanced texts)",
        description=build_enhfashioniq.__doc__,
    )
    enh.add_argument("--raw-dir", required=True, type=Path, help="the Fashion IQ release folder")
    enh.add_argument("--enhanced-captions", required=True, type=Path, help="folder of cap.{cat}.{split}.json")
    enh.add_argument("--images-dir", type=Path, help="folder of <ASIN>.jpg images (default: RAW_DIR/images)")
    common_arguments(enh, splits=True)
    enh.set_defaults(func=_run_enhfashioniq)


def report(configs: Mapping[str, DatasetDict], out: Path) -> int:
    for name, splits in configs.items():
        print(f"{name}: " + ", ".join(f"{split} {len(ds)}" for split, ds in splits.items()), file=sys.stderr)
    print(out)
    return 0


def common_options(args: argparse.Namespace) -> dict:
    return {"on_missing": args.on_missing, "num_proc": args.num_proc, "overwrite": args.overwrite, "progress": True}


def _run_fashioniq(args: argparse.Namespace) -> int:
    configs = build_fashioniq(
        args.raw_dir,
        args.out,
        images_dir=args.images_dir,
        categories=args.categories,
        splits=args.splits,
        **common_options(args),
    )
    return report(configs, args.out)


def _run_facap(args: argparse.Namespace) -> int:
    configs = build_facap(
        args.raw_dir,
        args.images_dir,
        args.out,
        categories=args.categories,
        val_fraction=args.val_fraction,
        **common_options(args),
    )
    return report(configs, args.out)


def _run_enhfashioniq(args: argparse.Namespace) -> int:
    configs = build_enhfashioniq(
        args.raw_dir,
        args.enhanced_captions,
        args.out,
        images_dir=args.images_dir,
        categories=args.categories,
        splits=args.splits,
        **common_options(args),
    )
    return report(configs, args.out)
