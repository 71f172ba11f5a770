"""A client for any OpenAI-compatible chat-completions endpoint (vLLM, TGI, llama.cpp, OpenAI).

httpcore (httpx's transport layer) rather than the `openai` package: one POST route is all the pipeline
needs. httpcore rather than httpx itself because it takes a network backend, through which `--timeout`
becomes a total deadline per request (`deadline.py`); httpx's timeouts are per read. Thread-safe: the
runner calls `generate` from `concurrency` worker threads that share one connection pool.
"""

from __future__ import annotations

import base64
import json
import random
import time
from typing import Any, Sequence

import httpcore

from ..images import encode_jpeg
from .backends import BackendError, Reply, Request
from .deadline import DeadlineBackend, Deadlines

# Statuses worth retrying: rate limiting and server-side failures. Any other 4xx is the caller's mistake.
RETRY_STATUSES = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
# Retries of an invalid answer sample a little, so they do not get the same answer back.
RETRY_TEMPERATURE = 0.7
# Failures of the connection itself (refused, reset, cut short, timed out): worth retrying.
TRANSPORT_ERRORS = (httpcore.TimeoutException, httpcore.NetworkError, httpcore.ProtocolError)


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
        self.timeout = timeout
        self._headers = [(b"Content-Type", b"application/json"), (b"Accept", b"application/json")]
        if api_key:
            self._headers.append((b"Authorization", f"Bearer {api_key}".encode()))
        self._deadlines = Deadlines()
        self._pool = httpcore.ConnectionPool(max_connections=concurrency, max_keepalive_connections=concurrency,
                                             network_backend=DeadlineBackend(self._deadlines))

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
        body = json.dumps(self._payload(request, attempt)).encode("utf-8")
        failure = ""
        for retry in range(self.max_retries + 1):
            if retry:
                # Exponential back-off with jitter, so many workers do not hammer a recovering server together.
                time.sleep(self.backoff * 2 ** (retry - 1) * (0.5 + random.random()))
            try:
                response = self._post(body)
            except httpcore.TimeoutException:
                failure = f"timed out: no complete reply within the deadline of {self.timeout:g} s (--timeout)"
                continue
            except TRANSPORT_ERRORS as error:
                failure = f"{type(error).__name__}: {error}"
                continue
            if response.status in RETRY_STATUSES:
                failure = f"HTTP {response.status}: {_shown(response.content, 200)}"
                continue
            if response.status != 200:
                raise BackendError(
                    f"{self.url} refused the request with HTTP {response.status}: {_shown(response.content, 300)}"
                )
            try:
                return Reply(text=parse_reply(response.content))
            except MalformedReply as error:
                failure = str(error)
        raise BackendError(f"{self.url} failed {self.max_retries + 1} times; last error: {_one_line(failure)}")

    def _post(self, body: bytes) -> httpcore.Response:
        """One exchange, over by `timeout` seconds after it starts, however the server sends its reply."""
        timeouts = dict.fromkeys(("connect", "read", "write", "pool"), self.timeout)
        with self._deadlines.limit(self.timeout):
            return self._pool.request("POST", self.url, headers=self._headers, content=body,
                                      extensions={"timeout": timeouts})

    def close(self) -> None:
        self._pool.close()


def _shown(body: bytes, limit: int) -> str:
    return repr(body[:limit].decode("utf-8", errors="replace"))


def _one_line(text: str) -> str:
    return " ".join(text.split())


class MalformedReply(Exception):
    """A 200 reply that is not a chat completion: a broken server or proxy, not an answer to judge. It is a
    transport failure (retried, then the run stops), so nothing about it reaches the cache."""


def parse_reply(body: bytes) -> str:
    """The first choice's message content of a chat-completion body; MalformedReply (one line) otherwise."""
    shown = _shown(body, 120)
    try:
        data = json.loads(body)
    except ValueError:
        raise MalformedReply(f"malformed reply (not JSON): {shown}") from None
    choices = data.get("choices") if isinstance(data, dict) else None
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise MalformedReply(f"malformed reply (no choices): {shown}")
    message = choices[0].get("message")
    content = message.get("content") if isinstance(message, dict) else None
    if not isinstance(content, str):
        raise MalformedReply(f"malformed reply (message content is {type(content).__name__}, not text): {shown}")
    return content
