"""`evaluate`: the protocol, step by step.

1. Check the options and read every config's triplets and gallery; a K larger than a gallery, a missing
   column, an unwritable output place or processes that see different data fail here, before any encoding.
2. Encode each gallery (or read it from the cache) and the queries, sharded over the processes.
3. On the main process: rank each gallery for each query, Recall@K (and CIRR's Recall_subset@K), the
   breakdowns, the average and the protocol block; then the prediction files and the report.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Sequence

import torch

from facap_dataset.schema import FASHIONIQ_CATEGORIES
from facap_io.atomic import check_writable
from facap_retrieval.cache import model_fingerprint
from facap_retrieval.ranking import NO_INDEX, Ranking, RetrievalError, rank_gallery, recall_at_k
from facap_retrieval.report import check_report_folder, write_report

from . import cirr
from .breakdowns import breakdown, query_buckets
from .data import ConfigData, config_names, dataset_identity, dropped_note, plan_configs
from .distributed import agree, check_same
from .encoding import Encoder, score_fn
from .errors import EvalError
from .gallery import GalleryEmbeddings, embed_gallery
from .model import check_compatible, evaluation_mode, place_model
from .outputs import write_predictions
from .protocol import (
    BASELINES,
    CIRR,
    CIRR_HEADLINE,
    CIRR_SUBSET_K_VALUES,
    FASHIONIQ_HEADLINE,
    TIE_RULES,
    Protocol,
    Runtime,
    headline_text,
    metric_key,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ConfigResult:
    """One config's ranking and numbers (main process)."""

    data: ConfigData
    cache: str  # the gallery cache state
    ranking: Ranking
    subsets: cirr.SubsetRanking | None
    metrics: dict


def evaluate(
    model,
    processor,
    dataset: str | os.PathLike,
    configs: Sequence[str] | str = FASHIONIQ_CATEGORIES,
    protocol: Protocol = Protocol(),
    run: Runtime = Runtime(),
) -> dict | None:
    """Evaluate an in-memory model on `configs` of a built dataset folder (or Hub id).

    Returns the results.json dict (recalls in percent: `protocol`, `configs`, `average`, and `breakdowns` when
    asked) on the main process, None on the others. The model comes back in the train/eval mode it had.
    """
    return _evaluate(model, processor, dataset, configs, protocol, run, "model")


def evaluate_baseline(
    kind: str,
    model,
    processor,
    dataset: str | os.PathLike,
    configs: Sequence[str] | str = FASHIONIQ_CATEGORIES,
    protocol: Protocol = Protocol(),
    run: Runtime = Runtime(),
) -> dict | None:
    """A trivial baseline with the same gallery embeddings and protocol as `evaluate`.

    `image-only`: each query is the candidate embedding of its reference image (the text is ignored).
    `text-only`: the model's query branch with the reference image replaced by the mean image (all-zero
    normalised pixels), so only the modification text differs between queries.
    """
    if kind not in BASELINES:
        raise EvalError(f"unknown baseline {kind!r}; expected one of {', '.join(BASELINES)}")
    if model is None or processor is None:
        raise EvalError(f"the {kind} baseline needs a model and its processor (it uses the model's embeddings)")
    return _evaluate(model, processor, dataset, configs, protocol, run, kind)


def _evaluate(model, processor, dataset, configs, protocol: Protocol, run: Runtime, mode: str) -> dict | None:
    names = config_names(configs)
    check_compatible(model, type(model).__name__)
    accelerator = run.accelerator
    opened, planned = agree(accelerator, lambda: _prepare(dataset, names, protocol, run))
    check_same(accelerator, "data", _identity(planned, protocol))
    with evaluation_mode(model):
        encoder = Encoder(model, processor, run, place_model(model, run.device, accelerator))
        model_fp = model_fingerprint(model, processor)
        check_same(accelerator, "models", {"model fingerprint": model_fp})
        results = {}
        for name, data in planned.items():  # one config at a time: its embeddings are freed before the next
            gallery, queries = _encode(encoder, data, mode, protocol, model_fp)
            # ranked on the main process; `agree` keeps the others from waiting on a failed main process
            score = lambda: _score(model, data, gallery, queries, protocol) if run.is_main_process else None  # noqa: E731
            results[name] = agree(accelerator, score)
    if not run.is_main_process:
        return None
    identity = {"model": _model_identity(model, model_fp), "dataset": dataset_identity(opened, dataset)}
    output = {
        "protocol": _protocol_block(results, protocol, run, mode, encoder.device.type, identity),
        "configs": {name: result.metrics for name, result in results.items()},
        "average": _average(results),
    }
    if protocol.breakdowns:
        output["breakdowns"] = _breakdowns(results, protocol)
    _write_outputs(results, output, protocol, run)
    return output


