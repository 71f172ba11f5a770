"""`facap-app space DIR --model M --dataset D`: write a ready Hugging Face Space folder that serves the demo.

The folder holds:
- `README.md`: the Space card, whose YAML header (`sdk: gradio`, `sdk_version`, `app_file: app.py`, ...) is
  written with huggingface_hub's `SpaceCardData`;
- `app.py`: sets the `FACAP_*` defaults (the Space's own variables override them) and calls `facap_app`;
- `requirements.txt`: what the Space installs. How it gets our code: by default the folder bundles the sources
  of the packages the app imports (the Space runs `app.py` from the folder root, which Python puts first on
  the import path), so it runs exactly the version that wrote it, with no index or git server involved; with
  `--requirement SPEC` (e.g. `facap[app] @ git+https://github.com/ORG/facap@v0.1.0`) nothing is bundled
  and requirements.txt names that package instead;
- `model/`, `data/`, `indexes/CONFIG/`: copies of a local model, dataset and index folders (Hub ids are
  referenced, not copied).

The folder is built aside and moved into place whole; an existing DIR must be empty (nothing of the user's is
ever replaced).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import json
import shutil
import sys
from pathlib import Path
from typing import Sequence

import gradio as gr
from huggingface_hub import SpaceCard, SpaceCardData

from facap_io.atomic import staged_folder
from facap_io.lists import parse_list
from facap_io.paths import plain_name
from facap_retrieval.index import check_index

from .errors import USER_ERRORS, AppError
from .options import ENVIRONMENT

DISTRIBUTION = "facap"
# The packages `facap_app` imports at run time (and their own imports of ours): what a Space bundles.
BUNDLED_PACKAGES = ("facap_app", "facap_dataset", "facap_eval", "facap_io", "facap_retrieval", "modeling_fashionblip2")
MODEL_DIR, DATASET_DIR, INDEX_DIR = "model", "data", "indexes"
SPACE_TAGS = ["composed-image-retrieval", "fashion", "fashionblip2"]
_SKIP = shutil.ignore_patterns("__pycache__", "*.pyc", ".*")

APP_TEMPLATE = '''"""FashionBLIP-2 composed image retrieval demo as a Hugging Face Space (written by `facap-app space`).

The Space's variables (Settings > Variables) override these defaults: {variables}.
A value starting with "./" is a path inside this folder.
"""

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULTS = {defaults}


def _inside_here(item: str) -> str:
    """Map a "./x" value (also after "CONFIG=") to this folder's x, wherever the Space is started from."""
    config, sep, path = item.rpartition("=")
    return f"{{config}}{{sep}}{{HERE / path[2:]}}" if path.startswith("./") else item


for name, value in DEFAULTS.items():
    os.environ.setdefault(name, ",".join(_inside_here(item) for item in value.split(",")))

from facap_app.cli import main  # noqa: E402  (after the defaults: the options read them)

if __name__ == "__main__":
    sys.exit(main([]))
