"""The one comma-list parser: `--configs dress,shirt`, `--k-values 10,50`, repeated options alike."""

from __future__ import annotations

import argparse
from typing import Callable, Iterable, TypeVar

T = TypeVar("T")


def parse_list(values: str | Iterable[str], convert: Callable[[str], T] = str, *, what: str = "value") -> list[T]:
    """Items of one comma-separated string, or of several (a repeated option), stripped, empty ones dropped.

    Raises ValueError naming the text when nothing is left or an item does not convert.
    """
    texts = [values] if isinstance(values, str) else list(values)
    items = [item.strip() for text in texts for item in str(text).split(",") if item.strip()]
    if not items:
        raise ValueError(f"expected a comma-separated list of {what}s, got {','.join(texts)!r}")
    try:
        return [convert(item) for item in items]
    except ValueError:
        raise ValueError(f"expected a comma-separated list of {what}s, got {','.join(texts)!r}") from None


def comma_list(text: str) -> list[str]:
    """argparse `type=` for a comma-separated list of names."""
    try:
        return parse_list(text, what="name")
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def int_list(text: str) -> list[int]:
    """argparse `type=` for comma-separated positive integers (recall cut-offs, batch sizes)."""
    return _integers(text, minimum=1, what="positive integers")


def nonnegative_int_list(text: str) -> list[int]:
    """argparse `type=` for comma-separated integers >= 0 (factors where 0 means off)."""
    return _integers(text, minimum=0, what="integers >= 0")


def _integers(text: str, *, minimum: int, what: str) -> list[int]:
    try:
        values = parse_list(text, int, what="integer")
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    if min(values) < minimum:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    return values
