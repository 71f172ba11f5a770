"""Write built datasets as a Parquet folder with a dataset card (the layout `push_to_hub` writes).

One writer serves every builder (synthetic, Fashion IQ, FACap, enhFashionIQ):

    out_dir/README.md                                   card: YAML `configs:` + `dataset_info:`, then text
    out_dir/<config>/<split>-00000-of-00001.parquet     images embedded as bytes

The YAML is generated with `datasets`' own `MetadataConfigs` and `DatasetInfosDict` and written through
`huggingface_hub.DatasetCard`, never typed by hand, so that `load_dataset(out_dir, "dress")` works
offline and the same folder uploads to the Hub unchanged.

Safety of `out_dir` (a build never deletes a file it did not write):
- next to the card, `build-manifest.json` lists every file the build wrote (the card, the shards and
  itself); a later build into the same folder may replace exactly those files and nothing else;
- the folder is built in a hidden temporary sibling and swapped in whole (`facap_io.atomic`), so a
  failed or killed build leaves the previous build intact; the hidden folder a killed build left is
  removed (and reported on stderr) by the next build into the same place;
- an existing `out_dir` is replaced without asking only when it is empty or holds the *same* dataset
  (same `pretty_name`) and nothing but what the build wrote; a different dataset needs `overwrite=True`;
- a folder holding any other file (a user's NOTES.md, an analysis/ folder, a folder that is not a dataset
  at all) is refused, naming those files, with or without `overwrite`: move them out, or choose another
  folder. A folder built before manifests existed counts as holding its card and the shards the card lists.
- a write that fails (a full disk, a permission) is one `DataError` naming the folder; nothing changed.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.compute as pc
from datasets import Dataset, DatasetDict, DatasetInfo, Features, Image, SplitDict, SplitInfo
from datasets.info import DatasetInfosDict
from datasets.table import embed_table_storage
from datasets.utils.tqdm import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars
from datasets.utils.metadata import MetadataConfigs
from datasets.utils.py_utils import convert_file_size_to_int
from huggingface_hub import DatasetCard, DatasetCardData

from facap_io.atomic import check_writable, remove_stale_temporaries, staged_folder
from facap_io.errors import FacapError

from .errors import DataError, SchemaError
from .schema import GALLERY_FEATURES, TRIPLET_FEATURES, is_gallery_config

CARD_FILENAME = "README.md"
MANIFEST_FILENAME = "build-manifest.json"
MANIFEST_WRITER = "facap_dataset"
_NAMED = 5  # how many foreign files an error names before giving the count
DEFAULT_MAX_SHARD_SIZE = "500MB"  # the size `push_to_hub` uses
DEFAULT_TAGS = ("fashion", "composed-image-retrieval")
# Hub task ids: composed retrieval takes an image and a text and returns images
DEFAULT_TASK_CATEGORIES = ("image-to-image", "text-to-image")
DEFAULT_LANGUAGE = ("en",)
# the Hub's size buckets (datasets' `size_categories.json`), by upper bound of the number of examples
_SIZE_CATEGORIES = tuple(zip((10**e for e in range(3, 13)), (
    "n<1K", "1K<n<10K", "10K<n<100K", "100K<n<1M", "1M<n<10M", "10M<n<100M", "100M<n<1B", "1B<n<10B",
    "10B<n<100B", "100B<n<1T")))


@dataclass(frozen=True)
class DatasetCardInfo:
    """What the dataset card says beyond the generated YAML.

    Attributes:
        pretty_name: human name; also the identity used to recognise "the same dataset" in `out_dir`.
        description: one or more paragraphs of Markdown describing the data.
        source: where the raw data comes from and its licence terms (Markdown).
        license: Hub licence identifier for the YAML `license:` field, e.g. "cdla-permissive-1.0",
            "mit", "other".
        build_command: the exact command (or Python call) that built the folder.
        options: the resolved build options, shown as a table.
        skipped: reason -> number of dropped items; written to the card (and to its YAML) so nothing
            is dropped silently.
        extra_sections: section title -> Markdown body, appended after the generated sections.
        tags: Hub tags.
        citations: one BibTeX entry per source the data comes from (`facap_dataset.citations`).
        license_name, license_link: required when `license` is "other": a short name of the terms and
            where to read them (the Hub shows both).
        task_categories, language: Hub metadata.
    """

    pretty_name: str
    description: str
    source: str
    license: str
    build_command: str
    options: Mapping[str, Any] = field(default_factory=dict)
    skipped: Mapping[str, int] = field(default_factory=dict)
    extra_sections: Mapping[str, str] = field(default_factory=dict)
    tags: tuple[str, ...] = DEFAULT_TAGS
    citations: tuple[str, ...] = ()
    license_name: str | None = None
    license_link: str | None = None
    task_categories: tuple[str, ...] = DEFAULT_TASK_CATEGORIES
    language: tuple[str, ...] = DEFAULT_LANGUAGE

    def __post_init__(self):
        if self.license == "other" and not (self.license_name and self.license_link):
            raise ValueError(f"dataset card {self.pretty_name!r}: licence 'other' needs license_name and license_link")


def size_category(num_examples: int) -> str:
    """The Hub's size bucket for `num_examples` rows, e.g. 4181 -> "1K<n<10K"."""
    for bound, name in _SIZE_CATEGORIES:
        if num_examples < bound:
            return name
    return "n>1T"


