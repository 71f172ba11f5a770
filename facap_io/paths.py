"""Output paths derived from data (a category, an id) must stay inside the folder they are written to."""

from __future__ import annotations

import os
import re
from pathlib import Path

from .errors import UnsafePathError

# Letters, digits, '.', '_' and '-', not starting with '.': safe as a file name on every platform we serve.
_PLAIN = re.compile(r"^[A-Za-z0-9_\-][A-Za-z0-9_.\-]*$")


def plain_name(name: str, *, what: str = "name") -> str:
    """`name` when it is a plain file-name component (no separators, no `..`, no NUL); else UnsafePathError."""
    if not isinstance(name, str) or not _PLAIN.match(name) or name in (".", ".."):
        raise UnsafePathError(f"{what} {name!r} is not a plain name (letters, digits, '.', '_', '-')")
    return name


def inside(root: str | os.PathLike, *parts: str, what: str = "path") -> Path:
    """`root/parts...` resolved, after checking that it stays inside `root` (symlinks followed)."""
    base = Path(root).resolve()
    for part in parts:
        if "\x00" in str(part):
            raise UnsafePathError(f"{what} {part!r} holds a NUL byte")
    candidate = base.joinpath(*parts).resolve()
    if candidate != base and base not in candidate.parents:
        raise UnsafePathError(f"{what} {os.path.join(*parts)!r} leaves {base}")
    return candidate
