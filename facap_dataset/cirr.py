"""CIRR (Liu et al., ICCV 2021): `python -m facap_dataset build cirr --raw-dir R --out DIR`.

The raw release, read exactly:
  `captions/cap.rc2.{train,val,test1}.json`: a JSON list of `{"pairid": int, "reference": name,
  "target_hard": name, "target_soft": {name: score}, "caption": str, "img_set": {"id": int, "members":
  [6 names], "reference_rank": int, "target_rank": int}}`; test1 entries have no `target_hard` (hidden).
  `image_splits/split.rc2.{train,val,test1}.json`: `{name: relative image path}` (e.g.
  `"./dev/dev-244-0-img0.png"`), the split's whole gallery. Images are NLVR2's PNGs, found under the raw
  folder by those paths (or under `--images-dir`).

Built layout (the schema the CIRR evaluation reads): triplet config `cirr` with the usual triplet columns
(`captions` holds the single caption, `category` is "cirr", test targets are null), then `pair_id` (int64)
and `img_set_members` (the image set's names, the reference among them); gallery config `cirr-gallery` with
every image of the split file. Splits train / validation / test (from test1).

Bad input: a caption naming an image absent from its split file is an error naming it (with
`on_missing="skip"` the pair is dropped and counted); a `pairid` repeated within a split, or an image set
that does not hold its reference, is an error naming the pair. A split file naming images no caption uses
is fine (they are gallery images). `target_soft` is not kept.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from datasets import DatasetDict, Features, List, Value

from . import citations
from .builders import (
    BuildNotes,
    SplitSource,
    check_choice,
    check_common,
    command_line,
    common_arguments,
    common_options,
    finish,
    report,
    skipped_images_section,
)
from .errors import DataError, SchemaError
from .export import DatasetCardInfo
from .readers import RawTriplet, read_json
from .schema import SPLITS

CATEGORY = "cirr"
# Dataset split name -> the name CIRR's files use.
CIRR_FILE_SPLITS = {"train": "train", "validation": "val", "test": "test1"}
HIDDEN_TARGET_SPLITS = ("test",)
EXTRA_FEATURES = Features({"pair_id": Value("int64"), "img_set_members": List(Value("string"))})
CIRR_SOURCE = (
    "CIRR, Composed Image Retrieval on Real-life images (Liu et al., ICCV 2021), "
    "https://github.com/Cuberick-Orion/CIRR: the annotations (`captions/cap.rc2.*.json`, "
    "`image_splits/split.rc2.*.json`) are released in that repository under its licence (MIT at the time of "
    "writing; check the repository). **The images are not covered**: they are NLVR2's (Suhr et al., ACL 2019), "
    "web photos distributed by the NLVR2 authors on request under their own terms."
)
CIRR_LICENSE = {"license_name": "cirr-annotations-nlvr2-images", "license_link": "https://github.com/Cuberick-Orion/CIRR"}


def captions_path(raw_dir: Path, split: str) -> Path:
    return Path(raw_dir) / "captions" / f"cap.rc2.{CIRR_FILE_SPLITS[split]}.json"


def split_path(raw_dir: Path, split: str) -> Path:
    return Path(raw_dir) / "image_splits" / f"split.rc2.{CIRR_FILE_SPLITS[split]}.json"


# ------------------------------------------------------------------------------------------------ reading


def read_split_file(path: Path) -> dict[str, str]:
    """A CIRR split file: image name -> image path relative to the release root, in file order."""
    data = read_json(path)
    if not isinstance(data, dict):
        raise SchemaError(f"{path}: expected a JSON object mapping image names to paths, found a {type(data).__name__}")
    if not data:
        raise SchemaError(f"{path}: the split file names no image")
    for name, relative in data.items():
        if not name or not isinstance(relative, str) or not relative:
            raise SchemaError(f"{path}: image {name!r} has path {relative!r}, expected a non-empty string")
    return data


def _field(path: Path, index: int, entry: dict, name: str, kind: type, what: str):
    value = entry.get(name)
    if not isinstance(value, kind) or isinstance(value, bool) or (kind is str and not value):
        found = "missing" if name not in entry else repr(value)
        raise SchemaError(f"{path}: entry {index} has no usable {name!r} ({what}): {found}")
    return value


@dataclass(frozen=True)
class CirrPair:
    pair_id: int
    reference: str
    target: str | None
    caption: str
    members: tuple[str, ...]


def _pair(path: Path, index: int, entry, hidden_target: bool) -> CirrPair:
    if not isinstance(entry, dict):
        raise SchemaError(f"{path}: entry {index} is a {type(entry).__name__}, expected an object")
    pair_id = _field(path, index, entry, "pairid", int, "an integer")
    reference = _field(path, index, entry, "reference", str, "an image name")
    target = None if hidden_target else _field(path, index, entry, "target_hard", str, "an image name")
    if "caption" not in entry or not isinstance(entry["caption"], str):
        raise SchemaError(f"{path}: entry {index} (pair {pair_id}) has no 'caption' string")
    img_set = _field(path, index, entry, "img_set", dict, "an object with 'members'")
    members = img_set.get("members")
    if not isinstance(members, list) or not members or not all(isinstance(m, str) and m for m in members):
        raise SchemaError(f"{path}: pair {pair_id}: img_set 'members' must be a non-empty list of image names")
    if reference not in members:
        raise DataError(f"{path}: pair {pair_id}: its img_set {img_set.get('id')!r} does not hold its reference {reference!r}")
    return CirrPair(pair_id, reference, target, entry["caption"], tuple(members))


def read_captions(path: Path, *, hidden_targets: bool) -> list[CirrPair]:
    """A CIRR caption file, checked: every field the build uses, unique pair ids, references in their sets."""
    path = Path(path)
    data = read_json(path)
    if not isinstance(data, list) or not data:
        raise SchemaError(f"{path}: expected a non-empty JSON list of caption entries")
    pairs, seen = [], {}
    for index, entry in enumerate(data):
        pair = _pair(path, index, entry, hidden_targets)
        if pair.pair_id in seen:
            raise DataError(f"{path}: pairid {pair.pair_id} is repeated (entries {seen[pair.pair_id]} and {index})")
        seen[pair.pair_id] = index
        pairs.append(pair)
    return pairs


def _absent_images(pair: CirrPair, gallery: dict[str, str]) -> list[str]:
    named = [("reference", pair.reference), ("target_hard", pair.target)] + [("img_set member", m) for m in pair.members]
    return [f"{name!r} ({role})" for role, name in named if name is not None and name not in gallery]


def split_source(raw_dir: Path, split: str, on_missing: str, notes: BuildNotes) -> tuple[SplitSource, dict[str, str]]:
    """One split's triplets and gallery, and its image name -> path map."""
    gallery = read_split_file(split_path(raw_dir, split))
    path = captions_path(raw_dir, split)
    triplets, dropped = [], 0
    for pair in read_captions(path, hidden_targets=split in HIDDEN_TARGET_SPLITS):
        absent = _absent_images(pair, gallery)
        if absent and on_missing == "error":
            raise DataError(
                f"{path}: pair {pair.pair_id} names image {absent[0]}, absent from {split_path(raw_dir, split)} "
                "(pass --on-missing skip to drop such pairs)"
            )
        if absent:
            dropped += 1
            continue
        extra = (("pair_id", pair.pair_id), ("img_set_members", list(pair.members)))
        triplets.append(RawTriplet(pair.reference, pair.target, (pair.caption,), extra))
    if dropped:
        notes.skipped[f"{CATEGORY}/{split}: pairs naming an image absent from the split file (dropped)"] = dropped
    if not triplets:
        raise DataError(f"{path}: no pair is left to build ({dropped} name images absent from the split file)")
    return SplitSource(triplets, list(gallery)), gallery


