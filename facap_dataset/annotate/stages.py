"""The two stages and the enhFashionIQ run, as library functions the CLI wraps.

Stage 1 (`annotate_captions`): a VLM describes each product image -> FACap's caption file.
Stage 2 (`annotate_modifications`): an LLM writes how to turn the reference into the target from the two
captions -> FACap's triplet file, or a Fashion IQ caption file for enhFashionIQ.
Each run writes its outputs atomically, plus a report (`reports/<stage>_<cat>_<split>.json`) with the
summary counts and every rejected or skipped record with its reason.
"""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from facap_io import write_file, write_json

from ..errors import DataError
from ..images import load_rgb
from .backends import Backend, Request
from .cache import AnnotationCache
from .prompts import PromptTemplate
from .runner import SKIPPED, Job, RunSettings, RunSummary, run_jobs
from .sources import (
    FolderImages,
    Pair,
    captions_path,
    check_known,
    derived_path,
    fashioniq_captions_path,
    pair_images,
    plain,
    triplets_path,
)
from .validate import OutputRules

OUTPUT_FORMATS = ("facap", "fashioniq")
ON_MISSING = ("error", "skip")
# How a category id reads inside a prompt; ids not listed are used as they are.
CATEGORY_LABELS = {"toptee": "top or t-shirt", "pants": "pair of pants", "outfit": "outfit"}


@dataclass(frozen=True)
class StageRun:
    """Where a stage writes and how it treats bad records (shared by the stage functions)."""

    out: Path
    category: str
    split: str
    rules: OutputRules
    cache_path: Path | None = None
    max_attempts: int = 3
    retry_rejected: bool = False
    on_missing: str = "error"
    progress: bool = True

    def __post_init__(self) -> None:
        # Both name output files: checked before any work, so a bad one costs nothing and writes nothing.
        plain(self.category, what="category")
        plain(self.split, what="split")
        if self.on_missing not in ON_MISSING:
            raise DataError(f"on_missing must be one of {', '.join(ON_MISSING)}, got {self.on_missing!r}")

    def cache_file(self, stage: str) -> Path:
        return self.cache_path or self.out / "cache" / f"{stage}.jsonl"

    def settings(self, template: PromptTemplate) -> RunSettings:
        return RunSettings(template.name, template.version, self.rules, self.max_attempts, self.retry_rejected,
                           self.progress)


def category_label(category: str) -> str:
    return CATEGORY_LABELS.get(category, category)


# -------------------------------------------------------------------------------------------- stage 1
def annotate_captions(source: Any, image_ids: list[str], backend: Backend, template: PromptTemplate,
                      run: StageRun) -> tuple[RunSummary, Path]:
    """Caption `image_ids` of `source` (FolderImages or DatasetImages); returns the summary and caption file."""
    image_ids = list(dict.fromkeys(image_ids))
    path, report = captions_path(run.out, run.category, run.split), _report_path(run, template.name)
    known, missing = _split_missing(source, image_ids, run, origin="the image list")
    prompt = template.render(category=category_label(run.category))
    jobs = [_caption_job(source, image_id, prompt, run.category) for image_id in known]
    with AnnotationCache(run.cache_file(template.name)) as cache:
        summary = run_jobs(jobs, backend, cache, run.settings(template))
    _add_missing(summary, missing)
    captions = {image_id: summary.results[image_id] for image_id in image_ids if image_id in summary.results}
    write_json(path, captions)
    _write_report(report, summary)
    return summary, path


def _caption_job(source: Any, image_id: str, prompt: str, category: str) -> Job:
    digest = hashlib.sha256(source.read(image_id)).hexdigest()

    def make_request() -> Request:
        return Request(text=prompt, image=load_rgb(source.read(image_id), name=image_id))

    return Job(image_id, {"image": image_id, "sha256": digest, "category": category}, category, make_request)


# -------------------------------------------------------------------------------------------- stage 2
def annotate_modifications(pairs: list[Pair], captions: dict[str, str], backend: Backend,
                           template: PromptTemplate, run: StageRun, output_format: str = "facap",
                           ) -> tuple[RunSummary, Path]:
    """Write one modification text per pair whose two images have stage-1 captions."""
    if output_format not in OUTPUT_FORMATS:
        raise DataError(f"output format must be one of {', '.join(OUTPUT_FORMATS)}, got {output_format!r}")
    _refuse_repeated_pairs(pairs)
    outputs = triplets_path if output_format == "facap" else fashioniq_captions_path
    path, report = outputs(run.out, run.category, run.split), _report_path(run, template.name)
    uncaptioned = [image for image in pair_images(pairs) if image not in captions]
    if uncaptioned and run.on_missing == "error":
        shown = ", ".join(repr(i) for i in uncaptioned[:5])
        raise DataError(
            f"the pairs reference {len(uncaptioned)} image(s) without a stage-1 caption, e.g. {shown} "
            "(run `annotate captions` on them, or pass --on-missing skip)"
        )
    usable = [p for p in pairs if p.candidate in captions and p.target in captions]
    label = category_label(run.category)
    jobs = [_modification_job(pair, captions, template, label, run.category) for pair in usable]
    with AnnotationCache(run.cache_file(template.name)) as cache:
        summary = run_jobs(jobs, backend, cache, run.settings(template))
    usable_set = set(usable)
    skipped_pairs = [p for p in pairs if p not in usable_set]
    summary.total += len(skipped_pairs)
    summary.skipped += len(skipped_pairs)
    summary.problems.extend({"id": _pair_id(p), "status": SKIPPED, "reason": "no stage-1 caption"}
                            for p in skipped_pairs)
    entries = [
        {"candidate": p.candidate, "target": p.target, "captions": [summary.results[_pair_id(p)]]}
        for p in usable
        if _pair_id(p) in summary.results
    ]
    write_json(path, entries)
    _write_report(report, summary)
    return summary, path


