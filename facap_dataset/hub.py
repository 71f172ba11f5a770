"""`python -m facap_dataset push DIR REPO_ID`: upload a built dataset folder to the Hub unchanged.

The folder already has the layout `push_to_hub` writes (`README.md` + `<config>/<split>-*.parquet`), so
pushing is one commit of exactly those files. Shards of an earlier push that the new build no longer
has are deleted in the same commit, so a rebuilt dataset never mixes old and new rows. The token comes
from the environment (`HF_TOKEN`) or a `huggingface-cli login`, never from the command line.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

from .errors import DataError
from .export import CARD_FILENAME, read_card_data


def upload_plan(dataset_dir: str | os.PathLike) -> list[str]:
    """The files a push uploads (relative to `dataset_dir`): the card and every config's shards.

    Raises:
        DataError: `dataset_dir` is not a built dataset folder, or a config of its card has no shard.
    """
    root = Path(dataset_dir)
    card = read_card_data(root)
    if card is None:
        raise DataError(f"{root} is not a built dataset folder (no {CARD_FILENAME} with `configs:`)")
    files = [CARD_FILENAME]
    for config in card["configs"]:
        for entry in config["data_files"]:
            shards = sorted(p.relative_to(root).as_posix() for p in root.glob(entry["path"]) if p.is_file())
            if not shards:
                name, split = config["config_name"], entry["split"]
                raise DataError(f"{root}: config {name!r} split {split!r} has no file matching {entry['path']!r}")
            files += shards
    return files


def push(
    dataset_dir: str | os.PathLike,
    repo_id: str,
    *,
    private: bool | None = None,
    commit_message: str | None = None,
    dry_run: bool = False,
    api: HfApi | None = None,
) -> list[str]:
    """Upload a built dataset folder as the dataset repo `repo_id` (created if needed); returns the files.

    One commit adds the card and the shards and deletes the repo's other `.parquet` files (shards of an
    earlier build), so readers never see old and new rows mixed. `dry_run=True` checks the folder and
    the repo id and returns what would be uploaded, touching nothing.
    """
    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise DataError(f"invalid Hub repo id {repo_id!r}: {err}") from None
    root = Path(dataset_dir)
    files = upload_plan(root)
    if dry_run:
        return files
    api = api or HfApi()
    api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
    stale = [f for f in api.list_repo_files(repo_id, repo_type="dataset") if f.endswith(".parquet") and f not in files]
    operations = [CommitOperationAdd(path_in_repo=f, path_or_fileobj=os.fspath(root / f)) for f in files]
    operations += [CommitOperationDelete(path_in_repo=f) for f in stale]
    api.create_commit(
        repo_id,
        operations,
        repo_type="dataset",
        commit_message=commit_message or f"Upload {read_card_data(root).get('pretty_name') or 'dataset'}",
    )
    return files


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "push",
        help="upload a built dataset folder to the Hugging Face Hub",
        description=__doc__.split("\n\n", 1)[1],
    )
    parser.add_argument("dataset_dir", type=Path, metavar="DIR", help="a folder written by `build`")
    parser.add_argument("repo_id", metavar="REPO_ID", help="dataset repo, e.g. my-org/fashioniq")
    parser.add_argument("--private", action="store_true", default=None, help="create the repo as private")
    parser.add_argument("--message", help="commit message")
    parser.add_argument("--dry-run", action="store_true", help="list what would be uploaded and stop")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    files = push(
        args.dataset_dir,
        args.repo_id,
        private=args.private,
        commit_message=args.message,
        dry_run=args.dry_run,
    )
    verb = "would upload" if args.dry_run else "uploaded"
    print(f"{verb} {len(files)} files to https://huggingface.co/datasets/{args.repo_id}:", file=sys.stderr)
    print("\n".join(files))
    return 0
