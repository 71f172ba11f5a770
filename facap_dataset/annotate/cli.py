"""`python -m facap_dataset annotate {pairs,captions,modifications,enhance-fashioniq} ...`"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import DataError
from .backends import BACKENDS, BackendOptions, make_backend
from .prompts import load_template
from .runner import RunSummary
from .sources import DatasetImages, FolderImages, pair_images, read_captions, read_pairs
from .stages import (
    ON_MISSING,
    OUTPUT_FORMATS,
    StageRun,
    annotate_captions,
    annotate_modifications,
    enhance_fashioniq,
    fashioniq_split,
)
from .validate import CAPTION_RULES, MODIFICATION_RULES, OutputRules

VLM_TASK, LLM_TASK = "image-text-to-text", "text-generation"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    annotate = subparsers.add_parser(
        "annotate",
        help="the two-stage annotation pipeline (pair mining, VLM captions, LLM modification texts)",
        description="Make FACap-style CIR triplets from a catalogue, or enhFashionIQ from Fashion IQ.",
    )
    commands = annotate.add_subparsers(dest="annotate_command", required=True, metavar="STEP")
    _add_pairs(commands)
    _add_captions(commands)
    _add_modifications(commands)
    _add_enhance(commands)


# --------------------------------------------------------------------------------------------- parsers
def _add_pairs(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("pairs", help="mine reference/target pairs by image-embedding similarity",
                                 description="Mine pairs within one category of a built dataset folder.")
    parser.add_argument("--dataset", required=True, type=Path, help="built dataset folder (from `facap_dataset build`)")
    parser.add_argument("--config", required=True, help="category config, e.g. dress (its gallery is used)")
    parser.add_argument("--split", default="train")
    parser.add_argument("--model", required=True,
                        help="image model dir or id: a FashionBLIP-2 folder or any CLIP-like model")
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="allow running code shipped with --model (its auto_map); never needed for FashionBLIP-2 "
                             "folders while modeling_fashionblip2 is installed")
    parser.add_argument("--out", required=True, type=Path, help="pairs JSON file to write")
    parser.add_argument("--min-similarity", type=float, default=0.5)
    parser.add_argument("--max-similarity", type=float, default=0.95,
                        help="pairs above this cosine similarity are near-duplicates and never mined")
    parser.add_argument("--top-k", type=int, default=20, help="in-band neighbours considered per image")
    parser.add_argument("--pairs-per-image", type=int, default=1)
    parser.add_argument("--max-uses", type=int, default=3, help="most pairs any one image may appear in (either role)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-progress", action="store_true")
    parser.set_defaults(func=run_pairs)


def _add_captions(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("captions", help="stage 1: a VLM describes each product image",
                                 description="Stage 1: write image_captions/{cat}_{split}_captions.json.")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--images", type=Path, help="image folder (ids are paths relative to it, or file stems)")
    source.add_argument("--dataset", type=Path, help="built dataset folder: caption a config's gallery")
    parser.add_argument("--config", help="category config of --dataset")
    parser.add_argument("--pairs", type=Path, help="caption only the images these pairs use")
    parser.add_argument("--category", help="category of the output file (default: --config or the pairs file's)")
    parser.add_argument("--split", help="split of the output file (default: the pairs file's, else train)")
    _add_stage_args(parser, CAPTION_RULES, "caption")
    parser.set_defaults(func=run_captions)


def _add_modifications(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("modifications", help="stage 2: an LLM writes the modification text per pair",
                                 description="Stage 2: write cir_triplets/{cat}_{split}_triplets.json (FACap) "
                                             "or captions/cap.{cat}.{split}.json (Fashion IQ).")
    parser.add_argument("--pairs", required=True, type=Path,
                        help="pairs file from `annotate pairs`, or a FACap / Fashion IQ triplet file")
    parser.add_argument("--captions", required=True, type=Path,
                        help="stage-1 caption file, or the folder `annotate captions` wrote")
    parser.add_argument("--category", help="category (default: the pairs file's)")
    parser.add_argument("--split", help="split (default: the pairs file's)")
    parser.add_argument("--format", choices=OUTPUT_FORMATS, default="facap", dest="output_format",
                        help="facap: cir_triplets/ for `build facap`; fashioniq: captions/ for `build enhfashioniq`")
    _add_stage_args(parser, MODIFICATION_RULES, "modification")
    parser.set_defaults(func=run_modifications)


def _add_enhance(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("enhance-fashioniq", help="enhFashionIQ: both stages over a Fashion IQ split",
                                 description="Caption every image of a Fashion IQ split's pairs, rewrite each "
                                             "pair's modification text, write a Fashion IQ caption file.")
    parser.add_argument("--fashioniq-root", required=True, type=Path,
                        help="folder holding captions/ (and image_splits/) of Fashion IQ")
    parser.add_argument("--images", type=Path, help="Fashion IQ image folder (default: ROOT/images)")
    parser.add_argument("--category", required=True)
    parser.add_argument("--split", required=True, help="train or val (or validation); test hides its targets")
    parser.add_argument("--caption-model", help="stage-1 VLM (default: --model, e.g. one VLM served for both)")
    parser.add_argument("--caption-prompt", type=Path, help="stage-1 prompt template file")
    _add_stage_args(parser, MODIFICATION_RULES, "enhance")
    parser.set_defaults(func=run_enhance)


def _add_stage_args(parser: argparse.ArgumentParser, rules: OutputRules, stage: str) -> None:
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--backend", required=True, choices=BACKENDS)
    parser.add_argument("--model", required=True, help="model id/dir (transformers) or served model name (openai)")
    parser.add_argument("--base-url", action="append",
                        help="OpenAI-compatible endpoint, e.g. http://localhost:8000/v1 (API key from "
                             "OPENAI_API_KEY); several servers: repeat the option or give a comma list")
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight per server (openai)")
    parser.add_argument("--timeout", type=float, default=120.0,
                        help="total deadline in seconds for one request, however slowly the reply comes (openai)")
    parser.add_argument("--max-retries", type=int, default=4,
                        help="failures in a row after which a server is given up, each followed by an "
                             "exponential back-off out of rotation (openai)")
    parser.add_argument("--batch-size", type=int, default=8, help="prompts per generate call (transformers)")
    parser.add_argument("--device", help="device of the local pipeline, e.g. cuda:0 (transformers)")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--temperature", type=float, default=0.0, help="first-attempt temperature (openai)")
    parser.add_argument("--prompt", type=Path, help=f"prompt template file overriding the built-in {stage} prompt")
    parser.add_argument("--max-attempts", type=int, default=3, help="attempts per record before it is rejected")
    parser.add_argument("--retry-rejected", action="store_true", help="retry records the cache holds as rejected")
    parser.add_argument("--min-words", type=int, default=rules.min_words)
    parser.add_argument("--max-words", type=int, default=rules.max_words)
    parser.add_argument("--cache", type=Path, help="JSONL cache file (default: OUT/cache/<stage>.jsonl)")
    parser.add_argument("--on-missing", choices=ON_MISSING, default="error",
                        help="images that are absent (or lack a stage-1 caption): error, or skip and report")
    parser.add_argument("--no-progress", action="store_true")


# -------------------------------------------------------------------------------------------- commands
def run_pairs(args: argparse.Namespace) -> int:
    # Imported here: torch is slow to import and only pair mining needs it.
    from .pairs import MiningOptions, mine_pairs, write_pairs

    options = MiningOptions(args.min_similarity, args.max_similarity, args.top_k, args.pairs_per_image,
                            args.max_uses, args.seed)
    source = DatasetImages(args.dataset, args.config, args.split)
    pairs, skipped = mine_pairs(source, args.model, options, batch_size=args.batch_size, device=args.device,
                                progress=not args.no_progress, trust_remote_code=args.trust_remote_code)
    category = args.config.removesuffix("-gallery")
    write_pairs(args.out, pairs, category=category, split=args.split, source=str(args.dataset), model=args.model,
                options=options, skipped=skipped)
    print(f"pairs: {len(pairs)} pairs from {len(source.ids())} images ({len(skipped)} skipped: do not decode) "
          f"-> {args.out}", file=sys.stderr)
    return 0


def run_captions(args: argparse.Namespace) -> int:
    options, template = _backend_options(args), load_template("caption", args.prompt)
    pairs_file = read_pairs(args.pairs) if args.pairs else None
    category = args.category or args.config or (pairs_file.category if pairs_file else None)
    split = args.split or (pairs_file.split if pairs_file else None) or "train"
    if not category:
        raise DataError("the output category is unknown: pass --category (or --config)")
    if args.dataset:
        if not args.config:
            raise DataError("--dataset needs --config (the category config whose gallery to caption)")
        source = DatasetImages(args.dataset, args.config, split)
    else:
        source = FolderImages(args.images)
    run = _stage_run(args, category, split, CAPTION_RULES)
    image_ids = pair_images(pairs_file.pairs) if pairs_file else source.ids()
    backend = make_backend(options, VLM_TASK)
    try:
        summary, path = annotate_captions(source, image_ids, backend, template, run)
    finally:
        backend.close()
    return _finish([summary], path)


def run_modifications(args: argparse.Namespace) -> int:
    options, template = _backend_options(args), load_template("modification", args.prompt)
    pairs_file = read_pairs(args.pairs)
    category = args.category or pairs_file.category
    split = args.split or pairs_file.split
    if not category or not split:
        raise DataError(f"{args.pairs} does not name its category and split: pass --category and --split")
    captions = read_captions(args.captions, category, split)
    run = _stage_run(args, category, split, MODIFICATION_RULES)
    backend = make_backend(options, LLM_TASK)
    try:
        summary, path = annotate_modifications(pairs_file.pairs, captions, backend, template, run,
                                               output_format=args.output_format)
    finally:
        backend.close()
    return _finish([summary], path)


def run_enhance(args: argparse.Namespace) -> int:
    run = _stage_run(args, args.category, fashioniq_split(args.split), MODIFICATION_RULES)
    caption_options = _backend_options(args, model=args.caption_model or args.model)
    options = _backend_options(args)
    caption_template = load_template("caption", args.caption_prompt)
    template = load_template("enhance", args.prompt)
    caption_backend = make_backend(caption_options, VLM_TASK)
    try:
        backend = make_backend(options, LLM_TASK)
        try:
            summaries, path = enhance_fashioniq(args.fashioniq_root, args.images or args.fashioniq_root / "images",
                                                caption_backend, backend, caption_template, template, run,
                                                CAPTION_RULES)
        finally:
            backend.close()
    finally:
        caption_backend.close()
    return _finish(summaries, path)


# ---------------------------------------------------------------------------------------------- helpers
def _backend_options(args: argparse.Namespace, model: str | None = None) -> BackendOptions:
    return BackendOptions(
        backend=args.backend, model=model or args.model, base_url=tuple(args.base_url or ()) or None,
        concurrency=args.concurrency,
        timeout=args.timeout, max_retries=args.max_retries, max_new_tokens=args.max_new_tokens,
        temperature=args.temperature, batch_size=args.batch_size, device=args.device,
    )


def _stage_run(args: argparse.Namespace, category: str, split: str, rules: OutputRules) -> StageRun:
    try:
        bounded = OutputRules(args.min_words, args.max_words, rules.one_sentence, rules.exclusive_category)
    except ValueError as error:
        raise DataError(str(error)) from None
    return StageRun(out=args.out, category=category, split=split, rules=bounded, cache_path=args.cache,
                    max_attempts=args.max_attempts, retry_rejected=args.retry_rejected,
                    on_missing=args.on_missing, progress=not args.no_progress)


def _finish(summaries: list[RunSummary], path: Path) -> int:
    for summary in summaries:
        print(summary.line(), file=sys.stderr)
        for problem in summary.problems[:5]:
            print(f"  {problem['status']}: {problem['id']}: {problem['reason']}", file=sys.stderr)
        if len(summary.problems) > 5:
            print(f"  ... {len(summary.problems) - 5} more in the report under reports/", file=sys.stderr)
    print(f"wrote {path}", file=sys.stderr)
    return 0