def _pair_id(pair: Pair) -> str:
    return f"{pair.candidate} -> {pair.target}"


def _refuse_repeated_pairs(pairs: list[Pair]) -> None:
    seen: set[tuple[str, str]] = set()
    for pair in pairs:
        if (pair.candidate, pair.target) in seen:
            raise DataError(f"the pairs list repeats the pair {pair.candidate!r} -> {pair.target!r}")
        seen.add((pair.candidate, pair.target))


def _modification_job(pair: Pair, captions: dict[str, str], template: PromptTemplate, label: str,
                      category: str) -> Job:
    values = {
        "category": label,
        "reference_caption": captions[pair.candidate],
        "target_caption": captions[pair.target],
    }
    if "original_captions" in template.fields:
        originals = [c.strip() for c in pair.original_captions if c.strip()]
        values["original_captions"] = "; ".join(originals) if originals else "(none)"
    text = template.render(**values)
    inputs = {"reference": pair.candidate, "target": pair.target, **values}
    return Job(_pair_id(pair), inputs, category, lambda: Request(text=text))


# ------------------------------------------------------------------------------------------ enhFashionIQ
FASHIONIQ_SPLITS = ("train", "val")


def fashioniq_split(split: str) -> str:
    """Fashion IQ's file name for a split with targets (`validation` is accepted for `val`)."""
    split = {"validation": "val"}.get(split, split)
    if split not in FASHIONIQ_SPLITS:
        raise DataError(f"enhFashionIQ needs targets: split must be one of {', '.join(FASHIONIQ_SPLITS)}, "
                        f"got {split!r} (Fashion IQ's test split hides its targets)")
    return split


def enhance_fashioniq(fashioniq_root: Path, images: Path, caption_backend: Backend, backend: Backend,
                      caption_template: PromptTemplate, template: PromptTemplate, run: StageRun,
                      caption_rules: OutputRules) -> tuple[list[RunSummary], Path]:
    """Stage 1 on every image of a Fashion IQ split's pairs, then stage 2 with the enhance prompt, written
    as `captions/cap.{cat}.{split}.json` (plus the split's image list), i.e. a Fashion IQ root."""
    from .sources import read_pairs

    run = replace(run, split=fashioniq_split(run.split))
    source_file = fashioniq_captions_path(fashioniq_root, run.category, run.split)
    pairs = read_pairs(source_file).pairs
    folder = FolderImages(images)
    stage1, _ = annotate_captions(folder, pair_images(pairs), caption_backend, caption_template,
                                  replace(run, rules=caption_rules))
    captions = dict(stage1.results)
    # Images that failed stage 1 were reported there; their pairs are skipped and counted here.
    stage2, path = annotate_modifications(pairs, captions, backend, template, replace(run, on_missing="skip"),
                                          output_format="fashioniq")
    split_file = Path(fashioniq_root) / "image_splits" / f"split.{run.category}.{run.split}.json"
    if split_file.is_file():
        target = derived_path(run.out, "image_splits", split_file.name)
        write_file(target, lambda temporary: shutil.copyfile(split_file, temporary))
    return [stage1, stage2], path


# ---------------------------------------------------------------------------------------------- helpers
def _split_missing(source: Any, image_ids: list[str], run: StageRun, origin: str) -> tuple[list[str], list[str]]:
    if run.on_missing == "error":
        check_known(source, image_ids, origin)
        return image_ids, []
    missing = set(source.missing(image_ids))
    return [i for i in image_ids if i not in missing], [i for i in image_ids if i in missing]


def _add_missing(summary: RunSummary, missing: list[str]) -> None:
    summary.total += len(missing)
    summary.skipped += len(missing)
    summary.problems.extend({"id": image_id, "status": SKIPPED, "reason": "image not found"} for image_id in missing)


def _report_path(run: StageRun, stage: str) -> Path:
    return derived_path(run.out, "reports", f"{stage}_{run.category}_{run.split}.json")


def _write_report(path: Path, summary: RunSummary) -> Path:
    return write_json(path, {"summary": summary.counts(), "problems": summary.problems})
