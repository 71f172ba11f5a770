"""A small retrieval index over candidate embeddings, and the on-disk embedding format it shares with the
evaluation's gallery cache.

On disk an index (or a cached gallery) is a folder with `embeddings.safetensors` (one tensor, `(N, D)`,
plus JSON metadata) and `ids.json` (the N gallery ids in row order). The safetensors metadata holds a hash
of the ids, so a folder whose two files do not belong together is refused instead of silently misread.

Backends: `exact` (chunked inner product + `torch.topk`, the default and the reference) and, with
`faiss-cpu` installed, `faiss-flat` (exact inner product), `faiss-ivf` (inverted lists; `nlist`,
`nprobe`) and `faiss-hnsw` (graph; `hnsw_m`, `ef_search`). The approximate ones trade recall for speed on
large catalogues: measure it with `recall_vs_exact`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from facap_retrieval.ranking import RetrievalError, rank_gallery

EMBEDDINGS_FILE = "embeddings.safetensors"
IDS_FILE = "ids.json"
BACKENDS = ("exact", "faiss-flat", "faiss-ivf", "faiss-hnsw")
_TENSOR_KEY = "embeddings"
_METADATA_KEY = "facap"


def _ids_hash(ids: Sequence[str]) -> str:
    return hashlib.sha256(json.dumps(list(ids)).encode()).hexdigest()


def _atomic_write(path: Path, write) -> None:
    """Write through `write(temp_path)` to a temporary file in the same folder, then rename into place."""
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        write(temp)
        os.replace(temp, path)
    finally:
        if os.path.exists(temp):
            os.unlink(temp)


def save_embeddings(directory: str | os.PathLike, embeddings: torch.Tensor, ids: Sequence[str], metadata: dict | None = None) -> Path:
    """Save `(N, ...)` embeddings and their N ids to `directory` (created if needed)."""
    ids = list(ids)
    if len(ids) != len(embeddings):
        raise RetrievalError(f"{len(ids)} ids for {len(embeddings)} embeddings")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    header = {_METADATA_KEY: json.dumps({**(metadata or {}), "ids_sha256": _ids_hash(ids)})}
    _atomic_write(directory / IDS_FILE, lambda temp: Path(temp).write_text(json.dumps(ids)))
    tensors = {_TENSOR_KEY: embeddings.detach().cpu().contiguous()}
    _atomic_write(directory / EMBEDDINGS_FILE, lambda temp: save_file(tensors, temp, metadata=header))
    return directory


def load_embeddings(directory: str | os.PathLike) -> tuple[torch.Tensor, list[str], dict]:
    """Load what `save_embeddings` wrote: `(embeddings, ids, metadata)`."""
    directory = Path(directory)
    for name in (EMBEDDINGS_FILE, IDS_FILE):
        if not (directory / name).is_file():
            raise RetrievalError(f"{directory} is not an embedding folder: {name} is missing")
    with safe_open(directory / EMBEDDINGS_FILE, framework="pt") as handle:
        metadata = json.loads((handle.metadata() or {}).get(_METADATA_KEY, "{}"))
        embeddings = handle.get_tensor(_TENSOR_KEY)
    ids = json.loads((directory / IDS_FILE).read_text())
    if metadata.get("ids_sha256") != _ids_hash(ids) or len(ids) != len(embeddings):
        raise RetrievalError(f"{directory}: {IDS_FILE} does not belong to {EMBEDDINGS_FILE} (ids hash mismatch)")
    return embeddings, ids, metadata


@dataclass(frozen=True)
class SearchResult:
    """`scores` and `indices` are `(num_queries, k)`, best first; `ids` the matching gallery ids.

    An approximate backend may find fewer than k items for a query: those slots hold index -1, id None.
    """

    scores: torch.Tensor
    indices: torch.Tensor
    ids: list[list[str | None]]


class CIRIndex:
    """Inner-product search over `(N, D)` unit-norm candidate embeddings with string ids."""

    def __init__(
        self,
        embeddings: torch.Tensor,
        ids: Sequence[str],
        backend: str = "exact",
        *,
        nlist: int | None = None,
        nprobe: int = 16,
        hnsw_m: int = 32,
        ef_search: int = 256,
    ):
        if backend not in BACKENDS:
            raise RetrievalError(f"unknown index backend {backend!r}; expected one of {', '.join(BACKENDS)}")
        if embeddings.ndim != 2 or len(embeddings) == 0:
            raise RetrievalError(f"an index needs (N, D) embeddings with N >= 1, got shape {tuple(embeddings.shape)}")
        self.ids = list(ids)
        if len(self.ids) != len(embeddings):
            raise RetrievalError(f"{len(self.ids)} ids for {len(embeddings)} embeddings")
        if len(set(self.ids)) != len(self.ids):
            raise RetrievalError("gallery ids must be unique")
        self.embeddings = embeddings.detach().float().cpu().contiguous()
        self.backend = backend
        self.options = {"nlist": nlist, "nprobe": nprobe, "hnsw_m": hnsw_m, "ef_search": ef_search}
        self._faiss_index = None if backend == "exact" else self._build_faiss()

    @classmethod
    def build(cls, embeddings: torch.Tensor, ids: Sequence[str], backend: str = "exact", **options: Any) -> "CIRIndex":
        """Build an index from a gallery's candidate embeddings (see `__init__` for the options)."""
        return cls(embeddings, ids, backend, **options)

    def __len__(self) -> int:
        return len(self.ids)

    def _build_faiss(self):
        try:
            import faiss
        except ImportError as error:  # an optional extra: name the fix
            raise RetrievalError(f"backend {self.backend!r} needs faiss: pip install 'facap[faiss]'") from error
        vectors = self.embeddings.numpy()
        size, dim = vectors.shape
        if self.backend == "faiss-flat":
            index = faiss.IndexFlatIP(dim)
        elif self.backend == "faiss-hnsw":
            index = faiss.IndexHNSWFlat(dim, self.options["hnsw_m"], faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efSearch = self.options["ef_search"]
        else:
            # faiss wants >= 39 training points per list; 4 sqrt(N) lists is its usual starting point.
            nlist = self.options["nlist"] or max(1, min(int(4 * math.sqrt(size)), size // 39))
            self.options["nlist"] = nlist
            index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
            index.train(vectors)
            index.nprobe = self.options["nprobe"]
        index.add(vectors)
        return index

    def search(self, query_embeddings: torch.Tensor, k: int) -> SearchResult:
        """The top `k` gallery items for each of the `(Q, D)` queries."""
        queries = query_embeddings.detach().float().cpu()
        if queries.ndim != 2 or queries.shape[1] != self.embeddings.shape[1]:
            raise RetrievalError(
                f"queries must have shape (Q, {self.embeddings.shape[1]}), got {tuple(queries.shape)}"
            )
        if not 1 <= k <= len(self):
            raise RetrievalError(f"k={k} must be between 1 and the index size ({len(self)})")
        if self._faiss_index is None:
            ranking = rank_gallery(queries, self.embeddings, k)
            scores, indices = ranking.scores, ranking.indices
        else:
            scores, indices = self._faiss_index.search(queries.contiguous().numpy(), k)
            scores, indices = torch.from_numpy(scores), torch.from_numpy(indices).long()
        ids = [[self.ids[i] if i >= 0 else None for i in row] for row in indices.tolist()]
        return SearchResult(scores, indices, ids)

    def save(self, directory: str | os.PathLike) -> Path:
        """Write the embeddings, ids and backend options to `directory` (safetensors + ids.json)."""
        return save_embeddings(directory, self.embeddings, self.ids, {"backend": self.backend, "options": self.options})

    @classmethod
    def load(cls, directory: str | os.PathLike, backend: str | None = None, **options: Any) -> "CIRIndex":
        """Load a saved index; the backend and its options default to the saved ones (faiss is rebuilt)."""
        embeddings, ids, metadata = load_embeddings(directory)
        saved = {key: value for key, value in metadata.get("options", {}).items() if value is not None}
        return cls(embeddings, ids, backend or metadata.get("backend", "exact"), **{**saved, **options})


def recall_vs_exact(index: CIRIndex, query_embeddings: torch.Tensor, k: int) -> float:
    """The share (0..1) of the exact top-k items that `index` returns, averaged over the queries."""
    exact = rank_gallery(query_embeddings.float().cpu(), index.embeddings, k).indices
    found = index.search(query_embeddings, k).indices
    overlap = [len(set(a) & set(b)) for a, b in zip(exact.tolist(), found.tolist())]
    return sum(overlap) / (k * len(overlap))