def write_dataset(
    out_dir: str | os.PathLike,
    configs: Mapping[str, DatasetDict],
    *,
    card: DatasetCardInfo,
    overwrite: bool = False,
    max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE,
) -> Path:
    """Write `configs` (config name -> DatasetDict of splits) as a Parquet dataset folder.

    The first config is marked as the default one, so `load_dataset(out_dir)` also works.
    Image columns should hold encoded bytes already: they are written as they are (never re-encoded);
    images given only by path are read and embedded.

    Returns:
        The resolved `out_dir`.

    Raises:
        DataError: no configs, an invalid config or split name, `out_dir` not writable or holding
            something else (see the module docstring).
    """
    out_dir = Path(out_dir).expanduser().resolve()
    _check_configs(configs)
    check_destination(out_dir, card.pretty_name, overwrite)
    max_shard_bytes = convert_file_size_to_int(max_shard_size)
    try:
        with staged_folder(out_dir) as staging, _quiet_parquet_progress():
            infos = {name: _write_config(staging, name, splits, max_shard_bytes) for name, splits in configs.items()}
            _card(infos, card).save(staging / CARD_FILENAME)
            _write_manifest(staging, card.pretty_name)
    except OSError as error:  # a full disk, a permission: the previous content is still in place
        culprit = f" ({error.filename})" if error.filename else ""
        raise DataError(
            f"writing the dataset to {out_dir} failed: {error.strerror or error}{culprit}; the folder is unchanged"
        ) from None
    return out_dir


@contextmanager
def _quiet_parquet_progress():
    """`to_parquet` shows one bar per shard (dozens of "1/1" bars per build); restore the user's setting after."""
    was_disabled = are_progress_bars_disabled()
    disable_progress_bars()
    try:
        yield
    finally:
        if not was_disabled:
            enable_progress_bars()


def read_card_data(directory: str | os.PathLike) -> DatasetCardData | None:
    """The YAML of `directory/README.md` when it is a dataset card with `configs:`, else None."""
    card_path = Path(directory) / CARD_FILENAME
    if not card_path.is_file():
        return None
    try:
        data = DatasetCard.load(card_path).data
    except (ValueError, OSError):  # unreadable or not YAML: not one of our dataset folders
        return None
    return data if data.get(MetadataConfigs.FIELD_NAME) else None


def _check_configs(configs: Mapping[str, DatasetDict]) -> None:
    if not configs:
        raise DataError("no configs to write: the dataset would be empty")
    for config_name, dataset_dict in configs.items():
        if not config_name or "/" in config_name or config_name in {"data", "default"}:
            raise DataError(f"invalid config name {config_name!r}")
        if not isinstance(dataset_dict, DatasetDict) or not dataset_dict:
            raise DataError(f"config {config_name!r} must be a non-empty datasets.DatasetDict")
        for split, dataset in dataset_dict.items():
            # datasets' rule for split names in YAML (no dashes: they separate split from shard index)
            if not split.replace("_", "").isalnum():
                raise DataError(f"invalid split name {split!r} in config {config_name!r}")
            _check_schema(config_name, split, dataset.features)


