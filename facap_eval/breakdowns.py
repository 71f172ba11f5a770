"""Recall per bucket of queries: by the length of the joined modification text (`text-length`) or by the
number of attributes the triplet changes (`num-changes`, a `num_changes` column of the triplet config).

Shape in results.json, per breakdown:
`{"edges": [...] or None, "buckets": [labels], "configs": {config: {label: {"num_queries": n,
"recall@K": ...}}}, "average": {label: {...}}}`; `average` pools every query of a bucket over the configs
(each query counts once, so a config with more queries in a bucket weighs more). An empty bucket has
`num_queries` 0 and recalls None. The recall is the one of `facap_retrieval.ranking.recall_at_k`.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch

from facap_retrieval.ranking import recall_at_k

from .data import ConfigData
from .encoding import query_texts
from .protocol import NUM_CHANGES_COLUMN, TEXT_LENGTH, Protocol

UNKNOWN = "unknown"  # num-changes bucket of triplets whose count is missing


def text_length_buckets(edges: Sequence[int]) -> list[str]:
    """Labels of the word-count buckets: edges (8, 12, 16) -> `0-7`, `8-11`, `12-15`, `16+`."""
    lows = (0, *edges)
    return [f"{low}-{high - 1}" for low, high in zip(lows, edges)] + [f"{edges[-1]}+"]


def text_length_bucket(num_words: int, edges: Sequence[int]) -> str:
    labels = text_length_buckets(edges)
    return labels[sum(num_words >= edge for edge in edges)]


def query_buckets(kind: str, data: ConfigData, protocol: Protocol) -> list[str]:
    """The bucket label of every query of `data`, in row order."""
    if kind == TEXT_LENGTH:
        captions = zip(data.triplets["captions"], data.triplets["reference_id"])
        words = [len(query_texts(c, protocol.caption_join, name)[0].split()) for c, name in captions]
        return [text_length_bucket(n, protocol.text_length_edges) for n in words]
    return [UNKNOWN if n is None else str(int(n)) for n in data.triplets[NUM_CHANGES_COLUMN]]


def breakdown(
    kind: str,
    labels: Mapping[str, list[str]],
    target_ranks: Mapping[str, torch.Tensor],
    k_values: Mapping[str, Sequence[int]],
    protocol: Protocol,
) -> dict:
    """One breakdown's results.json block from each config's query labels, target ranks and K values."""
    if kind == TEXT_LENGTH:
        edges, buckets = list(protocol.text_length_edges), text_length_buckets(protocol.text_length_edges)
    else:
        edges, buckets = None, _count_buckets({label for values in labels.values() for label in values})
    configs = {
        name: {b: _bucket_recall(target_ranks[name], labels[name], b, k_values[name]) for b in buckets} for name in labels
    }
    shared_k = [k for k in next(iter(k_values.values())) if all(k in ks for ks in k_values.values())]
    pooled_ranks = torch.cat([target_ranks[name] for name in labels])
    pooled_labels = [label for name in labels for label in labels[name]]
    average = {b: _bucket_recall(pooled_ranks, pooled_labels, b, shared_k) for b in buckets}
    return {"edges": edges, "buckets": buckets, "configs": configs, "average": average}


def _count_buckets(found: set[str]) -> list[str]:
    counts = sorted((label for label in found if label != UNKNOWN), key=int)
    return counts + ([UNKNOWN] if UNKNOWN in found else [])


def _bucket_recall(ranks: torch.Tensor, labels: list[str], bucket: str, k_values: Sequence[int]) -> dict:
    rows = torch.tensor([label == bucket for label in labels], dtype=torch.bool)
    count = int(rows.sum())
    if count == 0:
        return {"num_queries": 0, **{f"recall@{k}": None for k in k_values}}
    return {"num_queries": count, **recall_at_k(ranks[rows], k_values)}

