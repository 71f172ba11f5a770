"""Composed image retrieval evaluation: the Fashion IQ and CIRR protocols, every choice a named option.

    from facap_eval import Protocol, Runtime, evaluate, load_model_and_processor
    model, processor = load_model_and_processor("runs/demo/final")
    results = evaluate(model, processor, "./data/fashioniq", ["dress", "shirt", "toptee"],
                       Protocol(split="validation"), Runtime(batch_size=64))

Per config the gallery is encoded once (or read from the embedding cache), each triplet gives one query, the
gallery is ranked by score in query chunks, and Recall@K is the share of queries whose target ranks within K
(ties never count in the target's favour; a target missing from the gallery is a miss, counted in the
protocol block). With an `accelerate.Accelerator` in `Runtime.accelerator` the encoding is sharded over its
processes and the main process ranks and returns the results.

Modules: `protocol` (the Protocol and Runtime dataclasses and the constants that define the protocols),
`model` (loading), `data` (reading and checking the data before encoding), `encoding`, `gallery` (gallery
embeddings and their cache), `distributed` (sharding), `evaluation` (`evaluate`), `breakdowns`, `cirr`,
`outputs` (prediction files, the console table) and `cli` (what `eval_cir.py` runs).

It imports facap_dataset, facap_retrieval, facap_io and (to load a model) modeling_fashionblip2; never the
trainer or the app.
"""

from .errors import EvalError
from .evaluation import evaluate, evaluate_baseline
from .gallery import GalleryEmbeddings, gallery_embeddings
from .model import load_model_and_processor, resolve_device
from .outputs import format_results_table
from .protocol import BASELINES, BREAKDOWNS, PRECISIONS, Protocol, Runtime

__all__ = [
    "BASELINES",
    "BREAKDOWNS",
    "EvalError",
    "GalleryEmbeddings",
    "PRECISIONS",
    "Protocol",
    "Runtime",
    "evaluate",
    "evaluate_baseline",
    "format_results_table",
    "gallery_embeddings",
    "load_model_and_processor",
    "resolve_device",
]