def _check_schema(config_name: str, split: str, features: Features) -> None:
    """Triplet and gallery configs start with the columns of DESIGN.md 3.2; extra columns may follow."""
    required = GALLERY_FEATURES if is_gallery_config(config_name) else TRIPLET_FEATURES
    leading = dict(list(features.items())[: len(required)])
    if leading != dict(required):
        raise SchemaError(
            f"config {config_name!r} split {split!r}: columns must start with {list(required)} "
            f"typed as in facap_dataset.schema, got {list(features)}"
        )


def check_destination(out_dir: str | os.PathLike, pretty_name: str, overwrite: bool) -> None:
    """Raise DataError unless `write_dataset` may write a dataset called `pretty_name` to `out_dir`.

    `write_dataset` checks this itself; builders call it first too, to fail before a long build. Hidden
    temporaries of an earlier, killed build into `out_dir` are removed here and reported on stderr.
    """
    out_dir = Path(out_dir).expanduser().resolve()
    if out_dir.exists() and not out_dir.is_dir():
        raise DataError(f"output path {out_dir} exists and is not a folder")
    try:
        check_writable(out_dir.parent, what="output folder", folder=True)
    except FacapError as error:
        raise DataError(f"output folder {out_dir} is not writable: {error}") from None
    for stale in remove_stale_temporaries(out_dir):
        print(f"removed {stale}, left by an interrupted build into {out_dir}", file=sys.stderr)
    if not out_dir.exists() or not _all_files(out_dir):
        return
    owned = owned_files(out_dir)
    if owned is None:
        raise DataError(
            f"output folder {out_dir} is not empty and holds no dataset built here "
            f"({_listing(sorted(_all_files(out_dir)))}); refusing to touch it (choose an empty or new folder)"
        )
    foreign = sorted(_all_files(out_dir) - owned)
    if foreign:
        raise DataError(
            f"output folder {out_dir} holds files a build did not write: {_listing(foreign)}; a build never "
            "deletes them, even with --overwrite: move them out of the folder or choose another one"
        )
    existing_name = _built_name(out_dir)
    if existing_name != pretty_name and not overwrite:
        raise DataError(
            f"output folder {out_dir} holds a different dataset ({existing_name!r}, not "
            f"{pretty_name!r}); pass overwrite (--overwrite) to replace it"
        )


def owned_files(directory: Path) -> set[str] | None:
    """The files (POSIX paths relative to `directory`) a build wrote there: those its manifest lists, or for a
    folder built before manifests its card and the shards the card lists; None when it is not a built folder."""
    manifest = _read_manifest(directory)
    if manifest is not None:
        return {entry["path"] for entry in manifest["files"]} | {MANIFEST_FILENAME}
    card = read_card_data(directory)
    if card is None:
        return None
    owned = {CARD_FILENAME}
    for config in MetadataConfigs.from_dataset_card_data(card).values():
        entries = config.get("data_files") or []
        for entry in entries if isinstance(entries, list) else [entries]:
            patterns = entry.get("path", []) if isinstance(entry, dict) else entry
            for pattern in [patterns] if isinstance(patterns, str) else patterns:
                owned |= {p.relative_to(directory).as_posix() for p in directory.glob(pattern) if p.is_file()}
    return owned


def _read_manifest(directory: Path) -> dict | None:
    path = directory / MANIFEST_FILENAME
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # absent or unreadable: not a manifest of ours
        return None
    valid = (
        isinstance(manifest, dict)
        and manifest.get("written_by") == MANIFEST_WRITER
        and isinstance(manifest.get("files"), list)
        and all(isinstance(entry, dict) and isinstance(entry.get("path"), str) for entry in manifest["files"])
    )
    return manifest if valid else None


def _write_manifest(root: Path, pretty_name: str) -> None:
    """`build-manifest.json`: every file this build wrote, with its size (the manifest itself aside)."""
    files = sorted(_all_files(root))
    manifest = {
        "written_by": MANIFEST_WRITER,
        "pretty_name": pretty_name,
        "files": [{"path": name, "bytes": (root / name).stat().st_size} for name in files],
    }
    (root / MANIFEST_FILENAME).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")


def _built_name(directory: Path) -> str | None:
    manifest = _read_manifest(directory)
    if manifest is not None:
        return manifest.get("pretty_name")
    card = read_card_data(directory)
    return card.get("pretty_name") if card is not None else None


