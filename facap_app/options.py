"""The app's options: one frozen dataclass, read from the command line and from environment variables.

A Hugging Face Space starts `app.py` with no arguments, so every option a Space needs can also come from a
variable (`FACAP_MODEL`, `FACAP_DATASET`, ...: `ENVIRONMENT`); a flag always wins over its variable.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Mapping, Sequence

from facap_io.lists import parse_list

DEFAULT_MODEL = "demo_output/run/best"  # what `make demo` trains and builds
DEFAULT_DATASET = "./demo_output/synthetic"
DEFAULT_CACHE_DIR = Path.home() / ".cache" / "facap" / "app"
DEFAULT_UPLOAD_TTL = 3600

# Option -> environment variable read when the flag is not given.
ENVIRONMENT = {
    "model": "FACAP_MODEL",
    "dataset": "FACAP_DATASET",
    "configs": "FACAP_CONFIGS",
    "split": "FACAP_SPLIT",
    "indexes": "FACAP_INDEX",
    "cache_dir": "FACAP_CACHE_DIR",
    "device": "FACAP_DEVICE",
}


@dataclass(frozen=True)
class AppOptions:
    """Everything `create_app` needs; see `build_parser` for each field's meaning."""

    model: str = DEFAULT_MODEL
    dataset: str = DEFAULT_DATASET
    configs: tuple[str, ...] | None = None  # None: every *-gallery config
    split: str = "validation"
    indexes: tuple[str, ...] = ()  # "[CONFIG=]DIR" items
    cache_dir: Path = DEFAULT_CACHE_DIR
    save_index: Path | None = None
    top_k: int = 10
    num_examples: int = 4
    device: str | None = None
    batch_size: int = 64
    host: str | None = None
    port: int | None = None
    trust_remote_code: bool = False
    upload_ttl: int = DEFAULT_UPLOAD_TTL


def _env_help(option: str) -> str:
    return f" (env {ENVIRONMENT[option]})"


def build_parser(environ: Mapping[str, str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="facap-app",
        description="Interactive composed image retrieval demo: a Gradio app over an indexed catalogue. "
        "`facap-app space DIR ...` writes a Hugging Face Space folder instead (see `facap-app space --help`).",
    )
    parser.add_argument("--model", default=environ.get(ENVIRONMENT["model"], DEFAULT_MODEL),
                        help="saved FashionBLIP-2 folder or Hub id (default: %(default)s)" + _env_help("model"))
    parser.add_argument("--dataset", default=environ.get(ENVIRONMENT["dataset"], DEFAULT_DATASET),
                        help="built dataset folder or Hub id (default: %(default)s)" + _env_help("dataset"))
    parser.add_argument("--config", action="append", dest="configs", metavar="CONFIG",
                        help="gallery config(s) to search, repeatable or comma-separated (default: every *-gallery "
                        "config)" + _env_help("configs"))
    parser.add_argument("--split", default=environ.get(ENVIRONMENT["split"], "validation"),
                        help="gallery and examples split (default: %(default)s)" + _env_help("split"))
    parser.add_argument("--index", action="append", dest="indexes", metavar="[CONFIG=]DIR",
                        help="a saved CIRIndex folder to search instead of encoding the gallery; CONFIG= is needed "
                        "with several configs; repeatable" + _env_help("indexes") + ", comma-separated")
    parser.add_argument("--cache-dir", type=Path, default=Path(environ.get(ENVIRONMENT["cache_dir"], DEFAULT_CACHE_DIR)),
                        help="gallery embedding cache, shared with eval_cir.py (default: %(default)s)"
                        + _env_help("cache_dir"))
    parser.add_argument("--save-index", type=Path, metavar="DIR",
                        help="write each gallery's index to DIR/CONFIG for --index, then exit")
    parser.add_argument("--top-k", type=int, default=10, help="results shown per query (default: %(default)s)")
    parser.add_argument("--num-examples", type=int, default=4, help="example triplets per category (default: 4)")
    parser.add_argument("--device", default=environ.get(ENVIRONMENT["device"]),
                        help="torch device (default: cuda when present, else cpu)" + _env_help("device"))
    parser.add_argument("--batch-size", type=int, default=64, help="batch size when encoding the catalogue")
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="allow a model folder that is not FashionBLIP-2 to run the code it ships (auto_map); "
                        "FashionBLIP-2 folders never need it")
    parser.add_argument("--upload-ttl", type=int, default=DEFAULT_UPLOAD_TTL, metavar="SECONDS",
                        help="uploaded references are deleted this long after upload (default: %(default)s)")
    # Left to Gradio by default: 127.0.0.1 and the first free port from 7860, unless GRADIO_SERVER_NAME /
    # GRADIO_SERVER_PORT say otherwise (as they do on a Hugging Face Space).
    parser.add_argument("--host", help="address to serve on (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port to serve on (default: the first free one from 7860)")
    return parser


def _list_option(parser, flag: str, values: Sequence[str] | None, environ: Mapping[str, str], option: str):
    """The flag's items when given, else the variable's comma list, else None; an empty list is an error."""
    source = values if values else ([environ[ENVIRONMENT[option]]] if environ.get(ENVIRONMENT[option]) else None)
    if source is None:
        return None
    try:
        return tuple(parse_list(source, what=flag.lstrip("-")))
    except ValueError as error:
        parser.error(f"{flag}: {error}")


def parse_args(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> AppOptions:
    """Options from `argv` (default: sys.argv) and `environ` (default: os.environ); flags win."""
    environ = os.environ if environ is None else environ
    parser = build_parser(environ)
    args = parser.parse_args(argv)
    for name, value, minimum in (("--top-k", args.top_k, 1), ("--batch-size", args.batch_size, 1),
                                 ("--num-examples", args.num_examples, 0), ("--upload-ttl", args.upload_ttl, 1)):
        if value < minimum:
            parser.error(f"{name} must be >= {minimum}, got {value}")
    values = {field.name: getattr(args, field.name) for field in fields(AppOptions)}  # argparse dests = field names
    values["configs"] = _list_option(parser, "--config", args.configs, environ, "configs")
    values["indexes"] = _list_option(parser, "--index", args.indexes, environ, "indexes") or ()
    return AppOptions(**values)
