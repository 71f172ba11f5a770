"""`facap-app` (and `python app.py`, `python -m facap_app`): serve the demo, or `facap-app space DIR ...` to write
a Hugging Face Space folder (`facap_app.space`). Bad input is one `error:` line and exit code 2; a port in use, exit code 1."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Sequence

from facap_io.atomic import check_writable
from facap_io.paths import inside

from .errors import USER_ERRORS
from .options import parse_args
from .startup import create_app, launch

SPACE_COMMAND = "space"


def serve(argv: Sequence[str] | None = None) -> int:
    options = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="facap-app-") as files_dir:
        try:
            if options.save_index is not None:  # checked before the galleries are encoded, not after
                check_writable(options.save_index, what="--save-index", folder=True)
            demo, engine = create_app(options, Path(files_dir))
            if options.save_index is not None:
                for catalogue in engine.catalogues.values():
                    folder = catalogue.index.save(inside(options.save_index, catalogue.config, what="gallery config"))
                    print(f"saved the {catalogue.config} index: serve it with --index {catalogue.config}={folder}")
                return 0
        except USER_ERRORS as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        try:
            launch(demo, options, Path(files_dir))
        except OSError as error:  # e.g. the port is taken
            print(f"error: cannot start the web server: {error}", file=sys.stderr)
            return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == [SPACE_COMMAND]:
        from .space import main as write_space

        return write_space(argv[1:])
    return serve(argv)