def _prepare(dataset, names, protocol: Protocol, run: Runtime):
    """Everything checked before encoding: the data against the protocol, then the output places."""
    opened, planned = plan_configs(dataset, names, protocol, predictions=run.predictions_dir is not None)
    for place, what in ((run.predictions_dir, "predictions folder"), (run.report_dir, "report folder"),
                        (run.cache_dir, "cache folder")):  # fmt: skip
        if place is not None:
            check_writable(place, what=what, folder=True)
    if run.report_dir is not None:
        check_report_folder(run.report_dir)
    for data in planned.values():
        if data.benchmark == CIRR and run.predictions_dir is not None:
            if cirr.PAIR_ID_COLUMN not in data.triplets.column_names:
                raise EvalError(f"{data.name} has no {cirr.PAIR_ID_COLUMN!r} column: CIRR's server files need it")
    return opened, planned


def _identity(planned: dict[str, ConfigData], protocol: Protocol) -> dict:
    """What every process must agree on before encoding."""
    identity = {"protocol": repr(protocol)}
    for name, data in planned.items():
        identity[f"{name} gallery fingerprint"] = data.gallery_fingerprint
        identity[f"{name} triplets fingerprint"] = data.triplets_fingerprint
    identity["configs"] = list(planned)
    return identity


def _encode(encoder: Encoder, data: ConfigData, mode: str, protocol: Protocol, model_fp: str):
    gallery = embed_gallery(encoder, data.gallery, data.gallery_ids, data.gallery_fingerprint, model_fp, data.name)
    if mode == "image-only" and gallery.embeddings.ndim != 2:
        raise EvalError("the image-only baseline needs (N, D) candidate embeddings (a multihead model)")
    queries = encoder.queries(data.triplets, mode, protocol.caption_join, f"{data.name} queries")
    return gallery, queries


def _index_of(ids: Sequence[str | None], rows: dict[str, int]) -> torch.Tensor:
    return torch.tensor([rows.get(i, NO_INDEX) if i is not None else NO_INDEX for i in ids], dtype=torch.long)


def _score(model, data: ConfigData, gallery: GalleryEmbeddings, queries: torch.Tensor, protocol: Protocol) -> ConfigResult:
    """Rank the gallery for every query and compute the config's metrics."""
    embeddings = gallery.embeddings
    if embeddings.device.type == "cpu":  # half-precision matmuls are slow on CPU: rank in fp32
        embeddings, queries = embeddings.float(), queries.float()
    queries = queries.to(embeddings.device)
    rows = {image_id: row for row, image_id in enumerate(data.gallery_ids)}
    targets = None if data.hidden_targets else _index_of(data.triplets["target_id"], rows)
    score = score_fn(model, embeddings)
    try:
        ranking = rank_gallery(
            queries,
            embeddings,
            data.rank_k,
            targets=targets,
            exclude=_index_of(data.triplets["reference_id"], rows) if data.exclude_reference else None,
            score_fn=score,
            # `max` matching scores through a (rows, N, n_q) temporary: shrink the chunk to match
            chunk_bytes=protocol.chunk_bytes // (embeddings.shape[1] if embeddings.ndim == 3 else 1),
        )
    except RetrievalError as error:
        raise RetrievalError(f"{data.name} ({protocol.split}): {error}") from None
    subsets = cirr.rank_subsets(queries, embeddings, score, data) if data.benchmark == CIRR else None
    metrics = {} if data.hidden_targets else recall_at_k(ranking.target_ranks, data.k_values, max_rank=ranking.k)
    if subsets is not None and not data.hidden_targets:
        metrics.update(cirr.subset_recall(subsets))
    metrics.update(num_queries=len(data.triplets), gallery_size=len(data.gallery_ids))
    return ConfigResult(data, gallery.cache, ranking, subsets, metrics)


