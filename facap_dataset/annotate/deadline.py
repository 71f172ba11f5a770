"""A total deadline per HTTP request, enforced where the bytes move.

Socket timeouts (and httpx's, which are per read) bound each read, not the request: a server that trickles
its reply a byte every 10 ms keeps a per-read timeout from ever firing. `DeadlineBackend` is an httpcore
network backend whose streams cap every connect, read and write at the time left before the calling
thread's deadline, and fail once it has passed, so a request ends by its deadline whatever the server does.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from typing import Any, Iterable, Iterator

import httpcore


class DeadlineExceeded(httpcore.TimeoutException):
    """The request's total deadline passed (raised from inside httpcore, which closes the connection)."""


class Deadlines:
    """The current thread's deadline. A thread sends one request at a time, and a pooled connection is
    read by whichever thread holds it, so the deadline belongs to the thread, not to the connection."""

    def __init__(self) -> None:
        self._local = threading.local()

    @contextmanager
    def limit(self, seconds: float) -> Iterator[None]:
        self._local.state = (time.monotonic() + seconds, seconds)
        try:
            yield
        finally:
            self._local.state = None

    def bound(self, timeout: float | None) -> float | None:
        """`timeout` capped at the time left; DeadlineExceeded when none is left."""
        state = getattr(self._local, "state", None)
        if state is None:
            return timeout
        at, seconds = state
        left = at - time.monotonic()
        if left <= 0:
            raise DeadlineExceeded(f"no complete reply within the deadline of {seconds:g} s")
        return left if timeout is None else min(timeout, left)


class DeadlineStream(httpcore.NetworkStream):
    def __init__(self, stream: httpcore.NetworkStream, deadlines: Deadlines):
        self._stream = stream
        self._deadlines = deadlines

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max_bytes, self._deadlines.bound(timeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._stream.write(buffer, self._deadlines.bound(timeout))

    def close(self) -> None:
        self._stream.close()

    def start_tls(self, ssl_context: Any, server_hostname: str | None = None,
                  timeout: float | None = None) -> httpcore.NetworkStream:
        tls = self._stream.start_tls(ssl_context, server_hostname, self._deadlines.bound(timeout))
        return DeadlineStream(tls, self._deadlines)

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


class DeadlineBackend(httpcore.NetworkBackend):
    def __init__(self, deadlines: Deadlines):
        self._backend = httpcore.SyncBackend()
        self._deadlines = deadlines

    def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                    socket_options: Iterable[Any] | None = None) -> httpcore.NetworkStream:
        stream = self._backend.connect_tcp(host, port, self._deadlines.bound(timeout), local_address, socket_options)
        return DeadlineStream(stream, self._deadlines)

    def sleep(self, seconds: float) -> None:
        self._backend.sleep(seconds)
