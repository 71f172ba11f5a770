"""A client for any OpenAI-compatible chat-completions endpoint (vLLM, TGI, llama.cpp, OpenAI).

httpcore (httpx's transport layer) rather than the `openai` package: one POST route is all the pipeline
needs. httpcore rather than httpx itself because it takes a network backend, through which `--timeout`
becomes a total deadline per request (`deadline.py`); httpx's timeouts are per read. Thread-safe: the
runner calls `generate` from `concurrency` worker threads that share one connection pool.
"""

from __future__ import annotations

import base64
import json
from typing import Any, Sequence

import httpcore

from ..images import encode_jpeg
from .backends import BackendError, Reply, Request
from .deadline import DeadlineBackend, Deadlines
from .servers import ServerPool, parse_base_urls, retry_after_seconds

# Statuses worth retrying: rate limiting and server-side failures. Any other 4xx is the caller's mistake.
RETRY_STATUSES = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
# Statuses whose `Retry-After` header, when present, sets how long the server is out of rotation.
RETRY_AFTER_STATUSES = frozenset({429, 503})
# Retries of an invalid answer sample a little, so they do not get the same answer back.
RETRY_TEMPERATURE = 0.7
# Failures of the connection itself (refused, reset, cut short, timed out): worth retrying.
TRANSPORT_ERRORS = (httpcore.TimeoutException, httpcore.NetworkError, httpcore.ProtocolError)


class OpenAIBackend:
    """`base_url`: one server or several (a comma list or a sequence); `concurrency` requests in flight per
    server, spread least-in-flight first (`servers.py`)."""

    batch_size = 1

    def __init__(
        self,
        base_url: str | Sequence[str],
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
        urls = [url.rstrip("/") + "/chat/completions" for url in parse_base_urls(base_url)]
        self.model = model
        self.concurrency = concurrency * len(urls)
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.timeout = timeout
        self.servers = ServerPool(urls, per_server=concurrency, max_retries=max_retries, backoff=backoff,
                                  longest_wait=timeout)
        self._headers = [(b"Content-Type", b"application/json"), (b"Accept", b"application/json")]
        if api_key:
            self._headers.append((b"Authorization", f"Bearer {api_key}".encode()))
        self._deadlines = Deadlines()
        self._pool = httpcore.ConnectionPool(max_connections=self.concurrency,
                                             max_keepalive_connections=self.concurrency,
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
        """The reply from the first server that gives one; BackendError once every server is past the budget."""
        body = json.dumps(self._payload(request, attempt)).encode("utf-8")
        while True:
            lease = self.servers.acquire()
            try:
                text = self._exchange(lease.server.url, body)
            except ServerFailure as failure:
                self.servers.failed(lease, str(failure), failure.retry_after)
                continue
            except BaseException:
                self.servers.release(lease)
                raise
            self.servers.succeeded(lease)
            return Reply(text=text)

    def _exchange(self, url: str, body: bytes) -> str:
        """One POST: the completion's text; ServerFailure when a retry (here or elsewhere) may do better."""
        try:
            response = self._post(url, body)
        except httpcore.TimeoutException:
            raise ServerFailure(f"timed out: no complete reply within the deadline of {self.timeout:g} s "
                                "(--timeout)") from None
        except TRANSPORT_ERRORS as error:
            raise ServerFailure(f"{type(error).__name__}: {error}") from None
        if response.status in RETRY_STATUSES:
            waited = None
            if response.status in RETRY_AFTER_STATUSES:
                waited = retry_after_seconds(_header(response, b"retry-after"))
            raise ServerFailure(f"HTTP {response.status}: {_shown(response.content, 200)}", waited)
        if response.status != 200:
            raise BackendError(f"{url} refused the request with HTTP {response.status}: {_shown(response.content, 300)}")
        return parse_reply(response.content)

    def _post(self, url: str, body: bytes) -> httpcore.Response:
        """One exchange, over by `timeout` seconds after it starts, however the server sends its reply."""
        timeouts = dict.fromkeys(("connect", "read", "write", "pool"), self.timeout)
        with self._deadlines.limit(self.timeout):
            return self._pool.request("POST", url, headers=self._headers, content=body,
                                      extensions={"timeout": timeouts})

    def close(self) -> None:
        self._pool.close()


def _header(response: httpcore.Response, name: bytes) -> str | None:
    for key, value in response.headers:
        if key.lower() == name:
            return value.decode("latin-1")
    return None


class ServerFailure(Exception):
    """An exchange that failed on the server's side; `retry_after` is the server's own wait, if it gave one."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


def _shown(body: bytes, limit: int) -> str:
    return repr(body[:limit].decode("utf-8", errors="replace"))


class MalformedReply(ServerFailure):
    """A 200 reply that is not a chat completion: a broken server or proxy, not an answer to judge. It is a
    transport failure (retried, then the run stops), so nothing about it reaches the cache."""


def parse_reply(body: bytes) -> str:
    """The first choice's message content of a chat-completion body; MalformedReply (one line) otherwise."""
    shown = _shown(body, 120)
    try:
        data = json.loads(body)
    except ValueError:
        raise MalformedReply(f"malformed reply (not JSON): {shown}") from None
    if not isinstance(data, dict):
        raise MalformedReply(f"malformed reply (a JSON {type(data).__name__}, not an object): {shown}")
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise MalformedReply(f"malformed reply (no choices): {shown}")
    message = choices[0].get("message")
    content = message.get("content") if isinstance(message, dict) else None
    if not isinstance(content, str):
        raise MalformedReply(f"malformed reply (message content is {type(content).__name__}, not text): {shown}")
    return content
