"""The parts of the CIRR protocol that Fashion IQ lacks: Recall_subset over each query's image set, and the
test-split files of CIRR's evaluation server.

Recall_subset@K ranks only the query's `img_set_members` minus its reference image (5 images in CIRR); the
target's rank is pessimistic as everywhere: the number of other members scoring at least as high. Members
absent from the gallery cannot be scored and are counted in the protocol block.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from facap_io.atomic import write_json
from facap_io.paths import inside, plain_name
from facap_retrieval.ranking import Ranking, recall_at_k

from .data import ConfigData
from .protocol import CIRR_SET_COLUMN, CIRR_SUBSET_K_VALUES, PREDICTION_TOP_K, metric_key

SUBMISSION_VERSION = "rc2"
PAIR_ID_COLUMN = "pair_id"
SUBSET_PREDICTION_K = max(CIRR_SUBSET_K_VALUES)  # the server's recall_subset file lists 3 names per pair


@dataclass(frozen=True)
class SubsetRanking:
    """target_ranks: `(Q,)` pessimistic 0-based rank of each target within its subset (a miss ranks
    `SUBSET_PREDICTION_K` or more); empty when the targets are hidden. top: the best `SUBSET_PREDICTION_K`
    member ids of each query. members_not_in_gallery: members that could not be scored."""

    target_ranks: torch.Tensor
    top: list[list[str]]
    members_not_in_gallery: int


def rank_subsets(queries: torch.Tensor, gallery: torch.Tensor, score, data: ConfigData) -> SubsetRanking:
    """Rank each query's image set minus its reference: `queries` `(Q, V, D)`, `gallery` in `data.gallery_ids` order."""
    rows = {image_id: row for row, image_id in enumerate(data.gallery_ids)}
    columns = data.triplets.select_columns(["reference_id", "target_id", CIRR_SET_COLUMN])
    ranks, top, missing = [], [], 0
    for query, triplet in enumerate(columns):
        members = [m for m in dict.fromkeys(triplet[CIRR_SET_COLUMN]) if m != triplet["reference_id"]]
        missing += sum(m not in rows for m in members)
        members = [m for m in members if m in rows]
        if not members:
            scores = torch.empty(0)
        else:
            scores = score(queries[query : query + 1], gallery[[rows[m] for m in members]])[0].float().cpu()
        target = triplet["target_id"]
        if target in members:
            is_target = torch.tensor([m == target for m in members])
            ranks.append(int((scores >= scores[is_target]).sum()) - 1)
            # order the target after the members it ties with, as the full ranking does
            keys = torch.where(is_target, torch.nextafter(scores, scores.new_tensor(float("-inf"))), scores)
        else:
            ranks.append(max(len(members), SUBSET_PREDICTION_K))
            keys = scores
        order = keys.argsort(descending=True, stable=True)[:SUBSET_PREDICTION_K]
        top.append([members[i] for i in order.tolist()])
    hidden = data.hidden_targets
    return SubsetRanking(torch.empty(0, dtype=torch.long) if hidden else torch.tensor(ranks), top, missing)


def subset_recall(subsets: SubsetRanking) -> dict[str, float]:
    """Recall_subset@{1,2,3} in percent, keyed `recall_subset@K`."""
    recalls = recall_at_k(subsets.target_ranks, CIRR_SUBSET_K_VALUES)
    return {metric_key("recall_subset", k): recalls[f"recall@{k}"] for k in CIRR_SUBSET_K_VALUES}


def submission_file_names(config: str, split: str) -> tuple[str, str]:
    """The recall and recall_subset file names of one config and split."""
    return f"{config}.{split}.recall.json", f"{config}.{split}.recall_subset.json"


def write_submissions(
    folder: str | os.PathLike, split: str, data: ConfigData, ranking: Ranking, subsets: SubsetRanking
) -> list[Path]:
    """CIRR's server files: `{"version": "rc2", "metric": "recall", "<pairid>": [50 ids], ...}` and the same
    with `"metric": "recall_subset"` and the 3 best subset members."""
    pair_ids = [str(p) for p in data.triplets[PAIR_ID_COLUMN]]
    top = ranking.indices[:, :PREDICTION_TOP_K].tolist()
    recall = {str(pair): [data.gallery_ids[i] for i in row] for pair, row in zip(pair_ids, top)}
    subset = dict(zip(pair_ids, subsets.top))
    names = submission_file_names(plain_name(data.name, what="config"), plain_name(split, what="split"))
    payloads = ({"metric": "recall", **recall}, {"metric": "recall_subset", **subset})
    return [
        write_json(inside(folder, name, what="prediction file"), {"version": SUBMISSION_VERSION, **payload})
        for name, payload in zip(names, payloads)
    ]
