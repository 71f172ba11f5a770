"""`python -m modeling_fashionblip2 convert SRC OUT`: a Blip2ForImageTextRetrieval checkpoint (folder or Hub id)
into a saved FashionBLIP-2 folder (model + processor + remote code), written atomically.

Not part of the remote code (it uses `facap_io` for the folder swap).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from facap_io.atomic import staged_folder
from facap_io.errors import FacapError

from .convert import ConversionError
from .modeling_fashionblip2 import FashionBlip2Model
from .processing_fashionblip2 import FASHIONIQ_TARGET_PAD_RATIO, FashionBlip2Processor

PROG = "python -m modeling_fashionblip2"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=PROG, description="FashionBLIP-2 model tools.")
    commands = parser.add_subparsers(dest="command", required=True)
    convert = commands.add_parser("convert", help="BLIP-2 retrieval checkpoint -> saved FashionBLIP-2 folder")
    convert.add_argument("source", help="BLIP-2 retrieval checkpoint: a local folder or a Hub id")
    convert.add_argument("output", type=Path, help="folder to write (refused if it exists, unless --overwrite)")
    convert.add_argument("--matching", choices=("multihead", "max"), default="multihead")
    convert.add_argument("--adapter-dim", type=int, help="adapter bottleneck width (0: no adapters)")
    convert.add_argument("--num-heads", type=int, help="n_t, rows after TokenMix")
    convert.add_argument("--max-text-length", type=int, default=64)
    convert.add_argument(
        "--target-pad", action="store_true", help=f"Fashion IQ target pad (ratio {FASHIONIQ_TARGET_PAD_RATIO})"
    )
    convert.add_argument("--overwrite", action="store_true")
    return parser.parse_args(argv)


def convert(args: argparse.Namespace) -> dict:
    """Convert, then write model + processor into a hidden sibling that replaces `args.output` whole."""
    if args.output.exists() and not args.overwrite:
        raise FacapError(f"{args.output} exists; pass --overwrite to replace it")
    overrides = {"matching": args.matching, "max_text_length": args.max_text_length}
    for field in ("adapter_dim", "num_heads"):
        if getattr(args, field) is not None:
            overrides[field] = getattr(args, field)
    model, info = FashionBlip2Model.from_blip2(args.source, output_loading_info=True, **overrides)
    processor = FashionBlip2Processor.from_blip2(
        args.source,
        max_text_length=args.max_text_length,
        target_pad_ratio=FASHIONIQ_TARGET_PAD_RATIO if args.target_pad else None,
    )
    with staged_folder(args.output) as staging:
        model.save_pretrained(staging)
        processor.save_pretrained(staging)
    return {"output": str(args.output), **info}


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        report = convert(args)
    except (ConversionError, FacapError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2))
    return 0
