"""What an evaluation measures (`Protocol`) and how it runs (`Runtime`): two frozen dataclasses that travel
through every step, so that every protocol choice is named once, checked once and recorded in results.json.

Two benchmarks, selected by the dataset:

- Fashion IQ (CLIP4Cir/SPRC convention): the two captions joined by the caption-join rule, the reference
  image kept in the gallery, Recall@{1,5,10,50}; headline: the mean over configs of R@10 and of R@50, and
  their mean.
- CIRR (a triplet config with an `img_set_members` column): the reference image excluded from its own
  ranking, Recall@{1,5,10,50} over the whole split gallery and Recall_subset@{1,2,3} over the query's image
  set minus the reference; headline: (R@5 + R_subset@1) / 2.

Ties are pessimistic in both: a target tied with other gallery items ranks after all of them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import torch

from facap_dataset.captions import CAPTION_JOIN_RULES
from facap_retrieval.ranking import DEFAULT_CHUNK_BYTES, DEFAULT_K_VALUES

from .errors import EvalError

FASHIONIQ = "fashioniq"
CIRR = "cirr"
BENCHMARKS = (FASHIONIQ, CIRR)
CIRR_SET_COLUMN = "img_set_members"  # a triplet config with this column is evaluated with the CIRR protocol
CIRR_SUBSET_K_VALUES = (1, 2, 3)
CIRR_HEADLINE = (("recall", 5), ("recall_subset", 1))  # (R@5 + R_subset@1) / 2
FASHIONIQ_HEADLINE = (("recall", 10), ("recall", 50))  # mean of the average R@10 and R@50

TIE_RULES = {"pessimistic": "a target tied with other gallery items ranks after all of them"}
K_ABOVE_GALLERY = ("error", "drop")
TEXT_LENGTH = "text-length"
NUM_CHANGES = "num-changes"
BREAKDOWNS = (TEXT_LENGTH, NUM_CHANGES)
NUM_CHANGES_COLUMN = "num_changes"
DEFAULT_TEXT_LENGTH_EDGES = (8, 12, 16)

BASELINES = ("image-only", "text-only")
QUERY_MODES = ("model", *BASELINES)
PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
PREDICTION_TOP_K = 50  # Fashion IQ's and CIRR's test servers rank the top 50 gallery ids


def headline_text(benchmark: str) -> str:
    """How the headline `average.mean` is formed, written from the constants that define it."""
    parts = CIRR_HEADLINE if benchmark == CIRR else FASHIONIQ_HEADLINE
    names = " + ".join(f"R{'_subset' if kind == 'recall_subset' else ''}@{k}" for kind, k in parts)
    return f"({names}) / {len(parts)} of the config average"


def metric_key(kind: str, k: int) -> str:
    """`recall@10`, `recall_subset@1`: the results.json key of one metric."""
    return f"{kind}@{k}"


@dataclass(frozen=True)
class Protocol:
    """Every choice that changes the numbers; recorded in results.json's protocol block.

    split: the split evaluated (`validation`, `test`, ...).
    caption_join: how a triplet's captions become query text (`facap_dataset.captions.CAPTION_JOIN_RULES`).
    exclude_reference: drop each query's reference image from its ranking; None follows the benchmark
        (Fashion IQ keeps it, CIRR excludes it).
    k_values: the recall cut-offs, ascending.
    ties: the tie rule (`TIE_RULES`); only the pessimistic rule exists.
    chunk_bytes: score-block budget per query chunk when ranking.
    k_above_gallery: a K larger than a gallery is an `error` found before any encoding, or is `drop`ped for
        that gallery with a note in results.json (training-time evaluation).
    breakdowns: per-bucket recall by `text-length` (words of the joined text) and/or `num-changes`.
    text_length_edges: ascending bucket edges of the text-length breakdown; `(8, 12, 16)` gives buckets
        `0-7`, `8-11`, `12-15`, `16+`.
    """

    split: str = "validation"
    caption_join: str = "fashioniq"
    exclude_reference: bool | None = None
    k_values: tuple[int, ...] = DEFAULT_K_VALUES
    ties: str = "pessimistic"
    chunk_bytes: int = DEFAULT_CHUNK_BYTES
    k_above_gallery: str = "error"
    breakdowns: tuple[str, ...] = ()
    text_length_edges: tuple[int, ...] = DEFAULT_TEXT_LENGTH_EDGES

    def __post_init__(self):
        object.__setattr__(self, "k_values", tuple(sorted({int(k) for k in self.k_values})))
        object.__setattr__(self, "breakdowns", tuple(dict.fromkeys(self.breakdowns)))
        object.__setattr__(self, "text_length_edges", tuple(int(e) for e in self.text_length_edges))
        _choice("caption join", self.caption_join, CAPTION_JOIN_RULES)
        _choice("tie rule", self.ties, tuple(TIE_RULES))
        _choice("k-above-gallery rule", self.k_above_gallery, K_ABOVE_GALLERY)
        for name in self.breakdowns:
            _choice("breakdown", name, BREAKDOWNS)
        if not self.k_values or self.k_values[0] < 1:
            raise EvalError(f"k values must be positive integers, got {list(self.k_values)}")
        edges = self.text_length_edges
        if not edges or edges[0] < 1 or any(b <= a for a, b in zip(edges, edges[1:])):
            raise EvalError(f"text-length edges must be ascending positive integers, got {list(edges)}")
        if not self.split:
            raise EvalError("a split name is required")
        if self.chunk_bytes < 1:
            raise EvalError(f"chunk bytes must be >= 1, got {self.chunk_bytes}")

    def excludes_reference(self, benchmark: str) -> bool:
        return self.exclude_reference if self.exclude_reference is not None else benchmark == CIRR


@dataclass(frozen=True)
class Runtime:
    """How an evaluation runs; nothing here changes the numbers (beyond `precision`'s rounding).

    device: None keeps the model where it is (or the accelerator's device); else the model is moved there.
    precision: storage type of the embeddings (`PRECISIONS`), and the autocast type on accelerators.
    cache_dir: gallery-embedding cache keyed by model and data fingerprints (None: no cache).
    predictions_dir: ranking files (Fashion IQ's format, or CIRR's test-server files).
    report_dir: the HTML + PNG visual report, `report_samples` queries per config.
    accelerator: an `accelerate.Accelerator` of N processes shards the encoding; ranking and recall run on
        the main process, which alone gets the results.
    """

    batch_size: int = 64
    device: str | torch.device | None = None
    precision: str = "fp32"
    num_workers: int = 0
    progress: bool = True
    cache_dir: str | os.PathLike | None = None
    predictions_dir: str | os.PathLike | None = None
    report_dir: str | os.PathLike | None = None
    report_samples: int = 24
    accelerator: Any = field(default=None, compare=False)

    def __post_init__(self):
        _choice("precision", self.precision, tuple(PRECISIONS))
        if self.batch_size < 1 or self.num_workers < 0 or self.report_samples < 0:
            raise EvalError(
                f"batch size must be >= 1, workers and report samples >= 0, got {self.batch_size}, "
                f"{self.num_workers} and {self.report_samples}"
            )

    @property
    def dtype(self) -> torch.dtype:
        return PRECISIONS[self.precision]

    @property
    def num_processes(self) -> int:
        return 1 if self.accelerator is None else self.accelerator.num_processes

    @property
    def is_main_process(self) -> bool:
        return self.accelerator is None or self.accelerator.is_main_process


def _choice(what: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise EvalError(f"unknown {what} {value!r}; expected one of {', '.join(allowed)}")
