"""Attribute oracles: how far one modality alone gets on a synthetic split (the set must need both).

Each oracle scores every gallery image by counting attribute matches and ranks by that score, ties broken
uniformly at random. Recall@K is the *expected* value over the random tie-breaking, computed exactly:
with `better` images scoring above the target and `tied` others scoring the same, the target's rank is
uniform on better+1 .. better+1+tied.

- text oracle: matches with the attribute values the caption names (parsed from the text itself);
- image oracle: matches with the reference image's attributes (a perfect image-only model);
- composed oracle: matches with all of the target's attributes, i.e. text-named values plus the
  reference's other values (what a model that composes both should reach; < 100 % only when another
  gallery image has exactly the target's attributes).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from .synthetic_attributes import ATTRIBUTE_NAMES
from .synthetic_text import parse_text

ORACLES = ("text", "image", "composed")


def oracle_queries(kind: str, captions: Sequence[str], reference: Mapping[str, str]) -> dict[str, str]:
    """The attribute values the oracle `kind` looks for in the gallery for one triplet."""
    named = parse_text(captions)
    if kind == "text":
        return named
    if kind == "image":
        return dict(reference)
    if kind == "composed":
        return {**reference, **named}
    raise ValueError(f"unknown oracle {kind!r}; expected one of {ORACLES}")


def oracle_recall(
    kind: str,
    triplets: Sequence[tuple[Sequence[str], Mapping[str, str], str]],
    gallery: Mapping[str, Mapping[str, str]],
    k_values: Sequence[int] = (1, 10),
) -> dict[str, float]:
    """Expected Recall@K in percent of oracle `kind`.

    Args:
        triplets: (captions, reference attributes, target id) per query.
        gallery: image id -> attributes; every target must be in it.
    """
    ids = list(gallery)
    position = {image_id: i for i, image_id in enumerate(ids)}
    table = {name: np.array([gallery[i][name] for i in ids]) for name in ATTRIBUTE_NAMES}
    hits = np.zeros(len(k_values))
    for captions, reference, target_id in triplets:
        if target_id not in position:
            raise KeyError(f"target {target_id!r} is not in the gallery")
        query = oracle_queries(kind, captions, reference)
        scores = sum((table[name] == value).astype(np.int32) for name, value in query.items())
        scores = scores if isinstance(scores, np.ndarray) else np.zeros(len(ids), dtype=np.int32)
        target_score = scores[position[target_id]]
        better = int((scores > target_score).sum())
        tied = int((scores == target_score).sum()) - 1
        hits += [min(max(k - better, 0), tied + 1) / (tied + 1) for k in k_values]
    return {f"recall@{k}": float(100.0 * h / max(len(triplets), 1)) for k, h in zip(k_values, hits)}