'''


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="facap-app space", description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, metavar="DIR", help="the Space folder to write (new or empty)")
    parser.add_argument("--model", required=True, help="saved FashionBLIP-2 folder (copied) or Hub id")
    parser.add_argument("--dataset", required=True, help="built dataset folder (copied) or Hub id")
    parser.add_argument("--config", action="append", dest="configs", metavar="CONFIG",
                        help="gallery config(s) to serve, repeatable or comma-separated (default: all)")
    parser.add_argument("--split", default="validation", help="gallery and examples split (default: %(default)s)")
    parser.add_argument("--index", action="append", dest="indexes", default=[], metavar="CONFIG=DIR",
                        help="a saved index folder to serve for CONFIG (copied)")
    parser.add_argument("--title", default="FashionBLIP-2 composed image retrieval", help="the Space's title")
    parser.add_argument("--requirement", metavar="SPEC",
                        help="install our package from this pip requirement instead of bundling its sources")
    return parser


def _is_local(value: str) -> bool:
    return Path(value).expanduser().exists() or value.startswith((".", "/", "~"))


def _copy_folder(source: str, space: Path, relative: str, what: str) -> str:
    """Copy the folder `source` to `space/relative` (symlinks followed); returns the app's "./relative"."""
    folder = Path(source).expanduser()
    if not folder.is_dir():
        raise AppError(f"{what} {source!r} is not a folder (give a local folder or a Hub id)")
    shutil.copytree(folder, space / relative, ignore=_SKIP)
    return f"./{relative}"


def _reference(value: str, space: Path, relative: str, what: str) -> str:
    """A Hub id as is; a local folder copied into the Space."""
    return _copy_folder(value, space, relative, what) if _is_local(value) else value


def _requirements(spec: str | None, index_backends: set[str]) -> list[str]:
    """The distribution's own requirements plus its `app` extra (and `faiss` for a FAISS index), or `spec`."""
    requires = importlib.metadata.requires(DISTRIBUTION) or []
    extras = {"app"} | ({"faiss"} if any(b.startswith("faiss") for b in index_backends) else set())
    lines = []
    for line in requires:
        requirement, _, marker = line.partition(";")
        extra = marker.split("==")[-1].strip().strip("\"'") if "extra" in marker else None
        if (extra is None or extra in extras) and requirement.strip() not in lines:
            lines.append(requirement.strip())
    return ([spec] if spec else []) + lines


def _bundle_sources(folder: Path) -> None:
    for name in BUNDLED_PACKAGES:
        package = Path(importlib.import_module(name).__file__).parent
        shutil.copytree(package, folder / name, ignore=_SKIP)


def _card(args, defaults: dict[str, str]) -> SpaceCard:
    data = SpaceCardData(
        title=args.title,
        sdk="gradio",
        sdk_version=gr.__version__,
        app_file="app.py",
        license="apache-2.0",
        models=[args.model] if not _is_local(args.model) else None,
        datasets=[args.dataset] if not _is_local(args.dataset) else None,
        tags=SPACE_TAGS,
        pinned=False,
    )
    settings = "\n".join(f"| `{name}` | `{value}` |" for name, value in defaults.items())
    body = (
        f"# {args.title}\n\n"
        "Pick a reference garment, describe the change you want (\"is red with long sleeves\"), and search the "
        "catalogue with FashionBLIP-2 composed image retrieval.\n\n"
        "Written by `facap-app space`. The app reads its settings from these variables (set them under "
        "Settings > Variables to override the defaults):\n\n| variable | default |\n| --- | --- |\n"
        f"{settings}\n"
    )
    return SpaceCard(f"---\n{data.to_yaml()}\n---\n\n{body}")


def write_space(args: argparse.Namespace) -> Path:
    out: Path = args.out
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise AppError(f"Space folder {out} exists and is not empty; give a new or empty folder")
    configs = parse_list(args.configs, what="config") if args.configs else None
    indexes = {}
    for item in args.indexes:
        config, sep, folder = item.partition("=")
        if not sep or not config:
            raise AppError(f"--index {item}: expected CONFIG=DIR")
        indexes[config] = check_index(folder)  # refuses a folder that is no index, before anything is copied
    with staged_folder(out) as staging:
        defaults = {
            ENVIRONMENT["model"]: _reference(args.model, staging, MODEL_DIR, "--model"),
            ENVIRONMENT["dataset"]: _reference(args.dataset, staging, DATASET_DIR, "--dataset"),
            ENVIRONMENT["split"]: args.split,
        }
        if configs:
            defaults[ENVIRONMENT["configs"]] = ",".join(configs)
        if indexes:
            copied = [f"{c}={_copy_folder(str(m.directory), staging, f'{INDEX_DIR}/{plain_name(c)}', '--index')}" for c, m in indexes.items()]
            defaults[ENVIRONMENT["indexes"]] = ",".join(copied)
        variables = ", ".join(ENVIRONMENT.values())
        (staging / "app.py").write_text(APP_TEMPLATE.format(variables=variables, defaults=json.dumps(defaults, indent=4)))
        requirements = _requirements(args.requirement, {m.backend for m in indexes.values()})
        (staging / "requirements.txt").write_text("\n".join(requirements) + "\n")
        if not args.requirement:
            _bundle_sources(staging)
        _card(args, defaults).save(staging / "README.md")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        out = write_space(args)
    except USER_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote the Space folder {out}: push it with `hf upload ORG/NAME {out} . --repo-type space`")
    return 0
