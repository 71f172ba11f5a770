"""A retrieval index over candidate embeddings, the on-disk index folder, and the embedding format it shares
with the evaluation's gallery cache.

Backends: `exact` (chunked inner product + `torch.topk`, the default and the reference) and, with `faiss-cpu`
installed, `faiss-flat` (exact inner product), `faiss-ivf` (inverted lists; `nlist`, `nprobe`), `faiss-ivfpq`
(inverted lists of product-quantized codes: `m` bytes per vector at `nbits=8`, instead of `4 D` for fp32;
`nlist`, `nprobe`, `m`, `nbits`, `rerank`) and `faiss-hnsw` (graph; `hnsw_m`, `ef_search`). The approximate
ones trade recall for speed or memory on large catalogues: measure it with `recall_vs_exact`.

IVF-PQ re-ranking (`rerank=R`): the codes pick a shortlist of `R k` candidates and their stored fp32 embeddings,
memory-mapped from the folder, re-score it exactly. The codes stay the only per-vector memory the index holds;
the embeddings sit on disk and only the shortlist's rows are read. A PQ code's score error is what loses
recall: the exact top k of a large gallery are near-ties, and no code of 4 bits a dimension orders them well
(docs/scaling.md), while a shortlist a few times k long still holds them all.

An embedding folder (a cached gallery) holds `embeddings.safetensors` (one `(N, D)` tensor plus JSON metadata
that includes a hash of the ids) and `ids.json` (the N gallery ids in row order), so a folder whose two files
do not belong together is refused instead of silently misread.

An index folder holds `index.json` (the manifest: backend and every parameter, embedding width, size, ids hash,
and what the index was built from: model fingerprint, dataset, config, split, gallery fingerprint), `ids.json`,
`index.faiss` for the FAISS backends (FAISS's own binary format, read by `faiss.read_index`; it carries data,
never code) and `embeddings.safetensors` when the index keeps its fp32 embeddings (always for `exact` and for a
re-ranking IVF-PQ; for another FAISS backend only when asked). A loaded index maps that file rather than
reading it (`facap_retrieval.vectors`), and a builder spills the rows it keeps to a temporary file, so neither
holds a large gallery's fp32 embeddings in memory. A reader refuses a folder built by another model or of
another width (`check_index`, `CIRIndex.load(..., expect_model=...)`), naming both.

Folders are written whole: built in a hidden sibling and swapped in, so a killed write never leaves half an
index, and an existing folder that holds anything but an index or embeddings is never replaced.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch
from safetensors import safe_open

from facap_io.atomic import staged_folder
from facap_retrieval.ranking import RetrievalError, rank_gallery
from facap_retrieval.vectors import RowSpill, chunks_of, map_rows, write_rows

EMBEDDINGS_FILE = "embeddings.safetensors"
IDS_FILE = "ids.json"
MANIFEST_FILE = "index.json"
FAISS_FILE = "index.faiss"
INDEX_FORMAT = "facap-index-v2"
BACKENDS = ("exact", "faiss-flat", "faiss-ivf", "faiss-ivfpq", "faiss-hnsw")
# The parameters each backend uses; the others are not recorded for it.
BACKEND_PARAMETERS = {
    "exact": (),
    "faiss-flat": (),
    "faiss-ivf": ("nlist", "nprobe"),
    "faiss-ivfpq": ("nlist", "nprobe", "m", "nbits", "rerank"),
    "faiss-hnsw": ("hnsw_m", "ef_search"),
}
# Parameters that only steer the search: a loaded index takes new values without being rebuilt.
SEARCH_PARAMETERS = ("nprobe", "ef_search", "rerank")
# FAISS's k-means wants this many training points per centroid; fewer trains poorer lists.
_POINTS_PER_CENTROID = 39
# Default IVF-PQ code: one byte per DIMS_PER_CODE dimensions (1/12 of fp32 at 3), see docs/scaling.md.
DIMS_PER_CODE = 3
_TENSOR_KEY = "embeddings"
_METADATA_KEY = "facap"


class IndexMismatchError(RetrievalError):
    """An index folder built by another model, for another embedding width or from another gallery."""


def _ids_hash(ids: Sequence[str]) -> str:
    return hashlib.sha256(json.dumps(list(ids)).encode()).hexdigest()


# ------------------------------------------------------------------------------------------ embedding folders
def check_destination(directory: str | os.PathLike) -> None:
    """Refuse (RetrievalError) a destination that is not ours to replace: a file, or a folder holding anything
    but an index or embeddings. Called by every save, and by a builder before it starts encoding."""
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise RetrievalError(f"{directory} exists and is not a folder")
    if directory.is_dir() and any(directory.iterdir()):
        if not ((directory / MANIFEST_FILE).is_file() or (directory / EMBEDDINGS_FILE).is_file()):
            raise RetrievalError(
                f"{directory} exists and holds files that are not an index: choose a new or empty folder"
            )


def _write_embeddings(folder: Path, embeddings: torch.Tensor, ids: Sequence[str], metadata: dict) -> None:
    header = {_METADATA_KEY: json.dumps({**metadata, "ids_sha256": _ids_hash(ids)})}
    (folder / IDS_FILE).write_text(json.dumps(list(ids)))
    write_rows(folder / EMBEDDINGS_FILE, chunks_of(embeddings), tuple(embeddings.shape), embeddings.dtype,
               key=_TENSOR_KEY, metadata=header)  # fmt: skip


def save_embeddings(directory: str | os.PathLike, embeddings: torch.Tensor, ids: Sequence[str], metadata: dict | None = None) -> Path:
    """Save `(N, ...)` embeddings and their N ids as the folder `directory`, replacing it whole."""
    ids = list(ids)
    if len(ids) != len(embeddings):
        raise RetrievalError(f"{len(ids)} ids for {len(embeddings)} embeddings")
    directory = Path(directory)
    check_destination(directory)
    with staged_folder(directory) as staging:
        _write_embeddings(staging, embeddings, ids, metadata or {})
    return directory


def _read_ids(directory: Path, expected_hash: str | None) -> list[str]:
    ids = json.loads((directory / IDS_FILE).read_text())
    if expected_hash != _ids_hash(ids):
        raise RetrievalError(f"{directory}: {IDS_FILE} does not belong to the folder's index (ids hash mismatch)")
    return ids


def load_embeddings(directory: str | os.PathLike) -> tuple[torch.Tensor, list[str], dict]:
    """Load what `save_embeddings` wrote: `(embeddings, ids, metadata)`."""
    directory = Path(directory)
    for name in (EMBEDDINGS_FILE, IDS_FILE):
        if not (directory / name).is_file():
            raise RetrievalError(f"{directory} is not an embedding folder: {name} is missing")
    with safe_open(directory / EMBEDDINGS_FILE, framework="pt") as handle:
        metadata = json.loads((handle.metadata() or {}).get(_METADATA_KEY, "{}"))
        embeddings = handle.get_tensor(_TENSOR_KEY)
    ids = _read_ids(directory, metadata.get("ids_sha256"))
    if len(ids) != len(embeddings):
        raise RetrievalError(f"{directory}: {IDS_FILE} does not belong to {EMBEDDINGS_FILE} ({len(ids)} ids, {len(embeddings)} rows)")
    return embeddings, ids, metadata


# ----------------------------------------------------------------------------------------------- options
@dataclass(frozen=True)
class IndexOptions:
    """The backend and its parameters. `None` means "chosen from the gallery size and width when built";
    the built index records the chosen values.

    nlist: inverted lists (IVF, IVF-PQ; default 4 sqrt(N), at most N / 39); nprobe: lists searched per query;
    m: PQ sub-quantizers, a divisor of the width D (default the largest divisor <= D / 3); nbits: bits per
    PQ code (default 8, fewer for a gallery under 256 vectors); rerank: IVF-PQ re-scores the `rerank * k`
    best candidates by code against the kept embeddings (0: off); hnsw_m, ef_search: HNSW graph degree and
    search breadth.
    """

    backend: str = "exact"
    nlist: int | None = None
    nprobe: int = 16
    m: int | None = None
    nbits: int | None = None
    hnsw_m: int = 32
    ef_search: int = 256
    rerank: int = 0

    def __post_init__(self):
        if self.backend not in BACKENDS:
            raise RetrievalError(f"unknown index backend {self.backend!r}; expected one of {', '.join(BACKENDS)}")
        for name in ("nlist", "nprobe", "m", "nbits", "hnsw_m", "ef_search"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise RetrievalError(f"index option {name}={value!r} must be a positive integer")
        if self.nbits is not None and self.nbits > 16:
            raise RetrievalError(f"index option nbits={self.nbits} must be at most 16")
        if not isinstance(self.rerank, int) or isinstance(self.rerank, bool) or self.rerank < 0:
            raise RetrievalError(f"index option rerank={self.rerank!r} must be 0 (off) or a positive integer")
        if self.rerank and self.backend != "faiss-ivfpq":
            raise RetrievalError(f"rerank={self.rerank} applies to faiss-ivfpq only: {self.backend} scores exactly already")

    @property
    def needs_embeddings(self) -> bool:
        """Whether searching reads the fp32 embeddings (exact search, IVF-PQ re-ranking)."""
        return self.backend == "exact" or self.rerank > 0

    def parameters(self) -> dict[str, Any]:
        """The parameters this backend uses, by name."""
        return {name: getattr(self, name) for name in BACKEND_PARAMETERS[self.backend]}

    def resolved(self, size: int, dim: int) -> "IndexOptions":
        """These options with every `None` chosen for a gallery of `size` vectors of width `dim`, checked
        against it: an error names the option and the limit."""
        chosen = {}
        if "nlist" in self.parameters():
            chosen["nlist"] = self.nlist or max(1, min(int(4 * math.sqrt(size)), size // _POINTS_PER_CENTROID))
            if chosen["nlist"] > size:
                raise RetrievalError(f"nlist={chosen['nlist']} exceeds the gallery size ({size}); choose nlist <= {size}")
        if self.backend == "faiss-ivfpq":
            chosen["m"] = self.m or max(d for d in range(1, dim + 1) if dim % d == 0 and d <= max(1, dim // DIMS_PER_CODE))
            if dim % chosen["m"]:
                raise RetrievalError(f"m={chosen['m']} must divide the embedding width {dim}")
            chosen["nbits"] = self.nbits or max(1, min(8, int(math.log2(size))))
            if 2 ** chosen["nbits"] > size:
                raise RetrievalError(
                    f"nbits={chosen['nbits']} trains {2 ** chosen['nbits']} centroids per sub-quantizer but the gallery "
                    f"has {size} vectors; choose nbits <= {int(math.log2(size))} or another backend"
                )
        return replace(self, **chosen)

    @classmethod
    def from_record(cls, backend: str, parameters: dict) -> "IndexOptions":
        known = {f.name for f in fields(cls)}
        return cls(backend=backend, **{k: v for k, v in parameters.items() if k in known and v is not None})


@dataclass(frozen=True)
class IndexSource:
    """What an index was built from. `model_fingerprint` is `facap_retrieval.cache.model_fingerprint` (weights,
    config, image processing); `gallery_fingerprint` is `facap_retrieval.cache.gallery_fingerprint` (ids and
    image bytes). Any field may be None for an index built from bare tensors."""

    model_fingerprint: str | None = None
    model: str | None = None
    dataset: str | None = None
    config: str | None = None
    split: str | None = None
    gallery_fingerprint: str | None = None


@dataclass(frozen=True)
class IndexManifest:
    """The contents of `index.json`: enough to accept or refuse a folder without reading its vectors."""

    directory: Path
    backend: str
    parameters: dict
    embedding_dim: int
    count: int
    ids_sha256: str
    source: IndexSource = field(default_factory=IndexSource)
    has_embeddings: bool = True
    format: str = INDEX_FORMAT

    @classmethod
    def read(cls, directory: str | os.PathLike) -> "IndexManifest":
        """The manifest of an index folder; a folder from before manifests (embeddings and ids only) reads as
        one with no recorded source."""
        directory = Path(directory)
        if (directory / MANIFEST_FILE).is_file():
            return cls._from_json(directory)
        if (directory / EMBEDDINGS_FILE).is_file() and (directory / IDS_FILE).is_file():
            return cls._from_embeddings(directory)
        raise RetrievalError(f"{directory} is not an index folder: {MANIFEST_FILE} is missing")

    @classmethod
    def _from_json(cls, directory: Path) -> "IndexManifest":
        try:
            record = json.loads((directory / MANIFEST_FILE).read_text())
            if record.get("format") != INDEX_FORMAT:
                raise RetrievalError(f"{directory / MANIFEST_FILE} has format {record.get('format')!r}, expected {INDEX_FORMAT!r}")
            return cls(
                directory=directory, backend=record["backend"], parameters=dict(record["parameters"]),
                embedding_dim=int(record["embedding_dim"]), count=int(record["count"]),
                ids_sha256=record["ids_sha256"], source=IndexSource(**record.get("source", {})),
                has_embeddings=bool(record["has_embeddings"]),
            )  # fmt: skip
        except (KeyError, TypeError, ValueError) as error:
            if isinstance(error, RetrievalError):
                raise
            raise RetrievalError(f"{directory / MANIFEST_FILE} is not a valid index manifest: {error}") from None

    @classmethod
    def _from_embeddings(cls, directory: Path) -> "IndexManifest":
        with safe_open(directory / EMBEDDINGS_FILE, framework="pt") as handle:
            metadata = json.loads((handle.metadata() or {}).get(_METADATA_KEY, "{}"))
            count, dim = handle.get_slice(_TENSOR_KEY).get_shape()[:2]
        return cls(directory, metadata.get("backend", "exact"), dict(metadata.get("options", {})), dim, count,
                   metadata.get("ids_sha256", ""), format="embeddings-only")  # fmt: skip

    def to_json(self) -> dict:
        record = {key: value for key, value in asdict(self).items() if key != "directory"}
        return {"format": record.pop("format"), **record}

    def check(self, *, model_fingerprint: str | None = None, embedding_dim: int | None = None,
              gallery_fingerprint: str | None = None, model: str | None = None) -> "IndexManifest":  # fmt: skip
        """Refuse (IndexMismatchError naming both sides) an index whose recorded width, model fingerprint or
        gallery fingerprint differs from the given ones; a `None` expectation is not checked. `model` names
        the model in use in the message."""
        recorded = self.source
        built_by = _describe(recorded.model or "an unnamed model", recorded.model_fingerprint, self.embedding_dim)
        in_use = _describe(model or "the model in use", model_fingerprint, embedding_dim)
        rebuild = "rebuild it with `python -m facap_eval.build_index`"
        if embedding_dim is not None and embedding_dim != self.embedding_dim:
            raise IndexMismatchError(
                f"index {self.directory} holds {self.embedding_dim}-d embeddings built by {built_by}, but {in_use} "
                f"gives {embedding_dim}-d embeddings: {rebuild}"
            )
        if model_fingerprint is not None and recorded.model_fingerprint != model_fingerprint:
            reason = "records no model fingerprint (written by an older version)" if recorded.model_fingerprint is None else f"was built by {built_by}"
            raise IndexMismatchError(f"index {self.directory} {reason}, not by {in_use}: {rebuild}")
        if gallery_fingerprint is not None and recorded.gallery_fingerprint != gallery_fingerprint:
            raise IndexMismatchError(
                f"index {self.directory} was built from gallery {recorded.dataset or '?'}/{recorded.config or '?'} "
                f"{recorded.split or ''} (fingerprint {_short(recorded.gallery_fingerprint)}), which differs from the "
                f"gallery in use (fingerprint {_short(gallery_fingerprint)}): {rebuild}"
            )
        return self


def _short(fingerprint: str | None) -> str:
    return "none recorded" if fingerprint is None else fingerprint[:12]


def _describe(model: str, fingerprint: str | None, width: int | None) -> str:
    known = [f"fingerprint {_short(fingerprint)}"] if fingerprint is not None else []
    known += [f"width {width}"] if width is not None else []
    return f"{model} ({', '.join(known)})" if known else model


def check_index(directory: str | os.PathLike, *, model_fingerprint: str | None = None, embedding_dim: int | None = None,
                gallery_fingerprint: str | None = None, model: str | None = None) -> IndexManifest:  # fmt: skip
    """Read an index folder's manifest and refuse it (IndexMismatchError naming both) when it was built by
    another model, for another width or from another gallery; cheap: no vector is read."""
    return IndexManifest.read(directory).check(
        model_fingerprint=model_fingerprint, embedding_dim=embedding_dim, gallery_fingerprint=gallery_fingerprint, model=model
    )


# ------------------------------------------------------------------------------------------------- FAISS
def _faiss():
    try:
        import faiss
    except ImportError as error:  # an optional extra: name the fix
        raise RetrievalError("the FAISS index backends need faiss: pip install 'facap[faiss]'") from error
    return faiss


def _new_faiss_index(options: IndexOptions, dim: int):
    """An empty FAISS inner-product index for the resolved `options`."""
    faiss = _faiss()
    if options.backend == "faiss-flat":
        return faiss.IndexFlatIP(dim)
    if options.backend == "faiss-hnsw":
        index = faiss.IndexHNSWFlat(dim, options.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efSearch = options.ef_search
        return index
    quantizer = faiss.IndexFlatIP(dim)
    if options.backend == "faiss-ivf":
        index = faiss.IndexIVFFlat(quantizer, dim, options.nlist, faiss.METRIC_INNER_PRODUCT)
    else:
        index = faiss.IndexIVFPQ(quantizer, dim, options.nlist, options.m, options.nbits, faiss.METRIC_INNER_PRODUCT)
    return index


def _apply_search_parameters(index, options: IndexOptions) -> None:
    faiss = _faiss()
    if options.backend in ("faiss-ivf", "faiss-ivfpq"):
        faiss.extract_index_ivf(index).nprobe = options.nprobe
    elif options.backend == "faiss-hnsw":
        index.hnsw.efSearch = options.ef_search


def _as_numpy(embeddings: torch.Tensor):
    return embeddings.detach().float().cpu().contiguous().numpy()


# --------------------------------------------------------------------------------------------- building
class IndexBuilder:
    """Builds a CIRIndex from `(n, D)` chunks, so a gallery never has to be held whole in fp32 when the
    backend does not need it: `train(sample)` (IVF and IVF-PQ learn their lists and codes from it), then
    `add(chunk, ids)` any number of times, then `finish(source)`.

    `size` is the gallery size the defaults are chosen for (IndexOptions.resolved) and the most vectors it
    takes; `keep_embeddings` keeps the fp32 rows (needed by `exact` and IVF-PQ re-ranking, optional for the
    other FAISS backends; default: only when needed), spilled to a temporary file in `scratch_dir` (the
    system's temporary folder when None) so they never sit whole in memory.
    """

    def __init__(self, dim: int, options: IndexOptions, size: int, *, keep_embeddings: bool | None = None,
                 scratch_dir: str | os.PathLike | None = None):  # fmt: skip
        if size < 1 or dim < 1:
            raise RetrievalError(f"an index needs N >= 1 vectors of width D >= 1, got N={size}, D={dim}")
        self.dim = dim
        self.options = options.resolved(size, dim)
        self.keep_embeddings = options.needs_embeddings if keep_embeddings is None else keep_embeddings
        if options.needs_embeddings and not self.keep_embeddings:
            what = "the exact backend searches" if options.backend == "exact" else f"rerank={options.rerank} re-scores with"
            raise RetrievalError(f"{what} the embeddings: the index must keep them")
        self._faiss = None if options.backend == "exact" else _new_faiss_index(self.options, dim)
        self._spill = RowSpill(size, dim, scratch_dir) if self.keep_embeddings else None
        self._ids: list[str] = []

    @property
    def needs_training(self) -> bool:
        return self._faiss is not None and not self._faiss.is_trained

    def train(self, sample: torch.Tensor) -> None:
        """Learn the IVF lists / PQ codebooks from a `(n, D)` sample of the gallery (n >= nlist, >= 2**nbits)."""
        self._check_shape(sample)
        needed = max(self.options.nlist or 1, 2 ** (self.options.nbits or 0))
        if len(sample) < needed:
            raise RetrievalError(f"{self.options.backend} needs at least {needed} training vectors, got {len(sample)}")
        if self._faiss is not None:
            self._faiss.train(_as_numpy(sample))

    def add(self, embeddings: torch.Tensor, ids: Sequence[str]) -> None:
        """Append `(n, D)` unit-norm embeddings and their n ids."""
        self._check_shape(embeddings)
        if len(ids) != len(embeddings):
            raise RetrievalError(f"{len(ids)} ids for {len(embeddings)} embeddings")
        if self.needs_training:
            raise RetrievalError(f"{self.options.backend} must be trained on a sample before vectors are added")
        if self._spill is not None:
            self._spill.append(embeddings)
        if self._faiss is not None:
            self._faiss.add(_as_numpy(embeddings))
        self._ids.extend(ids)

    def finish(self, source: IndexSource | None = None) -> "CIRIndex":
        if not self._ids:
            raise RetrievalError("an index needs at least one vector; none was added")
        if len(set(self._ids)) != len(self._ids):
            raise RetrievalError("gallery ids must be unique")
        embeddings = self._spill.tensor() if self._spill is not None else None
        if self._faiss is not None:
            _apply_search_parameters(self._faiss, self.options)
        return CIRIndex(self._ids, self.options, self.dim, embeddings=embeddings, faiss_index=self._faiss, source=source)

    def _check_shape(self, embeddings: torch.Tensor) -> None:
        if embeddings.ndim != 2 or embeddings.shape[1] != self.dim:
            raise RetrievalError(f"index input must have shape (n, {self.dim}), got {tuple(embeddings.shape)}")


# ------------------------------------------------------------------------------------------------- index
@dataclass(frozen=True)
class SearchResult:
    """`scores` and `indices` are `(num_queries, k)`, best first; `ids` the matching gallery ids.

    An approximate backend may find fewer than k items for a query: those slots hold index -1, id None.
    """

    scores: torch.Tensor
    indices: torch.Tensor
    ids: list[list[str | None]]


class CIRIndex:
    """Inner-product search over N unit-norm candidate embeddings of width D, with string ids.

    `CIRIndex.build(embeddings, ids, backend, **options)` builds from an `(N, D)` tensor (kept in memory);
    `IndexBuilder` builds from chunks; `CIRIndex.load` reads a saved folder. Attributes: `ids` (N),
    `options` (the resolved IndexOptions), `backend`, `dim`, `source` (IndexSource) and `embeddings`
    (`(N, D)` fp32, or None for a FAISS index that does not keep them).
    """

    def __init__(self, ids: Sequence[str], options: IndexOptions, dim: int, *, embeddings: torch.Tensor | None = None,
                 faiss_index=None, source: IndexSource | None = None):  # fmt: skip
        """Assemble an index from built parts; use `build`, `IndexBuilder` or `load` to make one."""
        if options.needs_embeddings and embeddings is None:
            raise RetrievalError(f"{options.backend} with {options.parameters()} searches the embeddings, and none were given")
        self.ids, self.options, self.dim, self.source = list(ids), options, dim, source or IndexSource()
        self.embeddings, self._faiss_index = embeddings, faiss_index

    @classmethod
    def build(cls, embeddings: torch.Tensor, ids: Sequence[str], backend: str = "exact", *,
              source: IndexSource | None = None, **options: Any) -> "CIRIndex":  # fmt: skip
        """Build an index from a gallery's `(N, D)` candidate embeddings, which it keeps (options: the fields
        of IndexOptions)."""
        if embeddings.ndim != 2 or len(embeddings) == 0:
            raise RetrievalError(f"an index needs (N, D) embeddings with N >= 1, got shape {tuple(embeddings.shape)}")
        ids = list(ids)
        if len(ids) != len(embeddings):
            raise RetrievalError(f"{len(ids)} ids for {len(embeddings)} embeddings")
        if len(set(ids)) != len(ids):
            raise RetrievalError("gallery ids must be unique")
        wanted, dim = IndexOptions(backend, **options), embeddings.shape[1]
        faiss_index = None
        if wanted.backend != "exact":  # the codes only: the index keeps the given tensor itself, uncopied
            builder = IndexBuilder(dim, replace(wanted, rerank=0), len(ids), keep_embeddings=False)
            if builder.needs_training:
                builder.train(embeddings)
            builder.add(embeddings, ids)
            faiss_index = builder.finish()._faiss_index
        return cls(ids, wanted.resolved(len(ids), dim), dim, embeddings=embeddings.detach().float().cpu(),
                   faiss_index=faiss_index, source=source)  # fmt: skip

    @property
    def backend(self) -> str:
        return self.options.backend

    def __len__(self) -> int:
        return len(self.ids)

    def search(self, query_embeddings: torch.Tensor, k: int) -> SearchResult:
        """The top `k` gallery items for each of the `(Q, D)` queries."""
        queries = query_embeddings.detach().float().cpu()
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise RetrievalError(f"queries must have shape (Q, {self.dim}), got {tuple(queries.shape)}")
        if not 1 <= k <= len(self):
            raise RetrievalError(f"k={k} must be between 1 and the index size ({len(self)})")
        if self._faiss_index is None:
            ranking = rank_gallery(queries, self.embeddings, k)
            scores, indices = ranking.scores, ranking.indices
        else:
            shortlist = min(len(self), k * self.options.rerank) if self.options.rerank else k
            scores, indices = self._faiss_index.search(queries.contiguous().numpy(), shortlist)
            scores, indices = torch.from_numpy(scores), torch.from_numpy(indices).long()
            if self.options.rerank:
                scores, indices = self._rerank(queries, indices, k)
        ids = [[self.ids[i] if i >= 0 else None for i in row] for row in indices.tolist()]
        return SearchResult(scores, indices, ids)

    def _rerank(self, queries: torch.Tensor, shortlists: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The top k of each query's shortlist (`(Q, S)` indices, -1 for none) re-scored exactly against the
        kept embeddings; only the shortlisted rows are read."""
        scores = torch.full((len(queries), k), float("-inf"))
        indices = torch.full((len(queries), k), -1, dtype=torch.long)
        for row, (query, shortlist) in enumerate(zip(queries, shortlists)):
            # unique sorts the rows, so reads go forward through the file and equal scores keep the lower
            # index first, as exact search orders them
            candidates = torch.unique(shortlist[shortlist >= 0])
            exact = self.embeddings[candidates] @ query
            order = torch.sort(exact, descending=True, stable=True).indices[:k]
            scores[row, : len(order)], indices[row, : len(order)] = exact[order], candidates[order]
        return scores, indices

    def manifest(self, directory: Path) -> IndexManifest:
        return IndexManifest(directory, self.backend, self.options.parameters(), self.dim, len(self),
                             _ids_hash(self.ids), self.source, self.embeddings is not None)  # fmt: skip

    def save(self, directory: str | os.PathLike) -> Path:
        """Write the index folder `directory` whole (manifest, ids, FAISS index, embeddings when kept),
        replacing a previous index there; a folder holding anything else is refused."""
        directory = Path(directory)
        check_destination(directory)
        with staged_folder(directory) as staging:
            record = self.manifest(directory).to_json()
            if self.embeddings is not None:
                _write_embeddings(staging, self.embeddings, self.ids, {"backend": self.backend, "options": record["parameters"]})
            else:
                (staging / IDS_FILE).write_text(json.dumps(self.ids))
            if self._faiss_index is not None:
                _faiss().write_index(self._faiss_index, str(staging / FAISS_FILE))
            (staging / MANIFEST_FILE).write_text(json.dumps(record, indent=2) + "\n")
        return directory

    @classmethod
    def load(cls, directory: str | os.PathLike, backend: str | None = None, *, expect_model: str | None = None,
             expect_dim: int | None = None, expect_gallery: str | None = None, model: str | None = None,
             **options: Any) -> "CIRIndex":  # fmt: skip
        """Load a saved index folder, refusing it (IndexMismatchError naming both) when `expect_model` (a
        model fingerprint), `expect_dim` or `expect_gallery` (a gallery fingerprint) differ from what it
        records; `model` names the model in use in that message.

        The saved FAISS index is read as built; search parameters (`nprobe`, `ef_search`, `rerank`) may be
        overridden. Another `backend` or build parameter rebuilds from the saved embeddings (an error when none
        are kept). The embeddings are memory-mapped, not read.
        """
        manifest = check_index(directory, model_fingerprint=expect_model, embedding_dim=expect_dim,
                               gallery_fingerprint=expect_gallery, model=model)  # fmt: skip
        saved = IndexOptions.from_record(manifest.backend, manifest.parameters)
        carried = dict(manifest.parameters)
        if (backend or manifest.backend) != manifest.backend:
            carried.pop("rerank", None)  # IVF-PQ's own: another backend does not inherit it
        wanted = IndexOptions.from_record(backend or manifest.backend, {**carried, **options})
        rebuild = {k: v for k, v in asdict(wanted).items() if k not in SEARCH_PARAMETERS} != {
            k: v for k, v in asdict(saved).items() if k not in SEARCH_PARAMETERS
        }
        embeddings, ids = cls._read_vectors(manifest)
        if wanted.rerank and embeddings is None:
            raise RetrievalError(
                f"index {manifest.directory} keeps no embeddings, so it cannot re-rank (rerank={wanted.rerank}): "
                "rebuild it with --rerank or --keep-embeddings"
            )
        if rebuild or (wanted.backend != "exact" and not (manifest.directory / FAISS_FILE).is_file()):
            if embeddings is None:
                raise RetrievalError(
                    f"index {manifest.directory} keeps no embeddings, so it cannot be rebuilt as {wanted.backend} "
                    f"with {wanted.parameters()}: rebuild it from the gallery"
                )
            return cls.build(embeddings, ids, wanted.backend, source=manifest.source, **_given(wanted))
        faiss_index = None
        if wanted.backend != "exact":
            faiss_index = _faiss().read_index(str(manifest.directory / FAISS_FILE))
            if faiss_index.ntotal != manifest.count or faiss_index.d != manifest.embedding_dim:
                raise RetrievalError(f"{manifest.directory / FAISS_FILE} does not belong to {manifest.directory / MANIFEST_FILE}")
            _apply_search_parameters(faiss_index, wanted)
        return cls(ids, wanted, manifest.embedding_dim, embeddings=embeddings, faiss_index=faiss_index, source=manifest.source)

    @staticmethod
    def _read_vectors(manifest: IndexManifest) -> tuple[torch.Tensor | None, list[str]]:
        """The folder's ids and its kept embeddings, memory-mapped (None when it keeps none)."""
        if manifest.has_embeddings:
            rows, metadata = map_rows(manifest.directory / EMBEDDINGS_FILE, key=_TENSOR_KEY)
            recorded = json.loads(metadata.get(_METADATA_KEY, "{}")).get("ids_sha256")
            if recorded != manifest.ids_sha256 or rows.shape != (manifest.count, manifest.embedding_dim):
                raise RetrievalError(f"{manifest.directory}: {EMBEDDINGS_FILE} does not belong to {MANIFEST_FILE}")
            ids = _read_ids(manifest.directory, manifest.ids_sha256)
            embeddings = torch.from_numpy(rows)
            return (embeddings if embeddings.dtype == torch.float32 else embeddings.float()), ids
        if not (manifest.directory / IDS_FILE).is_file():
            raise RetrievalError(f"{manifest.directory} is not an index folder: {IDS_FILE} is missing")
        return None, _read_ids(manifest.directory, manifest.ids_sha256)


