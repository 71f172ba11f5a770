"""`python -m facap_dataset push DIR REPO_ID`: upload a built dataset folder to the Hub unchanged.

The folder already has the layout `push_to_hub` writes (`README.md` + `<config>/<split>-*.parquet`), so
pushing is one commit of exactly those files, through the project's one upload path (`facap_io.hub.upload`:
repo id, token and file checks first; symbolic links and paths leaving the folder are refused). Shards of
an earlier push that the new build no longer has are deleted in the same commit, so a rebuilt dataset never
mixes old and new rows. The token comes from the environment (`HF_TOKEN`) or a `hf auth login`, never from
the command line.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from facap_io.hub import check_files, check_repo_id, upload

from .errors import DataError
from .export import CARD_FILENAME, read_card_data


def upload_plan(dataset_dir: str | os.PathLike) -> list[str]:
    """The files a push uploads (relative to `dataset_dir`): the card and every config's shards.

    Raises:
        DataError: `dataset_dir` is not a built dataset folder, or a config of its card has no shard.
        PushError: one of those files is a symbolic link or leaves `dataset_dir`.
    """
    root = Path(dataset_dir)
    card = read_card_data(root)
    if card is None:
        raise DataError(f"{root} is not a built dataset folder (no {CARD_FILENAME} with `configs:`)")
    files = [CARD_FILENAME]
    for config in card["configs"]:
        for entry in config["data_files"]:
            shards = sorted(
                p.relative_to(root).as_posix() for p in root.glob(entry["path"]) if p.is_file() or p.is_symlink()
            )
            if not shards:
                name, split = config["config_name"], entry["split"]
                raise DataError(f"{root}: config {name!r} split {split!r} has no file matching {entry['path']!r}")
            files += shards
    return check_files(root, files)


def _stale_shards(existing: list[str]) -> list[str]:
    """Repo files an upload deletes: every Parquet file (the upload re-adds those the build still has)."""
    return [name for name in existing if name.endswith(".parquet")]


def push(
    dataset_dir: str | os.PathLike,
    repo_id: str,
    *,
    private: bool | None = None,
    commit_message: str | None = None,
    dry_run: bool = False,
    api=None,
) -> list[str]:
    """Upload a built dataset folder as the dataset repo `repo_id` (created if needed); returns the files.

    One commit adds the card and the shards and deletes the repo's other `.parquet` files (shards of an
    earlier build), so readers never see old and new rows mixed. `dry_run=True` checks the folder and
    the repo id and returns what would be uploaded, touching nothing.
    """
    check_repo_id(repo_id)
    root = Path(dataset_dir)
    files = upload_plan(root)
    if dry_run:
        return files
    upload(
        root,
        files,
        repo_id,
        repo_type="dataset",
        commit_message=commit_message or f"Upload {read_card_data(root).get('pretty_name') or 'dataset'}",
        private=private,
        stale=_stale_shards,
        api=api,
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
