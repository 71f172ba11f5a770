"""`python -m facap_dataset inspect DIR`: what a built dataset folder holds, in numbers and in pictures.

Prints the configs and split sizes, caption statistics and, when the triplets carry attributes (the
synthetic set), the attribute oracles' Recall@1/@10 per category (see `synthetic_oracle`); writes a PNG
contact sheet of a few triplets (reference | text | target). Reads the Parquet shards listed in the card
directly (only the columns it needs), so it neither fills the datasets cache nor decodes every image.
A shard that is not readable Parquet, or a contact sheet path that cannot be written (checked before any
reading), is one DataError naming it.
"""

from __future__ import annotations

import argparse
import io
import json
import textwrap
from collections.abc import Sequence
from itertools import zip_longest
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from datasets.utils.metadata import MetadataConfigs
from PIL import Image, ImageDraw, ImageFont

from facap_io.atomic import check_writable, write_file
from facap_io.errors import FacapError, first_line

from .errors import DataError
from .export import read_card_data
from .schema import gallery_config, is_gallery_config
from .synthetic_oracle import ORACLES, oracle_recall

CONTACT_SHEET_CELL = 160  # pixels per image cell
_TEXT_WIDTH = 420
_ORACLE_K = (1, 10)


def data_files(directory: Path) -> dict[str, dict[str, list[Path]]]:
    """config -> split -> its Parquet files, as the card's YAML lists them."""
    card = read_card_data(directory)
    if card is None:
        raise DataError(f"{directory} is not a dataset folder: no README.md whose YAML lists configs")
    files: dict[str, dict[str, list[Path]]] = {}
    for config, params in MetadataConfigs.from_dataset_card_data(card).items():
        entries = params.get("data_files") or []
        for entry in entries if isinstance(entries, list) else [entries]:
            if not isinstance(entry, dict):
                raise DataError(f"{directory}: config {config!r} lists data files without split names")
            patterns = entry["path"] if isinstance(entry["path"], list) else [entry["path"]]
            matched = sorted(p for pattern in patterns for p in directory.glob(pattern))
            if not matched:
                raise DataError(f"{directory}: no files match {patterns} (config {config!r}, split {entry['split']!r})")
            files.setdefault(config, {})[entry["split"]] = matched
    return files


def parquet_file(path: Path) -> pq.ParquetFile:
    """Open one shard; a file that is not readable Parquet (truncated, corrupt) is a DataError naming it."""
    try:
        return pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as error:
        raise DataError(f"{path} is not a readable Parquet shard: {first_line(error)}") from None


def read_columns(paths: Sequence[Path], columns: Sequence[str]) -> pa.Table:
    tables = []
    for path in paths:
        try:
            tables.append(parquet_file(path).read(columns=list(columns)))
        except (pa.ArrowException, OSError) as error:
            raise DataError(f"{path} is not a readable Parquet shard: {first_line(error)}") from None
    return pa.concat_tables(tables)


def inspect_dataset(directory: str | Path, *, contact_sheet: str | Path | None = None, num_triplets: int = 6) -> dict:
    """Statistics of a dataset folder (and the contact sheet written, unless `num_triplets` is 0)."""
    directory = Path(directory)
    files = data_files(directory)
    sheet_path = Path(contact_sheet) if contact_sheet else directory.parent / f"{directory.name}-contact-sheet.png"
    if num_triplets > 0:  # before reading anything: an unwritable place fails now, not after the statistics
        try:
            check_writable(sheet_path, what="contact sheet")
        except FacapError as error:
            raise DataError(str(error)) from None
    stats: dict = {"directory": str(directory), "configs": {}, "captions": {}, "oracles": {}}
    for config, splits in files.items():
        stats["configs"][config] = {split: _num_rows(paths) for split, paths in splits.items()}
        if is_gallery_config(config):
            continue
        for split, paths in splits.items():
            names = parquet_file(paths[0]).schema_arrow.names
            stats["captions"][f"{config}/{split}"] = caption_statistics(read_columns(paths, ["captions"]))
            gallery = files.get(gallery_config(config), {}).get(split)
            if gallery and "reference_attributes" in names:
                stats["oracles"][f"{config}/{split}"] = _oracles(paths, gallery)
    if num_triplets > 0:
        write_contact_sheet(files, sheet_path, num_triplets)
        stats["contact_sheet"] = str(sheet_path)
    return stats