def _splits(raw_dir: Path, splits: Sequence[str] | None) -> list[str]:
    if splits is not None:
        return check_choice("split", splits, SPLITS)
    found = [split for split in SPLITS if captions_path(raw_dir, split).is_file()]
    if not found:
        raise DataError(f"not a CIRR release: no caption file cap.rc2.<split>.json in {Path(raw_dir) / 'captions'}")
    return found


# ------------------------------------------------------------------------------------------------ build


def build_cirr(
    raw_dir: str | os.PathLike,
    out_dir: str | os.PathLike | None,
    *,
    images_dir: str | os.PathLike | None = None,
    splits: Sequence[str] | None = None,
    on_missing: str = "error",
    num_proc: int = 1,
    overwrite: bool = False,
    progress: bool = False,
) -> dict[str, DatasetDict]:
    """Build CIRR from its raw release: configs `cirr` and `cirr-gallery`, splits train / validation / test
    (test targets hidden); by default every split with a caption file. Images are found under `images_dir`
    (default `raw_dir`) by the split files' paths. Writes `out_dir` (unless None) and returns the configs."""
    check_common(on_missing, num_proc)
    raw_dir = Path(raw_dir)
    images = Path(images_dir) if images_dir is not None else raw_dir
    notes = BuildNotes()
    sources, paths = {}, {}
    for split in _splits(raw_dir, splits):
        sources[split], gallery = split_source(raw_dir, split, on_missing, notes)
        paths.update(gallery)
    options = {
        "raw_dir": os.fspath(raw_dir),
        "out": os.fspath(out_dir) if out_dir is not None else None,
        "images_dir": os.fspath(images),
        "splits": list(sources),
        "on_missing": on_missing,
        "num_proc": num_proc,
    }

    def card(notes: BuildNotes) -> DatasetCardInfo:
        return DatasetCardInfo(
            pretty_name="CIRR",
            description=(
                "CIRR composed image retrieval on real-life images: a reference image, one modification text and "
                "the target image, with each query's image set (`img_set_members`, six visually similar images, "
                "the reference among them) for Recall_subset. Test targets are hidden in the release (null "
                "here); `pair_id` is the id CIRR's evaluation server expects. Each split's `cirr-gallery` is the "
                "release's split file, images that no caption uses included."
            ),
            source=CIRR_SOURCE,
            license="other",
            **CIRR_LICENSE,
            citations=(citations.CIRR, citations.NLVR2),
            task_categories=("image-to-image", "text-to-image"),
            tags=("composed-image-retrieval", "natural-images"),
            build_command=command_line("cirr", options),
            options=options,
            skipped=dict(notes.skipped),
            extra_sections={
                "Evaluation protocol": (
                    "CIRR's protocol differs from Fashion IQ's: the reference image is excluded from its own "
                    "ranking; Recall@{1,5,10,50} ranks the whole split gallery; Recall_subset@{1,2,3} ranks only "
                    "the query's `img_set_members` minus the reference; the headline is (R@5 + R_subset@1) / 2. "
                    "Test results are computed by CIRR's evaluation server from submitted rankings."
                ),
                **skipped_images_section(notes),
            },
        )

    return finish(
        {CATEGORY: sources},
        images,
        "",
        notes,
        out_dir=out_dir,
        card=card,
        on_missing=on_missing,
        num_proc=num_proc,
        overwrite=overwrite,
        progress=progress,
        extra_features=EXTRA_FEATURES,
        image_paths=paths,
    )


# ------------------------------------------------------------------------------------------------ CLI


def add_parser(subparsers) -> None:
    """Register `build cirr`."""
    parser = subparsers.add_parser("cirr", help="build CIRR from its raw release", description=build_cirr.__doc__)
    parser.add_argument("--raw-dir", required=True, type=Path, help="folder with captions/ and image_splits/")
    parser.add_argument(
        "--images-dir", type=Path, help="root the split files' image paths are relative to (default: RAW_DIR)"
    )
    common_arguments(parser, splits=True, categories=False)
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    configs = build_cirr(
        args.raw_dir, args.out, images_dir=args.images_dir, splits=args.splits, **common_options(args)
    )
    return report(configs, args.out)
