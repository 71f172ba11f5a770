"""The visual report's choice of queries: failures first, then hits, each in data order."""

from __future__ import annotations

import torch

from facap_retrieval.ranking import Ranking
from facap_retrieval.report import sample_queries


def _ranking(ranks):
    size = len(ranks)
    return Ranking(torch.zeros(size, 10, dtype=torch.long), torch.zeros(size, 10), torch.tensor(ranks), 10)


def test_failures_come_first():
    ranking = _ranking([0, 12, 3, 10, 9, 10])  # rank 10 (= k) means "not within the top 10"
    assert sample_queries(ranking, num_samples=10, shown=10) == [1, 3, 5, 0, 2, 4]
    assert sample_queries(ranking, num_samples=2, shown=10) == [1, 3]
    assert sample_queries(ranking, num_samples=3, shown=5) == [1, 3, 4]  # rank 9 fails when 5 are shown


def test_hidden_targets_show_the_first_queries():
    hidden = Ranking(torch.zeros(4, 10, dtype=torch.long), torch.zeros(4, 10), torch.empty(0, dtype=torch.long), 10)
    assert sample_queries(hidden, num_samples=3, shown=10) == [0, 1, 2]
