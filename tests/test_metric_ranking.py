"""Recall and ranking on hand-built score matrices with known answers (ties, exclusion, missing targets)."""

from __future__ import annotations

import pytest
import torch

from facap_retrieval.ranking import NO_INDEX, RetrievalError, rank_gallery, rank_scores, recall_at_k


def _scores(rows):
    return torch.tensor(rows, dtype=torch.float32)


def test_known_ranks_and_recalls():
    scores = _scores(
        [
            [0.9, 0.1, 0.2, 0.3, 0.0],  # target 0 is first
            [0.5, 0.8, 0.9, 0.1, 0.0],  # target 1 is second
            [0.5, 0.8, 0.9, 0.1, 0.0],  # target 4 is last
        ]
    )
    ranking = rank_scores(scores, k=3, targets=torch.tensor([0, 1, 4]))
    assert ranking.target_ranks.tolist() == [0, 1, 3]  # 3 == k: not within the top 3
    assert ranking.indices[1].tolist() == [2, 1, 0]
    recalls = recall_at_k(ranking.target_ranks, [1, 2, 3], max_rank=ranking.k)
    assert recalls == pytest.approx({"recall@1": 100 / 3, "recall@2": 200 / 3, "recall@3": 200 / 3})


def test_ties_never_count_in_the_targets_favour():
    scores = _scores(
        [
            [0.7, 0.7, 0.1, 0.0],  # target tied for first with one item: rank 1
            [0.7, 0.7, 0.7, 0.0],  # tied with two items: rank 2
            [0.7, 0.9, 0.7, 0.7],  # one better, two tied: rank 3
        ]
    )
    for targets in ([0, 2, 0], [1, 0, 3]):
        ranking = rank_scores(scores.clone(), k=3, targets=torch.tensor(targets))
        assert ranking.target_ranks.tolist() == [1, 2, 3]
        assert recall_at_k(ranking.target_ranks, [1, 2, 3]) == pytest.approx(
            {"recall@1": 0.0, "recall@2": 100 / 3, "recall@3": 200 / 3}
        )


def test_target_is_listed_after_its_ties_only():
    just_below = torch.nextafter(torch.tensor(0.5), torch.tensor(0.0)).item()
    scores = _scores([[just_below, 0.5, 0.5, 0.1]])  # an item one float below the target ranks after it
    ranking = rank_scores(scores, k=3, targets=torch.tensor([2]))
    assert ranking.target_ranks.tolist() == [1]
    assert ranking.indices.tolist() == [[1, 2, 0]]


def test_reference_exclusion():
    scores = _scores([[0.9, 0.8, 0.1], [0.9, 0.8, 0.1]])
    targets = torch.tensor([1, 0])
    exclude = torch.tensor([0, 0])  # query 2's reference is its own target
    kept = rank_scores(scores.clone(), k=2, targets=targets)
    assert kept.target_ranks.tolist() == [1, 0]
    excluded = rank_scores(scores.clone(), k=2, targets=targets, exclude=exclude)
    assert excluded.target_ranks.tolist() == [0, 2]  # the excluded target is a miss
    assert 0 not in excluded.indices.flatten().tolist()


def test_missing_target_is_a_miss():
    ranking = rank_scores(_scores([[0.9, 0.1], [0.9, 0.1]]), k=1, targets=torch.tensor([0, NO_INDEX]))
    assert ranking.target_ranks.tolist() == [0, 1]
    assert recall_at_k(ranking.target_ranks, [1]) == {"recall@1": 50.0}


def _naive_ranks(scores, targets, exclude, k):
    ranks = []
    for row, target, ref in zip(scores.tolist(), targets.tolist(), exclude.tolist()):
        if target == NO_INDEX or target == ref:
            ranks.append(k)
            continue
        better = sum(1 for j, s in enumerate(row) if j not in (target, ref) and s >= row[target])
        ranks.append(min(better, k))
    return ranks


@pytest.mark.parametrize("k", [1, 5, 29])
def test_chunked_ranking_matches_a_naive_count(k):
    generator = torch.Generator().manual_seed(k)
    # Few distinct values so that ties are everywhere, boundary ties included.
    queries = torch.randint(0, 3, (37, 4), generator=generator).float()
    gallery = torch.randint(0, 3, (30, 4), generator=generator).float()
    targets = torch.randint(0, 30, (37,), generator=generator)
    targets[::7] = NO_INDEX
    exclude = torch.randint(0, 30, (37,), generator=generator)
    exclude[::5] = targets[::5]
    ranking = rank_gallery(queries, gallery, k, targets=targets, exclude=exclude, chunk_bytes=4 * 30 * 4)
    assert ranking.target_ranks.tolist() == _naive_ranks(queries @ gallery.T, targets, exclude, k)
    whole = rank_gallery(queries, gallery, k, targets=targets, exclude=exclude)
    assert torch.equal(whole.target_ranks, ranking.target_ranks)
    assert torch.equal(whole.scores, ranking.scores)
    assert not (ranking.indices == exclude[:, None]).any()
    for row, rank in enumerate(ranking.target_ranks.tolist()):  # the lists put each target at its rank
        if rank < k:
            assert ranking.indices[row, rank] == targets[row]


def test_k_equal_to_gallery_is_exact():
    scores = _scores([[0.1, 0.2, 0.3]])
    ranking = rank_scores(scores, k=3, targets=torch.tensor([0]))
    assert ranking.target_ranks.tolist() == [2]


@pytest.mark.parametrize(
    ("k", "exclude", "message"),
    [
        (4, None, "k=4 is larger than the gallery (3 images)"),
        (3, torch.tensor([0]), "excluded as the reference"),
        (0, None, "k must be >= 1"),
    ],
)
def test_bad_k(k, exclude, message):
    with pytest.raises(RetrievalError, match=message.replace("(", r"\(").replace(")", r"\)")):
        rank_scores(_scores([[0.1, 0.2, 0.3]]), k=k, targets=torch.tensor([0]), exclude=exclude)


def test_bad_inputs():
    gallery = torch.eye(3)
    with pytest.raises(RetrievalError, match="query embeddings contain NaN"):
        rank_gallery(torch.full((1, 3), float("nan")), gallery, 1)
    with pytest.raises(RetrievalError, match=r"targets must have shape \(2,\)"):
        rank_gallery(torch.eye(3)[:2], gallery, 1, targets=torch.tensor([0]))
    with pytest.raises(RetrievalError, match="no queries"):
        rank_gallery(torch.empty(0, 3), gallery, 1)
    with pytest.raises(RetrievalError, match="recall@10 needs rankings of at least 10"):
        recall_at_k(torch.tensor([0]), [10], max_rank=5)
    with pytest.raises(RetrievalError, match="at least one query"):
        recall_at_k(torch.empty(0, dtype=torch.long), [1])