def _all_files(directory: Path) -> set[str]:
    """Every file under `directory` (symbolic links included, never followed) as POSIX paths relative to it.
    Empty folders hold nothing to lose and are not listed."""
    found = set()
    for folder, subfolders, files in os.walk(directory):
        base = Path(folder)
        names = files + [name for name in subfolders if (base / name).is_symlink()]
        found |= {(base / name).relative_to(directory).as_posix() for name in names}
    return found


def _listing(names: list[str]) -> str:
    shown = ", ".join(names[:_NAMED])
    return shown + (f" and {len(names) - _NAMED} more" if len(names) > _NAMED else "")


def _write_config(root: Path, config_name: str, dataset_dict: DatasetDict, max_shard_bytes: int) -> DatasetInfo:
    features = _common_features(config_name, dataset_dict)
    info = DatasetInfo(config_name=config_name, features=features, splits=SplitDict(), download_size=0, dataset_size=0)
    (root / config_name).mkdir()
    for split, dataset in dataset_dict.items():
        num_bytes, file_bytes = _write_split(root / config_name, split, dataset, max_shard_bytes)
        info.splits.add(SplitInfo(name=split, num_bytes=num_bytes, num_examples=len(dataset)))
        info.download_size += file_bytes
        info.dataset_size += num_bytes
    info.size_in_bytes = info.download_size + info.dataset_size
    return info


def _common_features(config_name: str, dataset_dict: DatasetDict) -> Features:
    features = None
    for split, dataset in dataset_dict.items():
        if features is None:
            features = dataset.features
        elif dataset.features != features:
            raise DataError(f"config {config_name!r}: split {split!r} has features that differ from the other splits")
    return features