def _given(options: IndexOptions) -> dict[str, Any]:
    """The options as keywords for `CIRIndex.build` (the backend goes separately)."""
    return {k: v for k, v in asdict(options).items() if k != "backend"}


def build_index(chunks: Iterable[tuple[torch.Tensor, Sequence[str]]], dim: int, size: int, options: IndexOptions,
                *, training_sample: torch.Tensor | None = None, source: IndexSource | None = None,
                keep_embeddings: bool | None = None, scratch_dir: str | os.PathLike | None = None) -> CIRIndex:  # fmt: skip
    """An index from `(embeddings, ids)` chunks of a gallery of `size` vectors of width `dim`. A backend that
    trains (IVF, IVF-PQ) learns from `training_sample`, or, when it is None, from the first chunks (up to
    the size its defaults need), which are then added in order. Kept embeddings spill to `scratch_dir`."""
    builder = IndexBuilder(dim, options, size, keep_embeddings=keep_embeddings, scratch_dir=scratch_dir)
    pending: list[tuple[torch.Tensor, Sequence[str]]] = []
    if builder.needs_training and training_sample is not None:
        builder.train(training_sample)
    needed = _training_size(builder.options)
    for embeddings, ids in chunks:
        if not builder.needs_training:
            builder.add(embeddings, ids)
            continue
        pending.append((embeddings, ids))
        if sum(len(e) for e, _ in pending) >= min(needed, size):
            builder.train(torch.cat([e for e, _ in pending]))
            for held, held_ids in pending:
                builder.add(held, held_ids)
            pending = []
    if pending:  # a gallery smaller than the training target: train on all of it
        builder.train(torch.cat([e for e, _ in pending]))
        for held, held_ids in pending:
            builder.add(held, held_ids)
    return builder.finish(source)


