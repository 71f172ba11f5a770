"""Convert a Blip2ForImageTextRetrieval checkpoint into a saved FashionBLIP-2 folder (model + processor + remote
code), e.g. `python -m modeling_fashionblip2.convert Salesforce/blip2-itm-vit-g out/fashionblip2-vit-g`.
Not part of the remote code.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from .modeling_fashionblip2 import CheckpointError, FashionBlip2Model
from .processing_fashionblip2 import FASHIONIQ_TARGET_PAD_RATIO, FashionBlip2Processor


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m modeling_fashionblip2.convert", description=__doc__.split("\n")[0]
    )
    parser.add_argument("source", help="BLIP-2 retrieval checkpoint: a local folder or a Hub id")
    parser.add_argument("output", type=Path, help="folder to write (refused if it exists, unless --overwrite)")
    parser.add_argument("--matching", choices=("multihead", "max"), default="multihead")
    parser.add_argument("--adapter-dim", type=int, help="adapter bottleneck width (0: no adapters)")
    parser.add_argument("--num-heads", type=int, help="n_t, rows after TokenMix")
    parser.add_argument("--max-text-length", type=int, default=64)
    parser.add_argument(
        "--target-pad", action="store_true", help=f"Fashion IQ target pad (ratio {FASHIONIQ_TARGET_PAD_RATIO})"
    )
    parser.add_argument("--overwrite", action="store_true")
    return parser.parse_args(argv)


def convert(args: argparse.Namespace) -> dict:
    """Write model + processor to a temporary sibling folder, then move it into place (never half-written)."""
    if args.output.exists() and not args.overwrite:
        raise FileExistsError(f"{args.output} exists; pass --overwrite to replace it")
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
    args.output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{args.output.name}.", dir=args.output.parent))
    try:
        model.save_pretrained(staging)
        processor.save_pretrained(staging)
        if args.output.exists():
            shutil.rmtree(args.output)
        os.replace(staging, args.output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return {"output": str(args.output), **info}


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        report = convert(args)
    except (CheckpointError, FileExistsError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