def _write_split(config_dir: Path, split: str, dataset: Dataset, max_shard_bytes: int) -> tuple[int, int]:
    """Write one split as `<split>-NNNNN-of-MMMMM.parquet` shards; returns (arrow bytes, file bytes)."""
    num_shards = min(max(1, len(dataset)), max(1, -(-_estimated_nbytes(dataset) // max_shard_bytes)))
    num_bytes = file_bytes = 0
    for index in range(num_shards):
        shard = dataset.shard(num_shards=num_shards, index=index, contiguous=True)
        shard = _embed_images(shard)
        path = config_dir / f"{split}-{index:05d}-of-{num_shards:05d}.parquet"
        num_bytes += shard.to_parquet(path)
        file_bytes += path.stat().st_size
    return num_bytes, file_bytes


def _estimated_nbytes(dataset: Dataset) -> int:
    table = dataset.data
    if table.num_rows == 0:
        return 0
    return table.nbytes * len(dataset) // table.num_rows


def _embed_images(shard: Dataset) -> Dataset:
    """Read images given by path into bytes; a no-op (no copy) when every image already has bytes."""
    columns = [name for name, feature in shard.features.items() if isinstance(feature, Image)]
    if not columns or len(shard) == 0:
        return shard
    table = shard.with_format("arrow")[:]
    if not any(pc.any(pc.and_(pc.is_null(table[c].combine_chunks().field("bytes")), pc.is_valid(table[c]))).as_py()
               for c in columns):
        return shard
    return Dataset(embed_table_storage(table), info=shard.info.copy())


def _card(infos: Mapping[str, DatasetInfo], card: DatasetCardInfo) -> DatasetCard:
    data = DatasetCardData(
        pretty_name=card.pretty_name,
        license=card.license,
        language=list(card.language),
        task_categories=list(card.task_categories),
        size_categories=[size_category(_num_examples(infos))],
        tags=list(card.tags),
    )
    if card.license_name:
        data["license_name"], data["license_link"] = card.license_name, card.license_link
    if card.skipped:
        data["skipped"] = {reason: int(count) for reason, count in card.skipped.items()}
    default_config = next(iter(infos))
    metadata = {
        config_name: {
            "data_files": [{"split": split, "path": f"{config_name}/{split}-*"} for split in info.splits],
            **({"default": True} if config_name == default_config else {}),
        }
        for config_name, info in infos.items()
    }
    MetadataConfigs(metadata).to_dataset_card_data(data)
    DatasetInfosDict(infos).to_dataset_card_data(data)
    return DatasetCard(f"---\n{data.to_yaml()}\n---\n\n{_card_text(infos, card, default_config)}")


def _licence_line(card: DatasetCardInfo) -> str:
    if card.license_name:
        return f"Licence identifier: `{card.license}` ({card.license_name}: <{card.license_link}>)."
    return f"Licence identifier: `{card.license}`."


def _num_examples(infos: Mapping[str, DatasetInfo]) -> int:
    """Rows of the triplet configs (the examples), or of every config when there is no triplet config."""
    triplets = [info for name, info in infos.items() if not is_gallery_config(name)] or list(infos.values())
    return sum(split.num_examples for info in triplets for split in info.splits.values())


def _card_text(infos: Mapping[str, DatasetInfo], card: DatasetCardInfo, default_config: str) -> str:
    sections = [
        f"# {card.pretty_name}\n\n{card.description.strip()}",
        _loading_section(infos, default_config),
        _splits_section(infos),
        _features_section(infos),
        f"## Source and licence\n\n{card.source.strip()}\n\n{_licence_line(card)}",
        _build_section(card),
        _skipped_section(card.skipped),
        *(f"## {title}\n\n{body.strip()}" for title, body in card.extra_sections.items()),
        *([_citation_section(card.citations)] if card.citations else []),
    ]
    return "\n\n".join(sections) + "\n"


def _loading_section(infos: Mapping[str, DatasetInfo], default_config: str) -> str:
    gallery = next((name for name in infos if name.endswith("-gallery")), None)
    lines = [
        "```python",
        "from datasets import load_dataset",
        "",
        f'triplets = load_dataset("path/to/this/folder", "{default_config}")  # or a Hub repo id',
    ]
    if gallery:
        lines.append(f'gallery = load_dataset("path/to/this/folder", "{gallery}")')
    lines += [
        "```",
        "",
        f"`{default_config}` is the default config. Configs: {', '.join(f'`{name}`' for name in infos)}.",
    ]
    return "## Loading\n\n" + "\n".join(lines)


def _splits_section(infos: Mapping[str, DatasetInfo]) -> str:
    split_names = list(dict.fromkeys(split for info in infos.values() for split in info.splits))
    rows = ["| config | " + " | ".join(split_names) + " |", "|---" * (len(split_names) + 1) + "|"]
    for config_name, info in infos.items():
        counts = [str(info.splits[s].num_examples) if s in info.splits else "–" for s in split_names]
        rows.append(f"| `{config_name}` | " + " | ".join(counts) + " |")
    return "## Configs and split sizes (rows)\n\n" + "\n".join(rows)


def _features_section(infos: Mapping[str, DatasetInfo]) -> str:
    # configs sharing the same columns are listed together, so the section stays short
    groups: dict[str, list[str]] = {}
    for config_name, info in infos.items():
        columns = "\n".join(f"- `{name}`: {_describe(feature)}" for name, feature in info.features.items())
        groups.setdefault(columns, []).append(config_name)
    parts = [f"{', '.join(f'`{c}`' for c in names)}:\n\n{columns}" for columns, names in groups.items()]
    return "## Features\n\n" + "\n\n".join(parts)


def _describe(feature: Any) -> str:
    if isinstance(feature, Image):
        return "image (encoded bytes, decoded to PIL by datasets)"
    return str(feature)


def _citation_section(citations: tuple[str, ...]) -> str:
    blocks = "\n\n".join(f"```bibtex\n{entry.strip()}\n```" for entry in citations)
    return f"## Citation\n\nIf you use this dataset, please cite its sources:\n\n{blocks}"


def _build_section(card: DatasetCardInfo) -> str:
    text = f"## How it was built\n\n```\n{card.build_command}\n```"
    if card.options:
        rows = ["| option | value |", "|---|---|"] + [f"| `{k}` | `{_cell(v)}` |" for k, v in card.options.items()]
        text += "\n\nResolved options:\n\n" + "\n".join(rows)
    return text


def _skipped_section(skipped: Mapping[str, int]) -> str:
    if not skipped:
        return "## Skipped items\n\nNothing was skipped."
    rows = ["| reason | count |", "|---|---|"] + [f"| {_cell(reason)} | {count} |" for reason, count in skipped.items()]
    return "## Skipped items\n\n" + "\n".join(rows)


def _cell(value: Any) -> str:
    """A value as one Markdown table cell (a "|" would split the row)."""
    return str(value).replace("|", "\\|").replace("\n", " ")
