"""Retrieval over embeddings: exact ranking and the one Recall@K (`ranking`), the on-disk index (`index`), the
embedding files it and the cache write and map (`vectors`), the gallery-embedding cache keyed by model and
data fingerprints (`cache`) and the visual report (`report`).

It imports no model and no trainer: embeddings come in as tensors, images as dataset rows.
"""

from .index import CIRIndex, SearchResult, load_embeddings, recall_vs_exact, save_embeddings
from .ranking import DEFAULT_K_VALUES, NO_INDEX, Ranking, RetrievalError, rank_gallery, rank_scores, recall_at_k

__all__ = [
    "CIRIndex",
    "DEFAULT_K_VALUES",
    "NO_INDEX",
    "Ranking",
    "RetrievalError",
    "SearchResult",
    "load_embeddings",
    "rank_gallery",
    "rank_scores",
    "recall_at_k",
    "recall_vs_exact",
    "save_embeddings",
]