def _num_rows(paths: Sequence[Path]) -> int:
    return sum(parquet_file(p).metadata.num_rows for p in paths)


def caption_statistics(table: pa.Table) -> dict:
    captions = table.column("captions").to_pylist()
    words = np.array([len(c.split()) for caps in captions for c in caps] or [0])
    per_triplet = np.array([len(caps) for caps in captions] or [0])
    return {
        "triplets": len(captions),
        "captions_per_triplet": [int(per_triplet.min()), int(per_triplet.max())],
        "words_mean": round(float(words.mean()), 2),
        "words_median": float(np.median(words)),
        "words_min": int(words.min()),
        "words_max": int(words.max()),
        "empty_captions": int(sum(1 for caps in captions for c in caps if not c.strip())),
    }


def _oracles(triplet_paths: Sequence[Path], gallery_paths: Sequence[Path]) -> dict:
    triplets = read_columns(triplet_paths, ["captions", "reference_attributes", "target_id"]).to_pylist()
    gallery = read_columns(gallery_paths, ["image_id", "attributes"]).to_pylist()
    queries = [(t["captions"], json.loads(t["reference_attributes"]), t["target_id"]) for t in triplets]
    by_id = {g["image_id"]: json.loads(g["attributes"]) for g in gallery}
    return {"gallery_size": len(by_id), **{kind: oracle_recall(kind, queries, by_id, _ORACLE_K) for kind in ORACLES}}


# ------------------------------------------------------------------------------------------ contact sheet

