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
    try:
        values = parse_list(text, int, what="integer")
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    if min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values
