"""Reproduce the FACap paper's experiment grid with one command: every dataset build, training run and
evaluation of a plan (scripts/plans/*.yaml), then DIR/results.md, results.json and results.png.

    python scripts/paper.py --plan paper-synthetic --out paper_output        # `make paper`
    python scripts/paper.py --plan paper-blip2 --out paper_blip2 --launch '--multi_gpu --num_processes 4'

A rerun with the same --out continues where a killed one stopped. See docs/paper.md.
"""

import sys
from pathlib import Path

from facap_paper.cli import main

if __name__ == "__main__":
    sys.exit(main(plans_dir=Path(__file__).resolve().parent / "plans"))
