"""Atomic writes: the one home of "write to a temporary sibling, then rename into place".

A file is written to a hidden sibling (`.NAME.tmp-XXXX`) and renamed over its destination; a folder is built
in a hidden sibling and swapped in whole. The previous folder is moved aside first (`.NAME.old-XXXX`) and put
back if the swap fails, so a reader, a crash or a full disk leaves either the old content or the new, never
a mixture. A writer killed mid-way leaves only hidden siblings, which `remove_stale_temporaries` (called by
the next write to the same place) removes, restoring a moved-aside folder whose swap never finished.

One writer per destination at a time: two concurrent writers of the same path may remove each other's
temporaries.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, Callable, Iterator

from .errors import FacapError

_TEMP = "tmp"
_OLD = "old"


def _sibling_prefix(path: Path, kind: str) -> str:
    return f".{path.name}.{kind}-"


def write_file(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Write `path` through `write(temporary_path)`, then rename the temporary file into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=_sibling_prefix(path, _TEMP))
    os.close(handle)
    try:
        write(temporary)
        os.replace(temporary, path)
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    return path


def write_text(path: str | os.PathLike, text: str) -> Path:
    return write_file(path, lambda temporary: Path(temporary).write_text(text, encoding="utf-8"))


def write_json(path: str | os.PathLike, payload: Any, *, indent: int | None = 2) -> Path:
    return write_text(path, json.dumps(payload, indent=indent) + "\n")


def replace_folder(staging: str | os.PathLike, destination: str | os.PathLike) -> Path:
    """Move the complete folder `staging` to `destination`, replacing it whole; on failure the old one stays."""
    staging, destination = Path(staging), Path(destination)
    if not destination.exists():
        os.replace(staging, destination)
        return destination
    aside = Path(tempfile.mkdtemp(prefix=_sibling_prefix(destination, _OLD), dir=destination.parent))
    os.replace(destination, aside / destination.name)  # move aside first: the old one survives a failure
    try:
        os.replace(staging, destination)
    except BaseException:
        os.replace(aside / destination.name, destination)
        aside.rmdir()
        raise
    shutil.rmtree(aside, ignore_errors=True)
    return destination


@contextmanager
def staged_folder(destination: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty hidden sibling of `destination` to fill; when the block completes it replaces
    `destination` whole (`replace_folder`); when the block raises it is removed and `destination` is untouched."""
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(destination)
    staging = Path(tempfile.mkdtemp(prefix=_sibling_prefix(destination, _TEMP), dir=destination.parent))
    try:
        yield staging
        replace_folder(staging, destination)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def remove_stale_temporaries(destination: str | os.PathLike) -> list[Path]:
    """Remove the hidden siblings a killed writer of `destination` left; returns what was removed.

    A moved-aside folder whose swap never finished is restored when `destination` is missing.
    """
    destination = Path(destination)
    if not destination.parent.is_dir():
        return []
    removed = []
    for kind in (_OLD, _TEMP):  # restore first, so a half-done swap is never lost
        for stale in sorted(destination.parent.glob(_sibling_prefix(destination, kind) + "*")):
            kept = stale / destination.name
            if kind == _OLD and kept.exists() and not destination.exists():
                os.replace(kept, destination)
            if stale.is_dir() and not stale.is_symlink():
                shutil.rmtree(stale, ignore_errors=True)
            else:
                stale.unlink(missing_ok=True)
            removed.append(stale)
    return removed


def check_writable(path: str | os.PathLike, *, what: str, folder: bool = False) -> Path:
    """Fail early, naming `what`, when `path` (a file, or with `folder` a folder) cannot be written: called
    before long work so that an unwritable output never costs the work."""
    path = Path(path)
    if folder and path.exists() and not path.is_dir():
        raise FacapError(f"{what} {path} exists and is not a folder")
    if not folder and path.is_dir():
        raise FacapError(f"{what} {path} is a folder, not a file")
    parent = path if folder else path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        handle, probe = tempfile.mkstemp(dir=parent, prefix=".facap-write-test-")
        os.close(handle)
        os.unlink(probe)
    except OSError as error:
        raise FacapError(f"{what} {path} is not writable: {error.strerror or error}") from None
    return path
