"""Sharding the encoding over an Accelerate launch, and the collectives evaluation needs.

Each of N processes encodes one contiguous slice of a dataset (`shard`); `gather_rows` puts the slices back
together in order on every process, dropping the padding that uneven slices need (a process may hold no row
at all when the dataset is smaller than N). `agree` turns an error on any process into an error on every
process, so that no process waits forever in a collective that another one never reaches.

With `accelerator=None` (or one process) every function is the identity of the single-process path.
"""

from __future__ import annotations

import math
import os
from typing import Any, Callable, TypeVar

import torch

from .errors import EvalError

T = TypeVar("T")


def launched_processes() -> int:
    """How many processes a launcher (`accelerate launch`, `torchrun`) started: its WORLD_SIZE, else 1."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def launched_on_cpu() -> bool:
    """Several launched processes on a machine without an accelerator device.

    Accelerate forms a gloo process group for them only when told `cpu=True`; otherwise each process would
    silently run alone (and `accelerate launch --cpu` starts a single process).
    """
    import torch
    from accelerate.utils import is_mps_available, is_npu_available, is_xpu_available

    devices = torch.cuda.is_available() or is_xpu_available() or is_npu_available() or is_mps_available()
    return launched_processes() > 1 and not devices


def launched_accelerator():
    """An `accelerate.Accelerator` spanning the launched processes, or None for a single process.

    Raises EvalError when Accelerate does not join every launched process (each would evaluate alone)."""
    if launched_processes() <= 1:
        return None
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=launched_on_cpu())
    if accelerator.num_processes != launched_processes():
        raise EvalError(
            f"{launched_processes()} processes were launched but Accelerate joined {accelerator.num_processes}: "
            "launch with `accelerate launch --multi_gpu --num_processes N` (on CPU too; `--cpu` starts one process)"
        )
    return accelerator


def _is_distributed(accelerator) -> bool:
    return accelerator is not None and accelerator.num_processes > 1


def shard(size: int, accelerator) -> range:
    """The contiguous rows of `range(size)` this process encodes: ceil(size / N) rows per process, the last
    processes getting fewer (or none)."""
    if not _is_distributed(accelerator):
        return range(size)
    per_process = math.ceil(size / accelerator.num_processes)
    start = min(accelerator.process_index * per_process, size)
    return range(start, min(start + per_process, size))


def gather_objects(accelerator, value: Any) -> list[Any]:
    """`[value of process 0, value of process 1, ...]` on every process (small picklable values only)."""
    if not _is_distributed(accelerator):
        return [value]
    from accelerate.utils import gather_object

    return gather_object([value])


def gather_rows(accelerator, rows: torch.Tensor | None) -> torch.Tensor:
    """Concatenate every process's `(n_p, ...)` rows in process order, on every process.

    `rows` is None on a process that had nothing to encode; its trailing shape and dtype come from the others.
    """
    if not _is_distributed(accelerator):
        return rows
    shapes = gather_objects(accelerator, None if rows is None else (len(rows), tuple(rows.shape[1:]), str(rows.dtype)))
    known = [s for s in shapes if s is not None]
    if not known:
        raise EvalError("no process encoded anything: the dataset is empty")
    trailing, dtype = known[0][1], getattr(torch, known[0][2].removeprefix("torch."))
    lengths = [0 if s is None else s[0] for s in shapes]
    longest = max(lengths)
    padded = torch.zeros(longest, *trailing, dtype=dtype, device=accelerator.device)
    if rows is not None and len(rows):
        padded[: len(rows)] = rows.to(accelerator.device)
    gathered = accelerator.gather(padded).reshape(len(lengths), longest, *trailing)
    return torch.cat([gathered[p, :n] for p, n in enumerate(lengths)])


def agree(accelerator, action: Callable[[], T]) -> T:
    """Run `action` on every process; when it fails on any process, raise on every process.

    The failing process raises its own error; the others raise an EvalError quoting it. Used around every
    step that precedes a collective, so that one process's bad input never leaves the others waiting.
    """
    if not _is_distributed(accelerator):
        return action()
    try:
        result, failure = action(), None
    except Exception as error:  # noqa: BLE001 - whatever failed here, the other processes must not wait for it
        result, failure = None, error
    failures = gather_objects(accelerator, None if failure is None else str(failure))
    if failure is not None:
        raise failure
    for index, message in enumerate(failures):
        if message is not None:
            raise EvalError(f"process {index} failed: {message}")
    return result


def check_same(accelerator, what: str, value: dict[str, Any]) -> None:
    """Raise on every process when the processes do not hold the same `value` (names what differs)."""
    values = gather_objects(accelerator, value)
    for index, other in enumerate(values[1:], start=1):
        different = sorted(key for key in set(value) | set(other) if values[0].get(key) != other.get(key))
        if different:
            key = different[0]
            raise EvalError(
                f"processes see different {what}: {key} is {values[0].get(key)!r} on process 0 and "
                f"{other.get(key)!r} on process {index}; every process must read the same data"
            )
