"""`python -m facap_dataset {build,inspect,push,annotate} ...`: one entry point, sub-commands registered by
the modules that implement them."""

from __future__ import annotations

import argparse
import importlib
import sys

from facap_io.errors import FacapError

# Modules that register their sub-commands: data sources under `build`, then the top-level commands.
_BUILDERS = ("synthetic", "builders", "cirr")
_COMMANDS = ("inspect", "hub", "annotate.cli")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m facap_dataset",
        description="Build, inspect, publish and annotate fashion composed-image-retrieval datasets.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    build = commands.add_parser(
        "build",
        help="build a dataset folder (Parquet shards + dataset card) loadable with load_dataset",
        description="Build a dataset folder of Parquet shards plus a README.md dataset card.",
    )
    sources = build.add_subparsers(dest="source", required=True, metavar="SOURCE")
    for name in _BUILDERS:
        importlib.import_module(f".{name}", __package__).add_parser(sources)
    for name in _COMMANDS:
        importlib.import_module(f".{name}", __package__).add_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except FacapError as error:  # DataError, PushError, unwritable outputs: one line, no traceback
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
