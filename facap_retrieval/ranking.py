"""Exact inner-product ranking and the one Recall@K implementation of the project.

Ranking keeps only what recall and prediction files need: the top-k gallery indices and scores per query
and the target's rank. Scores are computed in query chunks whose `(rows, N)` score block stays within a
memory budget (1 GiB by default), so the memory never grows with Q x N.

Rank rule (pessimistic, so that ties never count in the target's favour): the 0-based rank of a target is
the number of *other* admissible gallery items whose score is >= the target's score. A query hits at K
when that rank is < K. A target that is missing from the gallery, or that is the excluded reference, is a
miss at every K.

The rank is exact without a full pass over the scores: the top (k + 1) items of a row contain every item
scoring >= the target whenever the target's rank is below k, and otherwise all k + 1 of them score >= it,
i.e. a miss for every K <= k. Within the kept items a target is ordered after the items it ties with, so
the returned top-k lists agree with the ranks (a metric fed those lists gives the same recall).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from facap_io.errors import FacapError

DEFAULT_K_VALUES = (1, 5, 10, 50)
NO_INDEX = -1  # marks "no target in the gallery" / "nothing to exclude" in index tensors
DEFAULT_CHUNK_BYTES = 2**30  # score-block budget per query chunk: ~2,600 queries of a 100k gallery

ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class RetrievalError(FacapError):
    """Bad retrieval input: k larger than the gallery, shape mismatches, non-finite embeddings."""


@dataclass(frozen=True)
class Ranking:
    """Top-k results of a set of queries against one gallery.

    indices: `(num_queries, k)` gallery row indices, best first.
    scores: `(num_queries, k)` their scores.
    target_ranks: `(num_queries,)` pessimistic 0-based rank of each target; `k` means "not within the
        top k" (beyond k, missing from the gallery, or excluded). Empty when no targets were given.
    k: the number of results kept per query.
    """

    indices: torch.Tensor
    scores: torch.Tensor
    target_ranks: torch.Tensor
    k: int


def inner_product(queries: torch.Tensor, gallery: torch.Tensor) -> torch.Tensor:
    """Scores of unit-norm embeddings: `(Q, D) x (N, D) -> (Q, N)`."""
    return queries @ gallery.T


def rank_scores(
    scores: torch.Tensor,
    k: int,
    targets: torch.Tensor | None = None,
    exclude: torch.Tensor | None = None,
) -> Ranking:
    """Rank one block of scores `(Q, N)`; `targets`/`exclude` are `(Q,)` gallery indices or NO_INDEX.

    `scores` is modified in place where an item is excluded (set to -inf).
    """
    num_queries, gallery_size = scores.shape
    admissible = gallery_size - (1 if exclude is not None else 0)
    if k < 1:
        raise RetrievalError(f"k must be >= 1, got {k}")
    if k > admissible:
        excluded = ", one per query excluded as the reference" if exclude is not None else ""
        raise RetrievalError(f"k={k} is larger than the gallery ({gallery_size} images{excluded})")
    rows = torch.arange(num_queries, device=scores.device)
    if exclude is not None:
        has_exclusion = exclude != NO_INDEX
        scores[rows[has_exclusion], exclude[has_exclusion]] = float("-inf")
    kept = min(k + 1, gallery_size)
    top_scores, top_indices = torch.topk(scores, kept, dim=1)
    if targets is None:
        return Ranking(top_indices[:, :k], top_scores[:, :k], torch.empty(0, dtype=torch.long), k)
    present = targets != NO_INDEX
    if exclude is not None:
        present &= targets != exclude
    targets = torch.where(present, targets, NO_INDEX)
    target_scores = scores[rows, targets.clamp(min=0)]
    # Kept items (the target included) scoring >= the target: exact while the target ranks below k.
    at_least_target = (top_scores >= target_scores[:, None]).sum(dim=1)
    target_ranks = torch.where(present, (at_least_target - 1).clamp(max=k), k)
    # Order each target after the items it ties with, so the lists agree with the ranks: its sort key is
    # nudged just below its score, and a stable sort keeps topk's order among equal keys.
    is_target = top_indices == targets[:, None]
    nudged = torch.nextafter(top_scores, top_scores.new_tensor(float("-inf")))
    order = torch.where(is_target, nudged, top_scores).argsort(dim=1, descending=True, stable=True)
    top_scores, top_indices = top_scores.gather(1, order), top_indices.gather(1, order)
    return Ranking(top_indices[:, :k], top_scores[:, :k], target_ranks.cpu(), k)


def _all_finite(tensor: torch.Tensor) -> bool:
    # min and max propagate NaN and show infinities, without a full-size boolean temporary
    low, high = torch.aminmax(tensor)
    return bool(torch.isfinite(low) and torch.isfinite(high))


def rank_gallery(
    queries: torch.Tensor,
    gallery: torch.Tensor,
    k: int,
    *,
    targets: torch.Tensor | None = None,
    exclude: torch.Tensor | None = None,
    score_fn: ScoreFn = inner_product,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
) -> Ranking:
    """Rank `gallery` for every query, in query chunks whose score block stays within `chunk_bytes`.

    `queries` and `gallery` are whatever `score_fn` accepts (default: `(Q, D)` and `(N, D)` unit vectors);
    the first dimension indexes queries and gallery items.
    """
    num_queries, gallery_size = len(queries), len(gallery)
    for name, tensor in (("targets", targets), ("exclude", exclude)):
        if tensor is not None and tensor.shape != (num_queries,):
            raise RetrievalError(f"{name} must have shape ({num_queries},), got {tuple(tensor.shape)}")
    for name, tensor in (("query", queries), ("gallery", gallery)):
        if tensor.is_floating_point() and tensor.numel() and not _all_finite(tensor):
            raise RetrievalError(f"the {name} embeddings contain NaN or infinite values")
    if num_queries == 0:
        raise RetrievalError("there are no queries to rank")
    rows_per_chunk = max(1, chunk_bytes // (4 * max(gallery_size, 1)))
    parts = []
    for start in range(0, num_queries, rows_per_chunk):
        block = slice(start, start + rows_per_chunk)
        scores = score_fn(queries[block], gallery).float()
        parts.append(
            rank_scores(
                scores,
                k,
                None if targets is None else targets[block].to(scores.device),
                None if exclude is None else exclude[block].to(scores.device),
            )
        )
    return Ranking(
        torch.cat([p.indices.cpu() for p in parts]),
        torch.cat([p.scores.cpu() for p in parts]),
        torch.cat([p.target_ranks for p in parts]),
        k,
    )


def recall_at_k(target_ranks: torch.Tensor, k_values: Sequence[int], max_rank: int | None = None) -> dict[str, float]:
    """Recall@K in percent: the share of queries whose (pessimistic, 0-based) target rank is < K.

    `max_rank` is the `k` of the ranking the ranks came from; a K above it cannot be answered.
    """
    if len(target_ranks) == 0:
        raise RetrievalError("recall needs at least one query with a known target")
    recalls = {}
    for k in k_values:
        if max_rank is not None and k > max_rank:
            raise RetrievalError(f"recall@{k} needs rankings of at least {k} items, got {max_rank}")
        if k < 1:
            raise RetrievalError(f"recall@K needs K >= 1, got {k}")
        recalls[f"recall@{k}"] = 100.0 * int((target_ranks < k).sum()) / len(target_ranks)
    return recalls
