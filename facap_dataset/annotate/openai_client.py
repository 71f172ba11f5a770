"""A client for any OpenAI-compatible chat-completions endpoint (vLLM, TGI, llama.cpp, OpenAI).

Plain httpx rather than the `openai` package: one POST route is all the pipeline needs, and httpx is
already a dependency of huggingface_hub. Thread-safe: the runner calls `generate` from `concurrency`
worker threads that share one connection pool.
"""

from __future__ import annotations

import base64
import json
import random
import time
from typing import Any, Sequence

import httpx

from ..images import encode_jpeg
from .backends import BackendError, Reply, Request

# Statuses worth retrying: rate limiting and server-side failures. Any other 4xx is the caller's mistake.
RETRY_STATUSES = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
# Retries of an invalid answer sample a little, so they do not get the same answer back.
RETRY_TEMPERATURE = 0.7


class OpenAIBackend:
    batch_size = 1

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        concurrency: int = 8,
        timeout: float = 120.0,
        max_retries: int = 4,
        backoff: float = 1.0,
        max_tokens: int = 256,
        temperature: float = 0.0,
    ):
        if concurrency < 1 or max_retries < 0 or timeout <= 0 or backoff < 0:
            raise BackendError(
                f"need concurrency >= 1, max_retries >= 0, timeout > 0 and backoff >= 0; got {concurrency}, "
                f"{max_retries}, {timeout}, {backoff}"
            )
        self.model = model
        self.concurrency = concurrency
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.max_retries = max_retries
        self.backoff = backoff
        self.max_tokens = max_tokens
        self.temperature = temperature
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(
            headers=headers,
            timeout=httpx.Timeout(timeout),
            limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
        )

    def generate(self, requests: Sequence[Request], attempt: int) -> list[Reply]:
        return [self._complete(request, attempt) for request in requests]

    def _payload(self, request: Request, attempt: int) -> dict[str, Any]:
        if request.image is None:
            content: Any = request.text
        else:
            image_url = "data:image/jpeg;base64," + base64.b64encode(encode_jpeg(request.image)).decode("ascii")
            content = [
                {"type": "image_url", "image_url": {"url": image_url}},
                {"type": "text", "text": request.text},
            ]
        temperature = self.temperature if attempt == 0 else max(self.temperature, RETRY_TEMPERATURE)
        return {
            "model": self.model,
            "messages": [{"role": "user", "content": content}],
            "max_tokens": self.max_tokens,
            "temperature": temperature,
        }

    def _complete(self, request: Request, attempt: int) -> Reply:
        payload = self._payload(request, attempt)
        failure = ""
        for retry in range(self.max_retries + 1):
            if retry:
                # Exponential back-off with jitter, so many workers do not hammer a recovering server together.
                time.sleep(self.backoff * 2 ** (retry - 1) * (0.5 + random.random()))
            try:
                response = self._client.post(self.url, json=payload)
            except httpx.TransportError as error:
                failure = f"{type(error).__name__}: {error}"
                continue
            if response.status_code in RETRY_STATUSES:
                failure = f"HTTP {response.status_code}: {response.text[:200]}"
                continue
            if response.status_code != 200:
                raise BackendError(
                    f"{self.url} refused the request with HTTP {response.status_code}: {response.text[:300]}"
                )
            try:
                return Reply(text=parse_reply(response.content))
            except MalformedReply as error:
                failure = str(error)
        raise BackendError(f"{self.url} failed {self.max_retries + 1} times; last error: {failure}")

    def close(self) -> None:
        self._client.close()


class MalformedReply(Exception):
    """A 200 reply that is not a chat completion: a broken server or proxy, not an answer to judge. It is a
    transport failure (retried, then the run stops), so nothing about it reaches the cache."""


def parse_reply(body: bytes) -> str:
    """The first choice's message content of a chat-completion body; MalformedReply (one line) otherwise."""
    shown = body[:120].decode("utf-8", errors="replace")
    try:
        data = json.loads(body)
    except ValueError:
        raise MalformedReply(f"malformed reply (not JSON): {shown!r}") from None
    choices = data.get("choices") if isinstance(data, dict) else None
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise MalformedReply(f"malformed reply (no choices): {shown!r}")
    message = choices[0].get("message")
    content = message.get("content") if isinstance(message, dict) else None
    if not isinstance(content, str):
        raise MalformedReply(f"malformed reply (message content is {type(content).__name__}, not text): {shown!r}")
    return content
