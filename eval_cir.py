"""Composed image retrieval evaluation: the Fashion IQ protocol of DESIGN.md 5, with every choice an option.

    python eval_cir.py --model DIR --dataset DIR_OR_ID --configs dress,shirt,toptee --split validation \
        --output results.json

Per config: the gallery is encoded once (candidate embeddings only, `(N, D)`), each triplet gives one query
(reference image + joined captions), the gallery is ranked by inner product in query chunks with
`torch.topk`, and Recall@K is the share of queries whose target ranks within K (ties never count in the
target's favour; a target missing from the gallery is a miss and is counted in the protocol block).

Python API (used by training and the app): `evaluate`, `evaluate_baseline`, `format_results_table`,
`load_model_and_processor`, `recall_at_k`, `CIRIndex`.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import datasets
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from facap_retrieval.cache import cache_key, gallery_fingerprint, load_cached_gallery, model_fingerprint, save_cached_gallery
from facap_retrieval.index import CIRIndex
from facap_retrieval.ranking import (
    DEFAULT_CHUNK_BYTES,
    DEFAULT_K_VALUES,
    NO_INDEX,
    Ranking,
    RetrievalError,
    inner_product,
    rank_gallery,
    recall_at_k,
)
from facap_dataset.captions import CAPTION_JOIN_RULES, join_captions
from facap_dataset.errors import DataError
from facap_dataset.export import read_card_data
from facap_dataset.images import load_rgb
from facap_dataset.loading import resolve as resolve_dataset
from facap_dataset.schema import FASHIONIQ_CATEGORIES, gallery_config

__all__ = [
    "BASELINES",
    "CIRIndex",
    "EvalError",
    "evaluate",
    "evaluate_baseline",
    "format_results_table",
    "load_model_and_processor",
    "main",
    "recall_at_k",
]

BASELINES = ("image-only", "text-only")
PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
PREDICTION_TOP_K = 50  # Fashion IQ's test-server format ranks the top 50 gallery ids
TIE_RULE = "pessimistic: a target tied with other gallery items ranks after all of them"
HEADLINE_K = (10, 50)  # DESIGN 5: the headline is the mean of the average R@10 and R@50


class EvalError(ValueError):
    """Bad evaluation input that is not a data problem: an unusable model, conflicting options."""


# ---------------------------------------------------------------------------------------------------- loading
def load_model_and_processor(path_or_id: str | os.PathLike, device: str | torch.device | None = None):
    """Load a saved FashionBLIP-2 (or compatible) model and its processor, in eval mode on `device`."""
    import modeling_fashionblip2  # noqa: F401  (registers the Auto classes for model_type="fashionblip2")
    from transformers import AutoModel, AutoProcessor

    try:
        model = AutoModel.from_pretrained(path_or_id, trust_remote_code=True)
    except (OSError, ValueError, KeyError) as error:
        raise EvalError(f"cannot load a model from {path_or_id!s}: {error}") from error
    _check_compatible(model, str(path_or_id))
    try:
        processor = AutoProcessor.from_pretrained(path_or_id, trust_remote_code=True)
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise EvalError(f"cannot load the processor of {path_or_id!s}: {error}") from error
    return model.to(resolve_device(device)).eval(), processor


def _check_compatible(model, name: str) -> None:
    missing = [m for m in ("get_query_embeddings", "get_candidate_embeddings") if not callable(getattr(model, m, None))]
    if missing:
        model_type = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
        raise EvalError(
            f"{name} (model_type={model_type!r}) is not a FashionBLIP-2-compatible model: it lacks {', '.join(missing)}"
        )


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as error:
        raise EvalError(f"{device!r} is not a torch device: {error}") from error
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise EvalError(f"device {device!r} asked for, but CUDA is not available")
    return resolved


def _resolve_dataset(dataset: str | os.PathLike) -> tuple[str, list[str]]:
    """The `load_dataset` path of a built folder or Hub id (facap_dataset's rule) and its config names."""
    resolved = resolve_dataset(dataset)
    try:
        return resolved, datasets.get_dataset_config_names(resolved)
    except (OSError, ValueError) as error:
        raise DataError(f"cannot read dataset {dataset!s}: {error}") from error


def _load_split(dataset: str, config: str, split: str, available: Sequence[str]) -> datasets.Dataset:
    if config not in available:
        raise DataError(f"dataset {dataset} has no config {config!r} (it has: {', '.join(available) or 'none'})")
    try:
        return datasets.load_dataset(dataset, config, split=split)
    except ValueError as error:  # datasets' "Unknown split" message lists the splits that exist
        raise DataError(f"dataset {dataset}, config {config!r}: no split {split!r} ({error})") from error


# ---------------------------------------------------------------------------------------------------- encoding
@dataclass(frozen=True)
class _Settings:
    """The resolved per-call options shared by the encoding and ranking steps."""

    batch_size: int
    device: torch.device
    dtype: torch.dtype
    num_workers: int
    progress: bool


def _decode(image: dict | None, name: str):
    if image is None or image.get("bytes") is None:
        raise DataError(f"image {name} has no embedded bytes (the dataset must embed its images)")
    return load_rgb(image["bytes"], name=name)


def _autocast(settings: _Settings):
    # Mixed precision only on accelerators; on CPU the precision is the embeddings' storage type.
    if settings.device.type == "cpu" or settings.dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(settings.device.type, dtype=settings.dtype)


def _loader(dataset: datasets.Dataset, collate, settings: _Settings, description: str):
    loader = DataLoader(dataset, batch_size=settings.batch_size, num_workers=settings.num_workers, collate_fn=collate)
    return tqdm(loader, desc=description, disable=not settings.progress, file=sys.stderr, leave=False)


def encode_gallery(model, processor, gallery: datasets.Dataset, settings: _Settings, description: str) -> torch.Tensor:
    """Candidate embeddings of every gallery image, `(N, D)` (or `(N, n_q, D)` for `max` matching)."""
    gallery = gallery.select_columns(["image_id", "image"]).cast_column("image", datasets.Image(decode=False))
    collate = functools.partial(_collate_gallery, processor)
    parts = []
    for pixel_values in _loader(gallery, collate, settings, description):
        with _autocast(settings):
            embeddings = model.get_candidate_embeddings(pixel_values.to(settings.device))
        parts.append(embeddings.to(settings.dtype))
    return torch.cat(parts)


def _collate_gallery(processor, rows: list[dict]) -> torch.Tensor:
    images = [_decode(row["image"], row["image_id"]) for row in rows]
    return processor(images=images, return_tensors="pt")["pixel_values"]


def _collate_queries(processor, caption_join: str, rows: list[dict]):
    texts = [_query_texts(row["captions"], caption_join, row["reference_id"]) for row in rows]
    images = [_decode(row["reference_image"], row["reference_id"]) for row in rows]
    pixel_values = processor(images=images, return_tensors="pt")["pixel_values"]
    tokens = processor(text=[t for variants in texts for t in variants], return_tensors="pt")
    return pixel_values, tokens["input_ids"], tokens["attention_mask"], len(texts[0])


def _query_texts(captions: Sequence[str], rule: str, name: str) -> list[str]:
    try:
        joined = join_captions(captions, rule)
    except ValueError as error:
        raise DataError(f"triplet with reference {name}: {error}") from error
    return joined if isinstance(joined, list) else [joined]


def encode_queries(
    model, processor, triplets: datasets.Dataset, mode: str, caption_join: str, settings: _Settings, description: str
) -> torch.Tensor:
    """Query embeddings `(Q, V, D)`: V caption orderings per triplet (2 for `both-orders`, else 1)."""
    triplets = triplets.select_columns(["reference_id", "captions", "reference_image"]).cast_column(
        "reference_image", datasets.Image(decode=False)
    )
    collate = functools.partial(_collate_queries, processor, caption_join)
    parts = []
    for pixel_values, input_ids, attention_mask, variants in _loader(triplets, collate, settings, description):
        with _autocast(settings):
            pixel_values = pixel_values.to(settings.device)
            embeddings = _embed_queries(model, mode, pixel_values, input_ids, attention_mask, variants)
        parts.append(embeddings.to(settings.dtype))
    return torch.cat(parts)


def _embed_queries(model, mode, pixel_values, input_ids, attention_mask, variants) -> torch.Tensor:
    """`(B, V, D)` query embeddings for the model or one of the two trivial baselines."""
    if mode == "image-only":  # the reference image's own candidate embedding: ignores the text
        return model.get_candidate_embeddings(pixel_values)[:, None]
    if mode == "text-only":  # the model's query branch with the reference replaced by the mean image
        pixel_values = torch.zeros_like(pixel_values)
    device = pixel_values.device
    embeddings = model.get_query_embeddings(
        pixel_values.repeat_interleave(variants, dim=0), input_ids.to(device), attention_mask.to(device)
    )
    return embeddings.reshape(len(pixel_values), variants, *embeddings.shape[1:])


def _score_fn(model, gallery: torch.Tensor):
    """Scores `(q, N)` of `(q, V, ...)` queries: the mean over the V caption orderings."""
    base = inner_product if gallery.ndim == 2 else model.score

    def score(queries: torch.Tensor, gallery: torch.Tensor) -> torch.Tensor:
        scores = base(queries[:, 0], gallery)
        for variant in range(1, queries.shape[1]):
            scores += base(queries[:, variant], gallery)
        return scores / queries.shape[1] if queries.shape[1] > 1 else scores

    return score


# ---------------------------------------------------------------------------------------------------- evaluation
@dataclass(frozen=True)
class _ConfigRun:
    """What one config's evaluation produced: the numbers, the protocol facts, the ranking and its data."""

    metrics: dict
    facts: dict
    ranking: Ranking
    gallery_ids: list[str]
    triplets: datasets.Dataset
    gallery: datasets.Dataset


def _index_of(ids: Sequence[str | None], rows: dict[str, int]) -> torch.Tensor:
    return torch.tensor([rows.get(i, NO_INDEX) if i is not None else NO_INDEX for i in ids], dtype=torch.long)


def _gallery_embeddings(model, processor, gallery, config, split, settings, cache_dir, model_fp):
    ids = gallery["image_id"]
    if len(set(ids)) != len(ids):
        raise DataError(f"gallery {gallery_config(config)} ({split}) has duplicate image ids")
    gallery_fp = gallery_fingerprint(gallery)
    key = cache_key(model_fp, gallery_fp, _precision_name(settings.dtype))
    cached = load_cached_gallery(cache_dir, key, ids) if cache_dir is not None else None
    if cached is not None:
        return cached.to(settings.device), ids, gallery_fp, "hit"
    embeddings = encode_gallery(model, processor, gallery, settings, f"{config} gallery")
    if cache_dir is not None:
        save_cached_gallery(cache_dir, key, embeddings, ids)
    return embeddings, ids, gallery_fp, "miss" if cache_dir is not None else "off"


def gallery_embeddings(
    model, processor, gallery: datasets.Dataset, config: str, split: str, *, model_fp: str,
    batch_size: int = 64, cache_dir: str | Path | None = None, progress: bool = True,
) -> tuple[torch.Tensor, list[str], str]:
    """Candidate embeddings of one gallery split, read from or written to the same cache as `evaluate` uses.

    Returns `(embeddings, image_ids, cache_state)` with `cache_state` one of `hit`, `miss`, `off`;
    `model_fp` is `facap_retrieval.cache.model_fingerprint(model, processor)` (computed once by the caller)."""
    settings = _Settings(batch_size, next(model.parameters()).device, torch.float32, 0, progress)
    embeddings, ids, _, cache_state = _gallery_embeddings(
        model, processor, gallery, config, split, settings, cache_dir, model_fp
    )
    return embeddings, ids, cache_state


def _precision_name(dtype: torch.dtype) -> str:
    return next(name for name, value in PRECISIONS.items() if value == dtype)


def _evaluate_config(model, processor, dataset, config, split, available, options, settings, model_fp) -> _ConfigRun:
    triplets = _load_split(dataset, config, split, available)
    gallery = _load_split(dataset, gallery_config(config), split, available)
    if len(triplets) == 0 or len(gallery) == 0:
        raise DataError(f"{config} ({split}) has {len(triplets)} triplets and {len(gallery)} gallery images")
    target_ids = triplets["target_id"]
    hidden = all(t is None for t in target_ids)
    if hidden and not options["predictions"]:
        raise EvalError(f"{config} ({split}) has no targets: pass a predictions folder to rank its queries")
    gallery_embeddings, gallery_ids, gallery_fp, cache_state = _gallery_embeddings(
        model, processor, gallery, config, split, settings, options["cache_dir"], model_fp
    )
    if options["mode"] == "image-only" and gallery_embeddings.ndim != 2:
        raise EvalError("the image-only baseline needs (N, D) candidate embeddings (a multihead model)")
    queries = encode_queries(
        model, processor, triplets, options["mode"], options["caption_join"], settings, f"{config} queries"
    )
    rows = {image_id: row for row, image_id in enumerate(gallery_ids)}
    targets = None if hidden else _index_of(target_ids, rows)
    references = _index_of(triplets["reference_id"], rows)
    if settings.device.type == "cpu":  # half-precision matmuls are slow on CPU: rank in fp32
        gallery_embeddings, queries = gallery_embeddings.float(), queries.float()
    try:
        ranking = rank_gallery(
            queries,
            gallery_embeddings,
            options["rank_k"],
            targets=targets,
            exclude=references if options["exclude_reference"] else None,
            score_fn=_score_fn(model, gallery_embeddings),
            # `max` matching scores through a (rows, N, n_q) temporary: shrink the chunk to match
            chunk_bytes=DEFAULT_CHUNK_BYTES // (gallery_embeddings.shape[1] if gallery_embeddings.ndim == 3 else 1),
        )
    except RetrievalError as error:
        raise RetrievalError(f"{config} ({split}): {error}") from error
    metrics = {} if hidden else recall_at_k(ranking.target_ranks, options["k_values"], max_rank=ranking.k)
    metrics.update(num_queries=len(triplets), gallery_size=len(gallery))
    facts = {
        "num_triplets": len(triplets),
        "missing_targets": 0 if hidden else int((targets == NO_INDEX).sum()),
        "references_not_in_gallery": int((references == NO_INDEX).sum()),
        "empty_captions": sum(not cs or any(not c.strip() for c in cs) for cs in triplets["captions"]),
        "hidden_targets": hidden,
        "gallery_fingerprint": gallery_fp,
        "gallery_cache": cache_state,
    }
    return _ConfigRun(metrics, facts, ranking, gallery_ids, triplets, gallery)


def _average(per_config: dict[str, dict], k_values: Sequence[int]) -> dict | None:
    scored = [m for m in per_config.values() if f"recall@{k_values[0]}" in m]
    if not scored:
        return None
    average = {f"recall@{k}": sum(m[f"recall@{k}"] for m in scored) / len(scored) for k in k_values}
    headline = [f"recall@{k}" for k in HEADLINE_K]
    average["mean"] = sum(average[h] for h in headline) / len(headline) if all(h in average for h in headline) else None
    return average


def _protocol(runs: dict[str, _ConfigRun], options: dict, settings: _Settings, identity: dict) -> dict:
    per_config = lambda key: {name: run.facts[key] for name, run in runs.items()}  # noqa: E731
    return {
        "split": options["split"],
        "configs": list(runs),
        "query_mode": options["mode"],
        "caption_join": options["caption_join"],
        "caption_variants": "scores of the two caption orderings averaged; one query per triplet"
        if options["caption_join"] == "both-orders"
        else "one caption text per triplet",
        "exclude_reference": options["exclude_reference"],
        "k_values": list(options["k_values"]),
        "tie_rule": TIE_RULE,
        "gallery_sizes": {name: run.metrics["gallery_size"] for name, run in runs.items()},
        "num_queries": {name: run.metrics["num_queries"] for name, run in runs.items()},
        "num_triplets": per_config("num_triplets"),
        "skipped_triplets": {name: 0 for name in runs},  # evaluation drops nothing; see missing_targets
        "missing_targets": per_config("missing_targets"),
        "references_not_in_gallery": per_config("references_not_in_gallery"),
        "empty_captions": per_config("empty_captions"),
        "hidden_targets": per_config("hidden_targets"),
        "precision": _precision_name(settings.dtype),
        "device": str(settings.device),
        "batch_size": settings.batch_size,
        "model": identity["model"],
        "dataset": {**identity["dataset"], "gallery_fingerprints": per_config("gallery_fingerprint")},
        "gallery_cache": per_config("gallery_cache"),
    }


def _dataset_identity(dataset: str) -> dict:
    card = read_card_data(dataset) if Path(dataset).is_dir() else None
    return {
        "name_or_path": str(dataset),
        "skipped_at_build": dict(card.get("skipped") or {}) if card is not None else None,
    }


def _model_identity(model, fingerprint: str) -> dict:
    config = getattr(model, "config", None)
    return {
        "name_or_path": getattr(config, "_name_or_path", None) or None,
        "model_type": getattr(config, "model_type", type(model).__name__),
        "fingerprint": fingerprint,
    }


def _check_options(split, configs, caption_join, precision, k_values, batch_size, num_workers) -> list[str]:
    if caption_join not in CAPTION_JOIN_RULES:
        raise EvalError(f"unknown caption join {caption_join!r}; expected one of {', '.join(CAPTION_JOIN_RULES)}")
    if precision not in PRECISIONS:
        raise EvalError(f"unknown precision {precision!r}; expected one of {', '.join(PRECISIONS)}")
    if not k_values or any(int(k) < 1 for k in k_values):
        raise EvalError(f"k values must be positive integers, got {list(k_values)}")
    if batch_size < 1 or num_workers < 0:
        raise EvalError(f"batch size must be >= 1 and workers >= 0, got {batch_size} and {num_workers}")
    names = [c.strip() for c in configs.split(",")] if isinstance(configs, str) else list(configs)
    if not names or any(not n for n in names) or len(set(names)) != len(names):
        raise EvalError(f"configs must be distinct non-empty names, got {configs!r}")
    if not split:
        raise EvalError("a split name is required")
    return names


@contextlib.contextmanager
def _eval_mode(model):
    """Evaluate in eval mode without grad and give the model back in the mode it came in."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        model.train(was_training)


def _run(model, processor, dataset, configs, split, mode, *, batch_size=64, device=None, precision="fp32",
         exclude_reference=False, caption_join="fashioniq", num_workers=0, progress=True, predictions_dir=None,
         report_dir=None, cache_dir=None, k_values=DEFAULT_K_VALUES, report_samples=24) -> dict:
    names = _check_options(split, configs, caption_join, precision, k_values, batch_size, num_workers)
    _check_compatible(model, type(model).__name__)
    k_values = sorted({int(k) for k in k_values})
    if device is not None:
        model.to(resolve_device(device))
    settings = _Settings(batch_size, next(model.parameters()).device, PRECISIONS[precision], num_workers, progress)
    dataset, available = _resolve_dataset(dataset)
    options = {
        "split": split, "mode": mode, "caption_join": caption_join, "exclude_reference": exclude_reference,
        "k_values": k_values, "cache_dir": cache_dir, "predictions": predictions_dir is not None,
        "rank_k": max(k_values + ([PREDICTION_TOP_K] if predictions_dir is not None else [])),
    }  # fmt: skip
    with _eval_mode(model):
        fingerprint = model_fingerprint(model, processor)
        runs = {
            name: _evaluate_config(model, processor, dataset, name, split, available, options, settings, fingerprint)
            for name in names
        }
    identity = {"model": _model_identity(model, fingerprint), "dataset": _dataset_identity(dataset)}
    results = {
        "protocol": _protocol(runs, options, settings, identity),
        "configs": {name: run.metrics for name, run in runs.items()},
        "average": _average({name: run.metrics for name, run in runs.items()}, k_values),
    }
    if predictions_dir is not None:
        write_predictions(predictions_dir, split, runs)
    if report_dir is not None:
        from facap_retrieval.report import write_report

        sections = {name: (run.triplets, run.gallery, run.ranking) for name, run in runs.items()}
        write_report(report_dir, sections, results, caption_join=caption_join, num_samples=report_samples)
    return results


def evaluate(
    model,
    processor,
    dataset: str | os.PathLike,
    configs: Sequence[str] | str = FASHIONIQ_CATEGORIES,
    split: str = "validation",
    *,
    batch_size: int = 64,
    device: str | torch.device | None = None,
    precision: str = "fp32",
    exclude_reference: bool = False,
    caption_join: str = "fashioniq",
    num_workers: int = 0,
    progress: bool = True,
    predictions_dir: str | os.PathLike | None = None,
    report_dir: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    k_values: Sequence[int] = DEFAULT_K_VALUES,
    report_samples: int = 24,
) -> dict:
    """Evaluate an in-memory model on `configs` of a built dataset folder (or Hub id); returns the
    `results.json` dict of DESIGN.md 5 (recalls in percent, with the full protocol block).

    `device` defaults to the model's device (the model is moved when one is given); the model comes back in
    the train/eval mode it had. `precision` is the storage type of the embeddings (and the autocast type on
    accelerators). `predictions_dir` writes Fashion IQ-format rankings (top 50; required for splits without
    targets), `report_dir` the visual report, `cache_dir` caches gallery embeddings by model and data
    fingerprints.
    """
    return _run(model, processor, dataset, configs, split, "model", batch_size=batch_size, device=device,
                precision=precision, exclude_reference=exclude_reference, caption_join=caption_join,
                num_workers=num_workers, progress=progress, predictions_dir=predictions_dir, report_dir=report_dir,
                cache_dir=cache_dir, k_values=k_values, report_samples=report_samples)  # fmt: skip


def evaluate_baseline(
    kind: str, processor, model, dataset, configs=FASHIONIQ_CATEGORIES, split="validation", **options
) -> dict:
    """Evaluate a trivial baseline with the same gallery embeddings and protocol as `evaluate`.

    `image-only`: each query is the candidate embedding of its reference image (the text is ignored).
    `text-only`: the model's query branch with the reference image replaced by the mean image (all-zero
    normalised pixels), so only the modification text differs between queries.
    """
    if kind not in BASELINES:
        raise EvalError(f"unknown baseline {kind!r}; expected one of {', '.join(BASELINES)}")
    if model is None or processor is None:
        raise EvalError(f"the {kind} baseline needs a model and its processor (it uses the model's embeddings)")
    return _run(model, processor, dataset, configs, split, kind, **options)


# ---------------------------------------------------------------------------------------------------- outputs
def _write_json_atomic(path: Path, payload) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w") as stream:
            json.dump(payload, stream, indent=2)
        os.replace(temp, path)
    finally:
        if os.path.exists(temp):
            os.unlink(temp)
    return path


def prediction_file_name(config: str, split: str) -> str:
    return f"cap.{config}.{split}.predictions.json"


def write_predictions(predictions_dir, split: str, runs: dict[str, _ConfigRun]) -> list[Path]:
    """One Fashion IQ caption file per config, each entry with an added `ranking` of the top-50 ids."""
    written = []
    for name, run in runs.items():
        triplets = run.triplets.select_columns(["reference_id", "target_id", "captions"])
        entries = []
        for triplet, row in zip(triplets, run.ranking.indices[:, :PREDICTION_TOP_K].tolist()):
            entry = {"candidate": triplet["reference_id"], "captions": triplet["captions"]}
            if triplet["target_id"] is not None:
                entry["target"] = triplet["target_id"]
            entry["ranking"] = [run.gallery_ids[i] for i in row]
            entries.append(entry)
        written.append(_write_json_atomic(Path(predictions_dir) / prediction_file_name(name, split), entries))
    return written


def _cell(value, width: int) -> str:
    if value is None:
        return "-".rjust(width)
    return f"{value:{width}.2f}" if isinstance(value, float) else str(value).rjust(width)


def format_results_table(results: dict) -> str:
    """A plain-text table: R@K per config, their average, the headline mean and the protocol choices."""
    k_values = results["protocol"]["k_values"]
    header = ["config".ljust(12)] + [f"R@{k}".rjust(7) for k in k_values] + ["gallery".rjust(8), "queries".rjust(8)]
    lines = [" ".join(header)]
    for name, metrics in results["configs"].items():
        cells = [_cell(metrics.get(f"recall@{k}"), 7) for k in k_values]
        sizes = [_cell(metrics["gallery_size"], 8), _cell(metrics["num_queries"], 8)]
        lines.append(" ".join([name.ljust(12), *cells, *sizes]))
    average = results["average"]
    if average is not None:
        lines.append(" ".join(["average".ljust(12)] + [_cell(average[f"recall@{k}"], 7) for k in k_values]))
        if average.get("mean") is not None:
            lines.append(f"headline mean of R@10 and R@50: {average['mean']:.2f}")
    protocol = results["protocol"]
    lines.append(
        f"protocol: split={protocol['split']} mode={protocol['query_mode']} caption_join={protocol['caption_join']} "
        f"exclude_reference={protocol['exclude_reference']} "
        f"missing_targets={sum(protocol['missing_targets'].values())} ties=pessimistic"
    )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------- CLI
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", required=True, help="saved model folder or Hub id (AutoModel, trust_remote_code)")
    parser.add_argument("--dataset", required=True, help="built dataset folder or Hub id")
    parser.add_argument("--configs", default=",".join(FASHIONIQ_CATEGORIES), help="comma-separated triplet configs")
    parser.add_argument("--split", default="validation")
    parser.add_argument("--output", type=Path, help="write results.json here")
    parser.add_argument("--baseline", choices=BASELINES, help="evaluate a trivial baseline with the model's embeddings")
    parser.add_argument(
        "--exclude-reference",
        action="store_true",
        help="drop each query's reference image from its ranking (CoVR/CIRR convention)",
    )
    parser.add_argument("--caption-join", choices=CAPTION_JOIN_RULES, default="fashioniq")
    parser.add_argument("--k-values", default=",".join(map(str, DEFAULT_K_VALUES)), help="comma-separated K values")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", help="default: cuda when available, else cpu")
    parser.add_argument("--precision", choices=tuple(PRECISIONS), default="fp32")
    parser.add_argument("--num-workers", type=int, default=0, help="data-loading worker processes")
    parser.add_argument("--cache-dir", type=Path, help="cache gallery embeddings here (keyed by model and data fingerprints)")
    parser.add_argument("--predictions", type=Path, help="write Fashion IQ-format ranking files (top 50) here")
    parser.add_argument("--report", type=Path, help="write the HTML + PNG visual report here")
    parser.add_argument("--report-samples", type=int, default=24, help="queries per config in the report (failures first)")
    parser.add_argument("--no-progress", action="store_true")
    return parser.parse_args(argv)


def _parse_k_values(text: str) -> list[int]:
    try:
        return [int(k) for k in text.split(",")]
    except ValueError as error:
        raise EvalError(f"--k-values must be comma-separated integers, got {text!r}") from error


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        model, processor = load_model_and_processor(args.model, args.device)
        options = dict(
            batch_size=args.batch_size, precision=args.precision, exclude_reference=args.exclude_reference,
            caption_join=args.caption_join, num_workers=args.num_workers, progress=not args.no_progress,
            predictions_dir=args.predictions, report_dir=args.report, cache_dir=args.cache_dir,
            k_values=_parse_k_values(args.k_values), report_samples=args.report_samples,
        )  # fmt: skip
        if args.baseline:
            results = evaluate_baseline(args.baseline, processor, model, args.dataset, args.configs, args.split, **options)
        else:
            results = evaluate(model, processor, args.dataset, args.configs, args.split, **options)
    except (DataError, EvalError, RetrievalError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(format_results_table(results))
    if args.output is not None:
        _write_json_atomic(args.output, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