def _average(results: dict[str, ConfigResult]) -> dict | None:
    """Mean over configs of each metric every config has, and the benchmark's headline `mean`."""
    scored = [r.metrics for r in results.values() if not r.data.hidden_targets]
    if not scored:
        return None
    keys = [key for key in scored[0] if "@" in key and all(key in m for m in scored)]
    average = {key: sum(m[key] for m in scored) / len(scored) for key in keys}
    benchmark = next(iter(results.values())).data.benchmark
    headline = [metric_key(kind, k) for kind, k in (CIRR_HEADLINE if benchmark == CIRR else FASHIONIQ_HEADLINE)]
    average["mean"] = sum(average[h] for h in headline) / len(headline) if all(h in average for h in headline) else None
    return average


def _breakdowns(results: dict[str, ConfigResult], protocol: Protocol) -> dict:
    return {
        kind: breakdown(
            kind,
            {name: query_buckets(kind, r.data, protocol) for name, r in results.items()},
            {name: r.ranking.target_ranks for name, r in results.items()},
            {name: r.data.k_values for name, r in results.items()},
            protocol,
        )
        for kind in protocol.breakdowns
    }


def _protocol_block(results, protocol: Protocol, run: Runtime, mode: str, device: str, identity: dict) -> dict:
    per_config = lambda get: {name: get(r) for name, r in results.items()}  # noqa: E731
    first = next(iter(results.values())).data
    block = {
        "benchmark": first.benchmark,
        "split": protocol.split,
        "configs": list(results),
        "query_mode": mode,
        "caption_join": protocol.caption_join,
        "caption_variants": "scores of the two caption orderings averaged; one query per triplet"
        if protocol.caption_join == "both-orders"
        else "one caption text per triplet",
        "exclude_reference": first.exclude_reference,
        "k_values": list(protocol.k_values),
        "ties": protocol.ties,
        "tie_rule": f"{protocol.ties}: {TIE_RULES[protocol.ties]}",
        "headline": headline_text(first.benchmark),
        "k_above_gallery": protocol.k_above_gallery,
        "dropped_k_values": per_config(lambda r: list(r.data.dropped_k_values)),
        "notes": [
            dropped_note(name, r.data.dropped_k_values, len(r.data.gallery_ids))
            for name, r in results.items()
            if r.data.dropped_k_values
        ],
        "gallery_sizes": per_config(lambda r: len(r.data.gallery_ids)),
        "num_queries": per_config(lambda r: len(r.data.triplets)),
        "skipped_triplets": per_config(lambda r: 0),  # evaluation drops nothing; see missing_targets
        **{key: per_config(lambda r, key=key: r.data.facts[key]) for key in first.facts},
        "hidden_targets": per_config(lambda r: r.data.hidden_targets),
        "precision": run.precision,
        "device": device,
        "batch_size": run.batch_size,
        "model": identity["model"],
        "dataset": {**identity["dataset"], "gallery_fingerprints": per_config(lambda r: r.data.gallery_fingerprint)},
        "gallery_cache": per_config(lambda r: r.cache),
    }
    if first.benchmark == CIRR:
        block["subset_k_values"] = list(CIRR_SUBSET_K_VALUES)
        block["subset_rule"] = "the query's img_set members minus its reference image"
        block["subset_members_not_in_gallery"] = per_config(lambda r: r.subsets.members_not_in_gallery)
    return block


def _model_identity(model, fingerprint: str) -> dict:
    config = getattr(model, "config", None)
    return {
        "name_or_path": getattr(config, "_name_or_path", None) or None,
        "model_type": getattr(config, "model_type", type(model).__name__),
        "fingerprint": fingerprint,
    }


def _write_outputs(results: dict[str, ConfigResult], output: dict, protocol: Protocol, run: Runtime) -> None:
    if run.predictions_dir is not None:
        for result in results.values():
            if result.subsets is not None:
                cirr.write_submissions(run.predictions_dir, protocol.split, result.data, result.ranking, result.subsets)
            else:
                write_predictions(run.predictions_dir, protocol.split, result.data, result.ranking)
    if run.report_dir is not None:
        sections = {name: (r.data.triplets, r.data.gallery, r.ranking) for name, r in results.items()}
        write_report(run.report_dir, sections, output, caption_join=protocol.caption_join, num_samples=run.report_samples)
