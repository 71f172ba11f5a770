"""Opening a built dataset: one rule for which folder or Hub repo a name means, and one helper that training,
evaluation and the app use to list configs and load splits with clear errors.

Which dataset a name means follows `datasets.load_dataset`, so `load("facap", "dress")` and the literal
`load_dataset("facap", "dress")` agree:

- a `Path` (any `os.PathLike`), or a string naming an existing folder (relative to the current directory,
  absolute, or with `~`): that local folder, which must be a built dataset folder (a dataset card with
  `configs:`); as in `datasets`, a local folder wins over a Hub repo of the same name;
- `hf://datasets/org/name` or any other valid repo id: the Hub dataset.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import datasets
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

from facap_io.errors import first_line

from .errors import DataError
from .export import read_card_data

HUB_PREFIX = "hf://datasets/"


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
    if Path(name).expanduser().exists() or os.path.isabs(name) or name.startswith((".", "~")):
        return _local_folder(Path(name), config)
    try:
        validate_repo_id(name)
    except HFValidationError as err:
        raise DataError(f"{name!r} is neither a dataset folder nor a Hub dataset id: {err}") from None
    return HUB_PREFIX + name


def load(name_or_dir: str | os.PathLike, config: str | None = None, **kwargs):
    """`datasets.load_dataset` on a built folder or a Hub id (see the module docstring for which is which).

    `kwargs` go to `load_dataset` unchanged (`split`, `streaming`, `cache_dir`, `revision`, ...).
    """
    return datasets.load_dataset(resolve(name_or_dir, config), config, **kwargs)


@dataclass(frozen=True)
class OpenedDataset:
    """A built dataset whose configs are known: what training, evaluation and the app read splits through."""

    name: str  # as the user gave it, for messages
    path: str  # what `datasets.load_dataset` gets
    configs: tuple[str, ...]

    def require(self, config: str) -> str:
        if config not in self.configs:
            raise DataError(f"dataset {self.name} has no config {config!r} (it has: {', '.join(self.configs) or 'none'})")
        return config

    def split_sizes(self, config: str) -> dict[str, int]:
        """Split name -> number of rows, from the card (no data is read)."""
        try:
            splits = datasets.load_dataset_builder(self.path, self.require(config)).info.splits or {}
        except (OSError, ValueError) as error:
            raise DataError(f"dataset {self.name}, config {config!r}: {first_line(error)}") from None
        return {name: info.num_examples for name, info in splits.items()}

    def load_split(self, config: str, split: str, *, streaming: bool = False) -> datasets.Dataset:
        """One split of one config; a missing config or split, or a shard that cannot be read, is a DataError."""
        sizes = self.split_sizes(config)
        if sizes and split not in sizes:
            raise DataError(f"dataset {self.name}, config {config!r}: no split {split!r} (splits: {', '.join(sizes)})")
        try:
            return datasets.load_dataset(self.path, config, split=split, streaming=streaming)
        except Exception as error:  # noqa: BLE001 - pyarrow, datasets and OS errors all mean "unreadable shard"
            cause = error.__cause__ or error.__context__ or error
            raise DataError(
                f"dataset {self.name}, config {config!r}, split {split!r} cannot be read: {first_line(cause)}"
            ) from None


def open_dataset(name_or_dir: str | os.PathLike) -> OpenedDataset:
    """Resolve `name_or_dir` (module docstring) and list its configs; one DataError line when it cannot be read."""
    path = resolve(name_or_dir)
    try:
        configs = datasets.get_dataset_config_names(path)
    except Exception as error:  # noqa: BLE001 - offline Hub ids, unreadable cards: one line either way
        raise DataError(f"cannot read dataset {name_or_dir!s}: {first_line(error)}") from None
    return OpenedDataset(str(name_or_dir), path, tuple(configs))