def _training_size(options: IndexOptions) -> int:
    """How many leading vectors `build_index` trains on when given no sample: enough for FAISS's k-means
    (39 points per IVF list, 64 per PQ centroid), not the whole gallery."""
    return max(_POINTS_PER_CENTROID * (options.nlist or 1), 64 * 2 ** (options.nbits or 0))


def recall_vs_exact(index: CIRIndex, query_embeddings: torch.Tensor, k: int, exact_embeddings: torch.Tensor | None = None) -> float:
    """The share (0..1) of the exact top-k items that `index` returns, averaged over the queries. The exact
    ranking uses `exact_embeddings`, or the index's own when it keeps them."""
    reference = exact_embeddings if exact_embeddings is not None else index.embeddings
    if reference is None:
        raise RetrievalError("recall_vs_exact needs the exact embeddings: the index keeps none, pass exact_embeddings")
    exact = rank_gallery(query_embeddings.float().cpu(), reference.float().cpu(), k).indices
    return top_k_overlap(index.search(query_embeddings, k).indices, exact, k)


def top_k_overlap(found: torch.Tensor, exact: torch.Tensor, k: int) -> float:
    """The share (0..1) of each query's exact top k (`(Q, >= k)` indices, best first) among its first k found
    (`(Q, >= k)`), averaged over the queries: `recall_vs_exact` for an exact ranking computed elsewhere."""
    shared = [len(set(a[:k]) & set(b[:k])) for a, b in zip(exact.tolist(), found.tolist())]
    return sum(shared) / (k * len(shared))


def index_folders(values: Sequence[str], configs: Sequence[str]) -> dict[str, Path]:
    """Map `--index [CONFIG=]DIR` options onto the gallery configs they index (CONFIG may be left out when
    there is one config); an unknown config or a missing folder is a RetrievalError naming the option."""
    mapping: dict[str, Path] = {}
    for value in values:
        config, sep, folder = value.partition("=")
        if not sep:
            config, folder = "", value
        if not config:
            if len(configs) != 1:
                raise RetrievalError(f"--index {value}: name its config (CONFIG=DIR) when there are {len(configs)} configs")
            config = configs[0]
        if config not in configs:
            raise RetrievalError(f"--index {value}: config {config!r} is not among {list(configs)}")
        if not Path(folder).is_dir():
            raise RetrievalError(f"--index {value}: no such index folder {folder!r}")
        mapping[config] = Path(folder)
    return mapping
