"""The one upload path to the Hugging Face Hub, shared by `facap_dataset push`, the model's `push_to_hub` and
the trainer's `--push-to-hub`: checks first (repo id, token, files), then one commit.

The token comes from the environment (`HF_TOKEN`) or the cached `hf auth login`, never from a file of ours or
the command line. What is uploaded is a list of regular files inside one folder: a symlink, or a path that
leaves the folder, is refused before anything is sent.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Sequence

from .errors import FacapError, first_line


class PushError(FacapError):
    """A push that cannot start (bad repo id, no token, unsafe files) or that the Hub refused."""


def check_repo_id(repo_id: str) -> str:
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise PushError(f"invalid Hub repo id {repo_id!r}: {error}") from None
    if "/" not in repo_id:
        raise PushError(f"invalid Hub repo id {repo_id!r}: expected ORG/NAME")
    return repo_id


def check_token() -> None:
    from huggingface_hub import get_token

    if not get_token():
        raise PushError("no Hugging Face token: set HF_TOKEN or run `hf auth login` (tokens are never read from options)")


def check_files(root: str | os.PathLike, files: Sequence[str]) -> list[str]:
    """`files` (paths relative to `root`) when each is a regular file inside `root` and not a symlink."""
    base = Path(root).resolve()
    for name in files:
        path = base / name
        if path.is_symlink():
            raise PushError(f"refusing to upload {name}: it is a symbolic link (to {os.readlink(path)})")
        if base not in path.resolve().parents:
            raise PushError(f"refusing to upload {name}: it leaves {base}")
        if not path.is_file():
            raise PushError(f"cannot upload {name}: not a file in {base}")
    return list(files)


def upload(
    root: str | os.PathLike,
    files: Sequence[str],
    repo_id: str,
    *,
    repo_type: str,
    commit_message: str,
    private: bool | None = None,
    stale: Callable[[list[str]], list[str]] | None = None,
    api=None,
) -> str:
    """Create (or reuse) `repo_id` and upload `files` of `root` in one commit; returns the commit URL.

    `stale(existing_repo_files)` names repo files to delete in the same commit (e.g. shards of an earlier build).
    Every check runs before the first request; a refused request is one PushError, local files untouched.
    """
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi
    from huggingface_hub.errors import HfHubHTTPError

    check_repo_id(repo_id)
    files = check_files(root, files)
    if api is None:
        check_token()
        api = HfApi()
    try:
        api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True)
        doomed = stale(list(api.list_repo_files(repo_id, repo_type=repo_type))) if stale else []
        operations = [CommitOperationAdd(path_in_repo=f, path_or_fileobj=os.fspath(Path(root) / f)) for f in files]
        operations += [CommitOperationDelete(path_in_repo=f) for f in doomed if f not in files]
        commit = api.create_commit(repo_id, operations, repo_type=repo_type, commit_message=commit_message)
    except (HfHubHTTPError, OSError) as error:
        raise PushError(f"push to {repo_id} failed: {first_line(error)}") from None
    return str(getattr(commit, "commit_url", commit))
