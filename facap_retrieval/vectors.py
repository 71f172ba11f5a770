"""Row files: an `(N, ...)` tensor stored as the single tensor of a safetensors file, written a chunk at a time
and read memory-mapped, so neither writing nor reading a gallery's embeddings needs them whole in memory.

The file is plain safetensors (an 8-byte little-endian header length, a JSON header padded with spaces to a
multiple of 8, then the raw little-endian rows), so `safetensors.safe_open` reads it too. Reading maps the
data region with numpy in copy-on-write mode: pages are read from disk when touched and stay the kernel's
(reclaimable page cache), and nothing written to the array reaches the file.

`RowSpill` is the builder's side: an anonymous temporary file (unlinked at creation, so a killed process
leaves nothing behind) that rows are appended to and that can be read back, row by row, before it is saved.
"""

from __future__ import annotations

import json
import os
import struct
import tempfile
from pathlib import Path
from typing import Iterable

import numpy as np
import torch

from facap_retrieval.ranking import RetrievalError

# safetensors' dtype names for the dtypes embeddings come in; numpy can map only the first two.
_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64"}
_NUMPY = {"F32": np.dtype("<f4"), "F16": np.dtype("<f2")}
_HEADER_LENGTH = struct.Struct("<Q")
_ALIGNMENT = 8
# Rows copied per write when streaming a mapped array into a file (bounded memory, few system calls).
_COPY_ROWS = 8192


def write_rows(path: str | os.PathLike, chunks: Iterable[torch.Tensor], shape: tuple[int, ...], dtype: torch.dtype,
               *, key: str, metadata: dict[str, str]) -> None:  # fmt: skip
    """Write the chunks, in order, as the tensor `key` of `shape` and `dtype` of a safetensors file at `path`.
    The chunks must hold exactly `shape[0]` rows of `shape[1:]`; anything else is a RetrievalError."""
    if dtype not in _DTYPES:
        raise RetrievalError(f"cannot store {dtype} rows; expected one of {', '.join(map(str, _DTYPES))}")
    row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * torch.empty((), dtype=dtype).element_size()
    header = {"__metadata__": metadata, key: {"dtype": _DTYPES[dtype], "shape": list(shape), "data_offsets": [0, row_bytes * shape[0]]}}
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % _ALIGNMENT)
    written = 0
    with open(path, "wb") as handle:
        handle.write(_HEADER_LENGTH.pack(len(encoded)) + encoded)
        for chunk in chunks:
            chunk = chunk.detach().to("cpu", dtype).contiguous()
            if tuple(chunk.shape[1:]) != tuple(shape[1:]) or written + len(chunk) > shape[0]:
                raise RetrievalError(f"rows of shape {tuple(chunk.shape)} do not fit a {tuple(shape)} tensor at row {written}")
            handle.write(chunk.reshape(-1).view(torch.uint8).numpy().tobytes())
            written += len(chunk)
    if written != shape[0]:
        raise RetrievalError(f"{path}: {written} rows written for a {tuple(shape)} tensor")


def _read_header(path: str | os.PathLike) -> tuple[dict, int]:
    """The safetensors header of `path` and the byte offset where its data begins."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as handle:
        prefix = handle.read(_HEADER_LENGTH.size)
        if len(prefix) < _HEADER_LENGTH.size:
            raise RetrievalError(f"{path} is not a safetensors file: it is shorter than its header")
        (length,) = _HEADER_LENGTH.unpack(prefix)
        if length > size - _HEADER_LENGTH.size:
            raise RetrievalError(f"{path} is not a safetensors file: its header length {length} exceeds the file")
        try:
            header = json.loads(handle.read(length))
        except ValueError as error:
            raise RetrievalError(f"{path} is not a safetensors file: its header is not JSON ({error})") from None
    if not isinstance(header, dict):
        raise RetrievalError(f"{path} is not a safetensors file: its header is not a JSON object")
    return header, _HEADER_LENGTH.size + length


def map_rows(path: str | os.PathLike, *, key: str) -> tuple[np.ndarray, dict[str, str]]:
    """The tensor `key` of the safetensors file `path`, memory-mapped (copy-on-write), and the file's metadata.
    A file that is truncated, or whose tensor is not F32/F16, is a RetrievalError naming it."""
    header, data_start = _read_header(path)
    entry = header.get(key)
    if not isinstance(entry, dict) or entry.get("dtype") not in _NUMPY:
        raise RetrievalError(f"{path} holds no F32 or F16 tensor {key!r}")
    shape = tuple(int(n) for n in entry["shape"])
    start, end = (int(n) for n in entry["data_offsets"])
    dtype = _NUMPY[entry["dtype"]]
    if end - start != int(np.prod(shape, dtype=np.int64)) * dtype.itemsize or data_start + end > Path(path).stat().st_size:
        raise RetrievalError(f"{path} is truncated or damaged: tensor {key!r} of shape {shape} does not fit its bytes")
    if 0 in shape:  # numpy cannot map zero bytes
        return np.zeros(shape, dtype), dict(header.get("__metadata__") or {})
    rows = np.memmap(path, dtype=dtype, mode="c", offset=data_start + start, shape=shape)
    return rows, dict(header.get("__metadata__") or {})


class RowSpill:
    """`(capacity, dim)` fp32 rows appended a chunk at a time to an anonymous temporary file in `directory`
    (the system's temporary folder when None): memory stays bounded by a chunk, and the file vanishes with
    the object or the process."""

    def __init__(self, capacity: int, dim: int, directory: str | os.PathLike | None = None):
        self._file = tempfile.TemporaryFile(dir=directory)
        self._rows = np.memmap(self._file, dtype=np.float32, mode="w+", shape=(max(capacity, 1), dim))
        self.count = 0

    def append(self, chunk: torch.Tensor) -> None:
        end = self.count + len(chunk)
        if end > len(self._rows):
            raise RetrievalError(f"more rows were added ({end}) than the gallery size the index was built for ({len(self._rows)})")
        self._rows[self.count : end] = chunk.detach().float().cpu().numpy()
        self.count = end

    def tensor(self) -> torch.Tensor:
        """The rows appended so far, as a tensor over the mapped file (no copy)."""
        return torch.from_numpy(self._rows[: self.count])


def chunks_of(rows: torch.Tensor, size: int = _COPY_ROWS) -> Iterable[torch.Tensor]:
    """`rows` in slices of `size` rows, for `write_rows`: a mapped array is read a slice at a time."""
    for start in range(0, len(rows), size):
        yield rows[start : start + size]
