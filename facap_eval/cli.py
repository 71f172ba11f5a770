"""What `eval_cir.py` runs once its arguments are parsed: options into a Protocol and a Runtime, output places
checked before the model is even loaded, then `evaluate`, the table and results.json."""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from pathlib import Path

from facap_dataset.errors import DataError
from facap_dataset.schema import gallery_config
from facap_io.atomic import check_writable, write_json
from facap_io.errors import FacapError
from modeling_fashionblip2.hub import CARD_NAME, update_card
from facap_retrieval.index import index_folders
from facap_retrieval.ranking import DEFAULT_CHUNK_BYTES
from facap_retrieval.report import check_report_folder

from .distributed import launched_accelerator, launched_processes
from .errors import EvalError
from .evaluation import evaluate, evaluate_baseline
from .model import load_model_and_processor, resolve_device
from .outputs import card_evaluation, format_results_table
from .protocol import Protocol, Runtime

EXIT_BAD_INPUT = 2


def run(args: argparse.Namespace) -> int:
    """Evaluate as `args` (eval_cir's parser) say; returns the exit code. Bad input is one `error:` line."""
    with notes_to_stderr():
        try:
            return _run(args)
        except (FacapError, DataError) as error:
            print(f"error: {error}", file=sys.stderr)
            return EXIT_BAD_INPUT


@contextlib.contextmanager
def notes_to_stderr():
    """The library's warnings and notes (a rebuilt cache entry, a dropped K) as plain lines on stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger("facap_eval")
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)


def _run(args: argparse.Namespace) -> int:
    protocol = protocol_from_args(args)
    check_output_places(args)
    if args.device is not None and launched_processes() > 1:
        raise EvalError(f"--device {args.device} cannot be combined with a multi-process launch: each process uses its own")
    accelerator = launched_accelerator()
    run = runtime_from_args(args, accelerator)
    device = None if accelerator is not None else resolve_device(args.device)
    model, processor = load_model_and_processor(args.model, device, trust_remote_code=args.trust_remote_code)
    if args.baseline:
        results = evaluate_baseline(args.baseline, model, processor, args.dataset, args.configs, protocol, run)
    else:
        results = evaluate(model, processor, args.dataset, args.configs, protocol, run)
    if results is not None:  # the main process
        print(format_results_table(results))
        if args.output is not None:
            write_json(args.output, results)
        if args.update_card is not None:
            print(f"card updated: {update_card(args.update_card, card_evaluation(args.dataset, results))}", file=sys.stderr)
    return 0


def protocol_from_args(args: argparse.Namespace) -> Protocol:
    return Protocol(
        split=args.split,
        caption_join=args.caption_join,
        exclude_reference=args.exclude_reference,
        k_values=tuple(args.k_values),
        chunk_bytes=DEFAULT_CHUNK_BYTES,
        k_above_gallery=args.k_above_gallery,
        breakdowns=tuple(args.breakdown or ()),
        text_length_edges=tuple(args.text_length_edges),
    )


def runtime_from_args(args: argparse.Namespace, accelerator) -> Runtime:
    return Runtime(
        batch_size=args.batch_size,
        precision=args.precision,
        num_workers=args.num_workers,
        progress=not args.no_progress,
        cache_dir=args.cache_dir,
        predictions_dir=args.predictions,
        report_dir=args.report,
        report_samples=args.report_samples,
        indexes=index_folders(args.index, [gallery_config(config) for config in args.configs]),
        accelerator=accelerator,
    )


def check_output_places(args: argparse.Namespace) -> None:
    """Every place the run writes must be writable before the model is loaded or anything encoded."""
    if args.output is not None:
        check_writable(args.output, what="--output")
    for place, option in ((args.predictions, "--predictions"), (args.report, "--report"), (args.cache_dir, "--cache-dir")):
        if place is not None:
            check_writable(place, what=option, folder=True)
    if args.report is not None:
        check_report_folder(args.report)
    if args.update_card is not None:
        card = Path(args.update_card) / CARD_NAME
        if not card.is_file():
            raise EvalError(f"--update-card {args.update_card}: no model card ({CARD_NAME}) to update there")
        check_writable(card, what="--update-card")
