"""What an evaluation reads, all of it checked against the protocol before anything is encoded.

`plan_configs` opens the dataset once, loads every config's triplets and gallery, decides the benchmark (CIRR
when the triplets carry image sets), resolves the K values against each gallery's size, and counts the facts
the protocol block reports. Nothing here touches the model.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import datasets

from facap_dataset.errors import DataError
from facap_dataset.export import read_card_data
from facap_dataset.loading import OpenedDataset, open_dataset
from facap_dataset.schema import gallery_config
from facap_io.lists import parse_list
from facap_retrieval.cache import gallery_fingerprint
from facap_retrieval.ranking import RetrievalError

from .errors import EvalError
from .gallery import gallery_ids
from .protocol import CIRR, CIRR_SET_COLUMN, FASHIONIQ, NUM_CHANGES, NUM_CHANGES_COLUMN, PREDICTION_TOP_K, Protocol

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ConfigData:
    """One triplet config's split, its gallery, and what the protocol resolved for it.

    k_values: the protocol's K values this gallery can answer; dropped_k_values: those dropped (`drop` rule).
    rank_k: how many results each query keeps (the largest K, or the prediction files' length).
    facts: counts for the protocol block (missing targets, empty captions, ...).
    """

    name: str
    benchmark: str
    triplets: datasets.Dataset
    gallery: datasets.Dataset
    gallery_ids: tuple[str, ...]
    gallery_fingerprint: str
    triplets_fingerprint: str
    hidden_targets: bool
    exclude_reference: bool
    k_values: tuple[int, ...]
    dropped_k_values: tuple[int, ...]
    rank_k: int
    facts: dict


def config_names(configs: Sequence[str] | str) -> list[str]:
    """The triplet config names of a comma list or a sequence (the project's list rule); EvalError unless
    at least one is given and none repeats."""
    try:
        names = parse_list(configs, what="config")
    except ValueError as error:
        raise EvalError(f"configs: {error}") from None
    if len(set(names)) != len(names):
        raise EvalError(f"configs must be distinct names, got {configs!r}")
    return names


def plan_configs(
    dataset: str | os.PathLike, names: Sequence[str], protocol: Protocol, *, predictions: bool
) -> tuple[OpenedDataset, dict[str, ConfigData]]:
    """Open `dataset` and check every config against `protocol`; raises before any encoding."""
    opened = open_dataset(dataset)
    planned = {name: _plan_config(opened, name, protocol, predictions) for name in names}
    benchmarks = {data.benchmark for data in planned.values()}
    if len(benchmarks) > 1:
        by = {b: [n for n, d in planned.items() if d.benchmark == b] for b in sorted(benchmarks)}
        raise EvalError(f"configs follow different benchmarks ({by}); evaluate them in separate runs")
    return opened, planned


def _plan_config(opened: OpenedDataset, name: str, protocol: Protocol, predictions: bool) -> ConfigData:
    split = protocol.split
    triplets = opened.load_split(opened.require(name), split)
    gallery = opened.load_split(opened.require(gallery_config(name)), split)
    if len(triplets) == 0 or len(gallery) == 0:
        raise DataError(f"{name} ({split}) has {len(triplets)} triplets and {len(gallery)} gallery images")
    ids = gallery_ids(gallery, f"{gallery_config(name)} ({split})")
    target_ids = triplets["target_id"]
    hidden = all(t is None for t in target_ids)
    if hidden and not predictions:
        raise EvalError(f"{name} ({split}) has no targets: pass a predictions folder to rank its queries")
    if hidden and protocol.breakdowns:
        raise EvalError(f"{name} ({split}) has no targets: breakdowns need them")
    if NUM_CHANGES in protocol.breakdowns and NUM_CHANGES_COLUMN not in triplets.column_names:
        raise DataError(f"{name} ({split}) has no {NUM_CHANGES_COLUMN!r} column: --breakdown {NUM_CHANGES} needs it")
    benchmark = CIRR if CIRR_SET_COLUMN in triplets.column_names else FASHIONIQ
    exclude = protocol.excludes_reference(benchmark)
    k_values, dropped = _resolve_k_values(name, split, len(gallery), exclude, protocol)
    admissible = len(gallery) - int(exclude)
    rank_k = max(k_values + ((min(PREDICTION_TOP_K, admissible),) if predictions else ()))
    rows = set(ids)
    facts = {
        "num_triplets": len(triplets),
        "missing_targets": 0 if hidden else sum(t is None or t not in rows for t in target_ids),
        "references_not_in_gallery": sum(r not in rows for r in triplets["reference_id"]),
        "empty_captions": sum(not cs or any(not c.strip() for c in cs) for cs in triplets["captions"]),
    }
    return ConfigData(
        name, benchmark, triplets, gallery, ids, gallery_fingerprint(gallery), triplets_fingerprint(triplets),
        hidden, exclude, k_values, dropped, rank_k, facts,
    )  # fmt: skip


def _resolve_k_values(name, split, gallery_size, exclude, protocol) -> tuple[tuple[int, ...], tuple[int, ...]]:
    admissible = gallery_size - int(exclude)
    too_large = tuple(k for k in protocol.k_values if k > admissible)
    kept = tuple(k for k in protocol.k_values if k <= admissible)
    if too_large and (protocol.k_above_gallery == "error" or not kept):
        excluded = ", one per query excluded as the reference" if exclude else ""
        raise RetrievalError(
            f"{name} ({split}): k={too_large[0]} is larger than the gallery ({gallery_size} images{excluded})"
        )
    if too_large:
        logger.warning("note: %s", dropped_note(name, too_large, gallery_size))
    return kept, too_large


def dropped_note(name: str, dropped: Sequence[int], gallery_size: int) -> str:
    listed = ", ".join(map(str, dropped))
    return f"{name}: K={listed} dropped, larger than its gallery of {gallery_size} images"


def triplets_fingerprint(triplets: datasets.Dataset) -> str:
    """sha256 of the triplets' ids and captions (what makes the queries), read without decoding images."""
    digest = hashlib.sha256()
    columns = triplets.select_columns(["reference_id", "target_id", "captions"]).with_format("arrow")
    for batch in columns.iter(batch_size=1024):
        digest.update(json.dumps(batch.to_pydict(), sort_keys=True).encode())
    return digest.hexdigest()


def dataset_identity(opened: OpenedDataset, dataset: str | os.PathLike) -> dict:
    card = read_card_data(opened.path) if Path(opened.path).is_dir() else None
    return {
        "name_or_path": str(dataset),
        "skipped_at_build": dict(card.get("skipped") or {}) if card is not None else None,
    }
