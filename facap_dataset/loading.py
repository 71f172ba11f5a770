"""`facap_dataset.load(name_or_dir, config, **kw)`: `load_dataset` for a built folder or a Hub id, no cwd trap.

`datasets.load_dataset("org/name")` prefers a folder called `org/name` in the current directory over the
Hub repo of that name, silently. Here the caller's intent decides:

- a `Path` (any `os.PathLike`), or a string that is visibly a path (absolute, or starting with `.` or
  `~`): a local dataset folder written by `build` (it must exist and have a dataset card);
- `hf://datasets/org/name`: the Hub repo, whatever the current directory holds;
- any other string is a Hub id and is loaded from the Hub; if a folder of that name exists in the
  current directory too, the call is refused as ambiguous instead of picking one.
"""

from __future__ import annotations

import os
from pathlib import Path

import datasets
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

from .errors import DataError
from .export import read_card_data

HUB_PREFIX = "hf://datasets/"


def _is_path(name: str) -> bool:
    return os.path.isabs(name) or name.startswith((".", "~")) or (os.sep != "/" and os.sep in name)


def _local_folder(path: Path, config: str | None) -> str:
    folder = path.expanduser().resolve()
    if not folder.is_dir():
        raise DataError(f"no dataset folder at {folder}")
    card = read_card_data(folder)
    if card is None:
        raise DataError(f"{folder} is not a built dataset folder (no README.md dataset card with `configs:`)")
    names = [entry["config_name"] for entry in card["configs"]]
    if config is not None and config not in names:
        raise DataError(f"{folder} has no config {config!r}; it has: {', '.join(names)}")
    return str(folder)


def resolve(name_or_dir: str | os.PathLike, config: str | None = None) -> str:
    """The `path` argument to give `datasets.load_dataset`: an absolute folder or an `hf://datasets/` id."""
    if isinstance(name_or_dir, os.PathLike):
        return _local_folder(Path(name_or_dir), config)
    name = str(name_or_dir)
    if name.startswith(HUB_PREFIX):
        return name
    if _is_path(name):
        return _local_folder(Path(name), config)
    try:
        validate_repo_id(name)
    except HFValidationError as err:
        raise DataError(f"{name!r} is neither a dataset folder path nor a Hub dataset id: {err}") from None
    if Path(name).exists():
        raise DataError(
            f"{name!r} is ambiguous: a Hub dataset id, and also {Path(name).resolve()} in the current "
            f"directory. Pass Path({name!r}) or './{name}' for the folder, or '{HUB_PREFIX}{name}' for the Hub"
        )
    return HUB_PREFIX + name


def load(name_or_dir: str | os.PathLike, config: str | None = None, **kwargs):
    """`datasets.load_dataset` on a built folder or a Hub id (see the module docstring for which is which).

    `kwargs` go to `load_dataset` unchanged (`split`, `streaming`, `cache_dir`, `revision`, ...).
    """
    return datasets.load_dataset(resolve(name_or_dir, config), config, **kwargs)