def write_contact_sheet(files: dict[str, dict[str, list[Path]]], path: Path, num_triplets: int) -> Path:
    """A PNG of `num_triplets` triplets (reference | captions | target), taken round-robin over configs."""
    rows = _sample_triplets(files, num_triplets)
    if not rows:
        raise DataError("no triplets to draw a contact sheet from")
    cell = CONTACT_SHEET_CELL
    sheet = Image.new("RGB", (2 * cell + _TEXT_WIDTH, cell * len(rows)), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=15)
    for i, row in enumerate(rows):
        top = i * cell
        sheet.paste(_thumbnail(row["reference_image"], cell), (0, top))
        if row.get("target_image"):
            sheet.paste(_thumbnail(row["target_image"], cell), (cell + _TEXT_WIDTH, top))
        else:
            draw.text((cell + _TEXT_WIDTH + 10, top + cell // 2), "(hidden)", fill="grey", font=font)
        lines = [f"{row['category']} · {row['split']}", f"{row['reference_id']} ->", f"{row['target_id']}", ""]
        lines += [line for caption in row["captions"] for line in textwrap.wrap(f"“{caption}”", 40) or ["“”"]]
        draw.multiline_text((cell + 10, top + 10), "\n".join(lines), fill="black", font=font, spacing=6)
        draw.line((0, top + cell - 1, sheet.width, top + cell - 1), fill=(200, 200, 200))
    try:
        write_file(path, lambda temporary: sheet.save(temporary, format="PNG"))
    except OSError as error:
        raise DataError(f"contact sheet {path} cannot be written: {error.strerror or error}") from None
    return path


def _sample_triplets(files, num_triplets: int) -> list[dict]:
    """The first triplets of each triplet config's validation split (else its first split), interleaved."""
    columns = ["reference_id", "target_id", "captions", "category", "reference_image", "target_image"]
    per_config = []
    for config, splits in files.items():
        if is_gallery_config(config):
            continue
        split = "validation" if "validation" in splits else next(iter(splits))
        first = parquet_file(splits[split][0])
        try:
            table = next(first.iter_batches(batch_size=num_triplets, columns=columns), None)
        except (pa.ArrowException, OSError) as error:
            raise DataError(f"{splits[split][0]} is not a readable Parquet shard: {first_line(error)}") from None
        if table is not None:
            per_config.append([{**r, "split": split} for r in table.to_pylist()])
    interleaved = [row for group in zip_longest(*per_config) for row in group if row is not None]
    return interleaved[:num_triplets]


def _thumbnail(image: dict, cell: int) -> Image.Image:
    with Image.open(io.BytesIO(image["bytes"])) as decoded:
        thumb = decoded.convert("RGB")
    scale = (cell - 8) / max(thumb.size)
    # small synthetic images are enlarged pixel for pixel; large photos are shrunk smoothly
    resample = Image.Resampling.NEAREST if scale >= 1 else Image.Resampling.LANCZOS
    thumb = thumb.resize((max(1, round(thumb.width * scale)), max(1, round(thumb.height * scale))), resample)
    framed = Image.new("RGB", (cell, cell), "white")
    framed.paste(thumb, ((cell - thumb.width) // 2, (cell - thumb.height) // 2))
    return framed


# ------------------------------------------------------------------------------------------ report & CLI

def format_report(stats: dict) -> str:
    lines = [f"dataset: {stats['directory']}", "", "configs (rows per split):"]
    split_names = list(dict.fromkeys(s for splits in stats["configs"].values() for s in splits))
    width = max(len(c) for c in stats["configs"]) + 2
    lines.append("  " + "config".ljust(width) + "".join(s.rjust(12) for s in split_names))
    for config, splits in stats["configs"].items():
        lines.append("  " + config.ljust(width) + "".join(str(splits.get(s, "-")).rjust(12) for s in split_names))
    lines += ["", "captions (words per caption):"]
    for key, c in stats["captions"].items():
        lines.append(
            f"  {key}: {c['triplets']} triplets, {c['captions_per_triplet'][0]}-{c['captions_per_triplet'][1]} "
            f"captions each, words mean {c['words_mean']} median {c['words_median']:g} "
            f"range {c['words_min']}-{c['words_max']}, {c['empty_captions']} empty"
        )
    if stats["oracles"]:
        lines += ["", "attribute oracles (expected recall %, ties broken at random):"]
        for key, o in stats["oracles"].items():
            parts = [f"{kind} R@1 {o[kind]['recall@1']:.1f} R@10 {o[kind]['recall@10']:.1f}" for kind in ORACLES]
            lines.append(f"  {key} (gallery {o['gallery_size']}): " + " | ".join(parts))
    if "contact_sheet" in stats:
        lines += ["", f"contact sheet: {stats['contact_sheet']}"]
    return "\n".join(lines)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "inspect",
        help="print a dataset folder's configs, split sizes, caption stats (and oracles); draw a contact sheet",
        description="Summarise a built dataset folder and write a PNG contact sheet of a few triplets.",
    )
    parser.add_argument("directory", type=Path, help="a dataset folder written by `build`")
    parser.add_argument("--contact-sheet", type=Path, default=None,
                        help="PNG path (default: DIR-contact-sheet.png next to the folder)")
    parser.add_argument("--num-triplets", type=int, default=6, help="triplets on the contact sheet (0: none)")
    parser.add_argument("--json", action="store_true", help="print the statistics as one JSON object")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    if args.num_triplets < 0:
        raise DataError(f"--num-triplets {args.num_triplets} must be >= 0")
    stats = inspect_dataset(args.directory, contact_sheet=args.contact_sheet, num_triplets=args.num_triplets)
    print(json.dumps(stats) if args.json else format_report(stats))
    return 0
