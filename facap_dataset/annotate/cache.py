"""The JSONL result cache that makes annotation runs resumable and exact.

One line per finished record, written and flushed as soon as the record is done, so a killed run loses at
most the records in flight. A line cut short by a kill is dropped when the cache is reopened; any other
unreadable line is an error (the file was edited or belongs to something else). The file is locked while
a run holds it, so two runs cannot interleave their lines.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from ..errors import DataError

CACHE_FORMAT = 1


class CacheError(DataError):
    """The cache file is corrupt, unreadable or in use by another run."""


def cache_key(stage: str, inputs: dict[str, Any], prompt_version: str, model: str) -> str:
    """A digest of everything that determines a record's answer: stage, inputs, prompt version, model."""
    payload = json.dumps(
        {"format": CACHE_FORMAT, "stage": stage, "inputs": inputs, "prompt": prompt_version, "model": model},
        sort_keys=True,
        ensure_ascii=False,
    )
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


class AnnotationCache:
    """Maps cache keys to finished records; `put` appends one JSON line and flushes it.

    Use as a context manager (or call `close`). When a key occurs twice (a rejected record retried with
    `retry_rejected`), the later line wins.
    """

    def __init__(self, path: str | Path, *, fsync: bool = False):
        self.path = Path(path)
        self.fsync = fsync
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a+b")
        try:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._file.close()
            raise CacheError(f"cache {self.path} is in use by another annotation run") from None
        self.records: dict[str, dict[str, Any]] = {}
        self._load()

    def _load(self) -> None:
        self._file.seek(0)
        data = self._file.read()
        complete_end = data.rfind(b"\n") + 1
        if complete_end < len(data):
            # The last line was cut short by a kill mid-write: drop it so the next append starts a fresh line.
            self._file.truncate(complete_end)
            data = data[:complete_end]
        for number, line in enumerate(data.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                key = record["key"]
            except (ValueError, KeyError, TypeError) as error:
                raise CacheError(f"cache {self.path} line {number} is not a cache record ({error})") from None
            self.records[key] = record
        self._file.seek(0, os.SEEK_END)

    def get(self, key: str) -> dict[str, Any] | None:
        return self.records.get(key)

    def put(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, ensure_ascii=False, sort_keys=True).encode("utf-8") + b"\n"
        self._file.write(line)
        self._file.flush()
        if self.fsync:
            os.fsync(self._file.fileno())
        self.records[record["key"]] = record

    def __len__(self) -> int:
        return len(self.records)

    def close(self) -> None:
        if not self._file.closed:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
            self._file.close()

    def __enter__(self) -> "AnnotationCache":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
