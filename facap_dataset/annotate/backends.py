"""What the pipeline asks of a model backend, and the factory that builds one from command-line choices.

A backend turns a list of `Request`s into one `Reply` per request. Transport failures that survive the
backend's own retries raise `BackendError` and stop the run (finished records are already cached). A
server reply that is not a completion at all (invalid JSON, an HTML page, no choices, no text) is such a
transport failure, never an answer: answers alone are validated, cached and possibly rejected.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Protocol, Sequence

from PIL import Image

from ..errors import DataError

BACKENDS = ("openai", "transformers")
API_KEY_VARIABLE = "OPENAI_API_KEY"


class BackendError(DataError):
    """A backend cannot be built or its endpoint keeps failing after bounded retries."""


@dataclass(frozen=True)
class Request:
    """One prompt, with the product image for stage 1."""

    text: str
    image: Image.Image | None = None


@dataclass(frozen=True)
class Reply:
    text: str = ""


class Backend(Protocol):
    """`batch_size` requests go to one `generate` call; `concurrency` calls may run at once (threads)."""

    model: str
    batch_size: int
    concurrency: int

    def generate(self, requests: Sequence[Request], attempt: int) -> list[Reply]:
        """`attempt` counts from 0; retries after an invalid answer may sample instead of decoding greedily."""

    def close(self) -> None: ...


@dataclass(frozen=True)
class BackendOptions:
    """Command-line backend choices; the fields of the other backend are ignored. `base_url` is one URL, a
    comma list or a tuple of either (several servers); `concurrency` is per server."""

    backend: str
    model: str
    base_url: str | tuple[str, ...] | None = None
    concurrency: int = 8
    timeout: float = 120.0
    max_retries: int = 4
    backoff: float = 1.0
    max_new_tokens: int = 256
    temperature: float = 0.0
    batch_size: int = 8
    device: str | None = None

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise BackendError(f"unknown backend {self.backend!r}; expected one of {', '.join(BACKENDS)}")
        if self.backend == "openai" and not self.base_url:
            raise BackendError("--backend openai needs --base-url (e.g. http://localhost:8000/v1)")
        if self.backend == "openai":
            from .servers import parse_base_urls  # here: servers.py imports this module

            parse_base_urls(self.base_url)  # a malformed URL fails now, before any work


def make_backend(options: BackendOptions, task: str) -> Backend:
    """Build the backend for `task` ("image-text-to-text" for stage 1, "text-generation" for stage 2)."""
    if options.backend == "openai":
        from .openai_client import OpenAIBackend

        return OpenAIBackend(
            options.base_url,
            options.model,
            api_key=os.environ.get(API_KEY_VARIABLE),
            concurrency=options.concurrency,
            timeout=options.timeout,
            max_retries=options.max_retries,
            backoff=options.backoff,
            max_tokens=options.max_new_tokens,
            temperature=options.temperature,
        )
    if options.backend == "transformers":
        from .local import TransformersBackend

        return TransformersBackend(
            task,
            options.model,
            batch_size=options.batch_size,
            device=options.device,
            max_new_tokens=options.max_new_tokens,
        )
    raise AssertionError(f"BackendOptions admitted an unknown backend {options.backend!r}")
