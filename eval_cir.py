"""Composed image retrieval evaluation (Fashion IQ and CIRR protocols), every choice an option.

    python eval_cir.py --model DIR --dataset DIR_OR_ID --configs dress,shirt,toptee --split validation \\
        --output results.json
    accelerate launch eval_cir.py --model DIR --dataset DIR --configs dress     # encoding sharded over processes

This file parses the command line; the evaluation itself is the `facap_eval` package (its Python API:
`facap_eval.evaluate`, `evaluate_baseline`, `gallery_embeddings`, `Protocol`, `Runtime`, ...).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from facap_dataset.captions import CAPTION_JOIN_RULES
from facap_dataset.schema import FASHIONIQ_CATEGORIES
from facap_eval import cli
from facap_eval.protocol import BASELINES, BREAKDOWNS, DEFAULT_TEXT_LENGTH_EDGES, K_ABOVE_GALLERY, PRECISIONS
from facap_io.lists import comma_list, int_list
from facap_retrieval.ranking import DEFAULT_K_VALUES


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", required=True, help="saved model folder or Hub id")
    parser.add_argument("--trust-remote-code", action="store_true", help="run code shipped inside the model folder")
    parser.add_argument("--dataset", required=True, help="built dataset folder or Hub id")
    parser.add_argument("--configs", type=comma_list, default=list(FASHIONIQ_CATEGORIES), help="comma-separated triplet configs")
    parser.add_argument("--split", default="validation")
    parser.add_argument("--output", type=Path, help="write results.json here")
    parser.add_argument("--baseline", choices=BASELINES, help="evaluate a trivial baseline with the model's embeddings")
    parser.add_argument(
        "--exclude-reference",
        action="store_const",
        const=True,
        help="drop each query's reference image from its ranking (CoVR/CIRR convention; CIRR data always does)",
    )
    parser.add_argument("--caption-join", choices=CAPTION_JOIN_RULES, default="fashioniq")
    parser.add_argument("--k-values", type=int_list, default=list(DEFAULT_K_VALUES), help="comma-separated K values")
    parser.add_argument(
        "--k-above-gallery",
        choices=K_ABOVE_GALLERY,
        default="error",
        help="a K larger than a gallery: an error before encoding, or dropped for that gallery with a note",
    )
    parser.add_argument(
        "--breakdown",
        type=comma_list,
        action="extend",
        metavar="|".join(BREAKDOWNS),
        help="per-bucket recall by words of the joined text, or by the triplets' num_changes column (repeatable)",
    )
    parser.add_argument(
        "--text-length-edges",
        type=int_list,
        default=list(DEFAULT_TEXT_LENGTH_EDGES),
        help="ascending word-count bucket edges of --breakdown text-length (default: %(default)s)",
    )
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", help="default: cuda when available, else cpu (one process)")
    parser.add_argument("--precision", choices=tuple(PRECISIONS), default="fp32")
    parser.add_argument("--num-workers", type=int, default=0, help="data-loading worker processes")
    parser.add_argument("--cache-dir", type=Path, help="cache gallery embeddings here (keyed by model and data fingerprints)")
    parser.add_argument("--predictions", type=Path, help="write ranking files here (Fashion IQ format, or CIRR server files)")
    parser.add_argument("--report", type=Path, help="write the HTML + PNG visual report here")
    parser.add_argument("--report-samples", type=int, default=24, help="queries per config in the report (failures first)")
    parser.add_argument("--no-progress", action="store_true")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    return cli.run(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
