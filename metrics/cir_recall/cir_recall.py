"""Recall@K for composed image retrieval (Fashion IQ protocol), computed from ranked gallery ids."""

import datasets
import evaluate

_DESCRIPTION = """
Recall@K for composed image retrieval: the percentage of queries whose target id is among the first K ids
of the query's ranked gallery list. A target missing from the gallery never appears in a ranking, so it
counts as a miss. Feed rankings whose ties are ordered pessimistically (a target after the items it ties
with), as `eval_cir.py` writes them, and the numbers equal those of `eval_cir.py`.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `list` of `str`): per query, gallery ids ranked best first (at least max(K) ids).
    references (`list` of `str`): per query, the target id.
    k_values (`list` of `int`, defaults to `[1, 5, 10, 50]`): the cut-offs K.
Returns:
    `dict`: `{"recall@K": percent}` for each K.
Examples:
    >>> metric = evaluate.load("metrics/cir_recall")
    >>> metric.compute(predictions=[["a", "b"], ["c", "d"]], references=["b", "c"], k_values=[1, 2])
    {'recall@1': 50.0, 'recall@2': 100.0}
"""

_CITATION = """
@inproceedings{wu2021fashioniq,
  title={Fashion IQ: A New Dataset Towards Retrieving Images by Natural Language Feedback},
  author={Wu, Hui and Gao, Yupeng and Guo, Xiaoxiao and Al-Halah, Ziad and Rennie, Steven and Grauman, Kristen and Feris, Rogerio},
  booktitle={CVPR},
  year={2021}
}
"""

DEFAULT_K_VALUES = (1, 5, 10, 50)


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class CirRecall(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Value("string")),
                    "references": datasets.Value("string"),
                }
            ),
        )

    def _compute(self, predictions, references, k_values=DEFAULT_K_VALUES):
        if len(predictions) == 0:
            raise ValueError("recall needs at least one query")
        for k in k_values:
            if k < 1:
                raise ValueError(f"recall@K needs K >= 1, got {k}")
        shortest = min(len(ranking) for ranking in predictions)
        if max(k_values) > shortest:
            raise ValueError(f"recall@{max(k_values)} needs rankings of at least {max(k_values)} ids; one has {shortest}")
        ranks = [_rank(ranking, target) for ranking, target in zip(predictions, references)]
        return {f"recall@{k}": 100.0 * sum(rank < k for rank in ranks) / len(ranks) for k in k_values}


def _rank(ranking, target):
    """0-based position of the target, or len(ranking) when it is absent (a miss at every K)."""
    if target not in ranking:
        return len(ranking)
    return ranking.index(target)
