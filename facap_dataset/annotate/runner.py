"""Runs annotation jobs through a backend: cache look-up, concurrency, validation retries, the summary.

Workers (threads) build requests, call the backend and validate answers; only the main thread writes the
cache, one flushed line per finished record. At most `2 * concurrency` units are in flight, so a killed
run loses at most those and memory stays flat on a 200k-image catalogue.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

from tqdm.auto import tqdm

from ..errors import DataError
from .backends import Backend, Request
from .cache import AnnotationCache, cache_key
from .validate import OutputRules, check_output, clean_output

OK, REJECTED, SKIPPED = "ok", "rejected", "skipped"


@dataclass(frozen=True)
class Job:
    """One record to annotate. `make_request` runs in a worker; a `DataError` from it (an image that does
    not decode) skips the record with the error as reason."""

    id: str
    inputs: dict[str, Any]
    category: str
    make_request: Callable[[], Request]


@dataclass
class Outcome:
    job: Job
    status: str
    text: str | None = None
    reason: str | None = None
    attempts: int = 0


@dataclass
class RunSummary:
    stage: str
    total: int = 0
    done: int = 0
    cached: int = 0
    retried: int = 0
    rejected: int = 0
    skipped: int = 0
    seconds: float = 0.0
    results: dict[str, str] = field(default_factory=dict)
    problems: list[dict[str, Any]] = field(default_factory=list)

    @property
    def records_per_second(self) -> float:
        """Throughput of the records this run sent to the backend (cached ones cost no model time)."""
        worked = self.done + self.rejected
        return worked / self.seconds if self.seconds > 0 else 0.0

    def counts(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "total": self.total,
            "done": self.done,
            "cached": self.cached,
            "retried": self.retried,
            "rejected": self.rejected,
            "skipped": self.skipped,
            "seconds": round(self.seconds, 3),
            "records_per_second": round(self.records_per_second, 2),
        }

    def line(self) -> str:
        c = self.counts()
        return (
            f"{self.stage}: {c['total']} records - {c['done']} done, {c['cached']} cached, {c['retried']} retried, "
            f"{c['rejected']} rejected, {c['skipped']} skipped in {c['seconds']:.1f} s "
            f"({c['records_per_second']:.1f} records/s)"
        )


@dataclass(frozen=True)
class RunSettings:
    stage: str
    prompt_version: str
    rules: OutputRules
    max_attempts: int = 3
    retry_rejected: bool = False
    progress: bool = True


def run_jobs(jobs: Sequence[Job], backend: Backend, cache: AnnotationCache, settings: RunSettings) -> RunSummary:
    """Annotate every job not already in the cache; the summary's `results` maps job id to accepted text."""
    if settings.max_attempts < 1:
        raise DataError(f"max attempts must be >= 1, got {settings.max_attempts}")
    summary = RunSummary(stage=settings.stage, total=len(jobs))
    keys = {job.id: cache_key(settings.stage, job.inputs, settings.prompt_version, backend.model) for job in jobs}
    if len(keys) != len(jobs):
        raise DataError(f"{settings.stage}: the job list repeats ids ({len(jobs) - len(keys)} duplicates)")
    pending = [job for job in jobs if not _take_cached(job, cache.get(keys[job.id]), summary, settings)]
    start = time.perf_counter()
    bar = tqdm(total=len(jobs), initial=len(jobs) - len(pending), desc=settings.stage, unit="rec",
               disable=not settings.progress, file=sys.stderr)
    try:
        for outcome in _process(pending, backend, settings):
            _record(outcome, keys[outcome.job.id], cache, summary, settings, backend.model)
            bar.update(1)
            bar.set_postfix(rejected=summary.rejected, skipped=summary.skipped, refresh=False)
    finally:
        bar.close()
        summary.seconds = time.perf_counter() - start
    return summary


def _take_cached(job: Job, record: dict[str, Any] | None, summary: RunSummary, settings: RunSettings) -> bool:
    if record is None or (record["status"] == REJECTED and settings.retry_rejected):
        return False
    summary.cached += 1
    if record["status"] == OK:
        summary.results[job.id] = record["output"]
    else:
        summary.problems.append({"id": job.id, "status": REJECTED, "reason": record["reason"], "cached": True})
    return True


def _record(outcome: Outcome, key: str, cache: AnnotationCache, summary: RunSummary, settings: RunSettings,
            model: str) -> None:
    job = outcome.job
    if outcome.attempts > 1:
        summary.retried += 1
    if outcome.status == SKIPPED:
        # Input problems are not cached: fixing the image and rerunning must pick the record up.
        summary.skipped += 1
        summary.problems.append({"id": job.id, "status": SKIPPED, "reason": outcome.reason})
        return
    cache.put({
        "key": key, "stage": settings.stage, "id": job.id, "inputs": job.inputs,
        "prompt_version": settings.prompt_version, "model": model, "status": outcome.status,
        "output": outcome.text, "reason": outcome.reason, "attempts": outcome.attempts,
    })
    if outcome.status == OK:
        summary.done += 1
        summary.results[job.id] = outcome.text
    else:
        summary.rejected += 1
        summary.problems.append({"id": job.id, "status": REJECTED, "reason": outcome.reason, "output": outcome.text})


def _process(jobs: Sequence[Job], backend: Backend, settings: RunSettings) -> Iterator[Outcome]:
    """Outcomes in completion order, with a bounded window of units in flight."""
    units = [jobs[i : i + backend.batch_size] for i in range(0, len(jobs), backend.batch_size)]
    window = 2 * backend.concurrency
    with ThreadPoolExecutor(max_workers=backend.concurrency, thread_name_prefix="annotate") as pool:
        in_flight: set[Future] = set()
        next_unit = 0
        try:
            while next_unit < len(units) or in_flight:
                while next_unit < len(units) and len(in_flight) < window:
                    in_flight.add(pool.submit(_annotate_unit, units[next_unit], backend, settings))
                    next_unit += 1
                finished, in_flight = wait(in_flight, return_when=FIRST_COMPLETED)
                for future in finished:
                    yield from future.result()
        finally:
            for future in in_flight:
                future.cancel()


def _annotate_unit(unit: Sequence[Job], backend: Backend, settings: RunSettings) -> list[Outcome]:
    outcomes: list[Outcome] = []
    active: list[tuple[Outcome, Request]] = []
    for job in unit:
        try:
            active.append((Outcome(job, REJECTED), job.make_request()))
        except DataError as error:
            outcomes.append(Outcome(job, SKIPPED, reason=str(error)))
    for attempt in range(settings.max_attempts):
        if not active:
            break
        replies = backend.generate([request for _, request in active], attempt)
        still_invalid = []
        for (outcome, request), reply in zip(active, replies, strict=True):
            outcome.attempts = attempt + 1
            text = clean_output(reply.text)
            reason = check_output(text, settings.rules, outcome.job.category)
            if reason is None:
                outcome.status, outcome.text, outcome.reason = OK, text, None
                outcomes.append(outcome)
            else:
                outcome.text, outcome.reason = text, reason
                still_invalid.append((outcome, request))
        active = still_invalid
    outcomes.extend(outcome for outcome, _ in active)
    return outcomes
