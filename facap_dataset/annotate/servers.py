"""Several OpenAI-compatible servers behind one backend: which server takes the next request, and when a
failing one is out of rotation.

A request goes to the server with the fewest requests in flight (ties: the one sent the fewest so far)
among those in rotation and below the per-server concurrency. A failed exchange (connection error, the
deadline, HTTP 408/409/425/429/5xx, a malformed reply) takes its server out of rotation for a back-off
period, exponential in its consecutive failures with jitter, or the server's own `Retry-After` on 429/503
bounded by the request deadline, while the others carry on; the request is retried on whichever server
is free. Only the first failure after a server comes back counts: requests that were already in flight
on it and fail with it belong to the same outage. A server past the retry budget (`max_retries + 1`
counted failures in a row) is still tried after its back-off, since it may come back; the run stops only
when every server is past the budget.
"""

from __future__ import annotations

import math
import random
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Iterable
from urllib.parse import urlsplit

from facap_io import parse_list

from .backends import BackendError


def parse_base_urls(values: str | Iterable[str]) -> list[str]:
    """Server base URLs from one comma list or several (a repeated `--base-url`), each checked, so that a
    malformed one is an error naming it before any request is sent."""
    try:
        urls = parse_list(values, what="URL")
    except ValueError as error:
        raise BackendError(f"--base-url: {error}") from None
    for url in urls:
        problem = _url_problem(url)
        if problem:
            raise BackendError(f"malformed server URL {url!r} in --base-url: {problem}")
    repeated = sorted({url for url in urls if urls.count(url) > 1})
    if repeated:
        raise BackendError(f"--base-url lists {repeated[0]!r} more than once")
    return urls


def _url_problem(url: str) -> str | None:
    parts = urlsplit(url)
    if any(character.isspace() for character in url):
        return "it holds whitespace"
    if parts.scheme not in ("http", "https"):
        return "expected http:// or https://, e.g. http://localhost:8000/v1"
    if not parts.hostname:
        return "it names no host"
    try:
        parts.port
    except ValueError:
        return "its port is not a number from 0 to 65535"
    if parts.username or parts.password:
        return "it holds credentials (give the API key in OPENAI_API_KEY)"
    if parts.query or parts.fragment:
        return "it has a query or fragment (give the base URL, e.g. http://localhost:8000/v1)"
    return None


def retry_after_seconds(value: str | None) -> float | None:
    """A `Retry-After` header (seconds or an HTTP date) as seconds from now; None when absent or unreadable."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        seconds = (when - datetime.now(timezone.utc)).total_seconds()
    return None if math.isnan(seconds) else max(0.0, seconds)


@dataclass
class Server:
    url: str
    in_flight: int = 0
    sent: int = 0
    failures: int = 0  # counted failures in a row
    resting_until: float = 0.0
    epoch: int = 0  # bumped by each counted failure: a lease from an older epoch shares that outage
    last_error: str = ""


@dataclass(frozen=True)
class Lease:
    server: Server
    epoch: int


class ServerPool:
    """Thread-safe: every worker thread leases a server per exchange and reports how it went."""

    def __init__(self, urls: Iterable[str], *, per_server: int, max_retries: int, backoff: float,
                 longest_wait: float):
        self.servers = [Server(url) for url in urls]
        self.per_server = per_server
        self.max_retries = max_retries
        self.backoff = backoff
        self.longest_wait = longest_wait
        self._changed = threading.Condition()

    def acquire(self) -> Lease:
        """The server to send to; waits while all are resting or busy, raises when all are past the budget."""
        with self._changed:
            while True:
                if all(server.failures > self.max_retries for server in self.servers):
                    raise BackendError(self._exhausted())
                now = time.monotonic()
                ready = [s for s in self.servers if s.resting_until <= now and s.in_flight < self.per_server]
                if ready:
                    server = min(ready, key=lambda s: (s.in_flight, s.sent))
                    server.in_flight += 1
                    server.sent += 1
                    return Lease(server, server.epoch)
                resting = [s.resting_until - now for s in self.servers if s.resting_until > now]
                self._changed.wait(min(resting) if resting else None)

    def succeeded(self, lease: Lease) -> None:
        with self._changed:
            lease.server.in_flight -= 1
            lease.server.failures = 0
            self._changed.notify_all()

    def release(self, lease: Lease) -> None:
        """The exchange says nothing about the server's health (the request itself was refused)."""
        with self._changed:
            lease.server.in_flight -= 1
            self._changed.notify_all()

    def failed(self, lease: Lease, error: str, retry_after: float | None = None) -> None:
        with self._changed:
            server = lease.server
            server.in_flight -= 1
            server.last_error = " ".join(error.split())
            if lease.epoch == server.epoch:
                server.epoch += 1
                server.failures += 1
                server.resting_until = time.monotonic() + self._rest(server.failures, retry_after)
            self._changed.notify_all()

    def _rest(self, failures: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self.longest_wait)
        # Exponential back-off with jitter, so many workers do not hammer a recovering server together.
        return self.backoff * 2 ** (min(failures, self.max_retries + 1) - 1) * (0.5 + random.random())

    def _exhausted(self) -> str:
        failed = "; ".join(f"{s.url} failed {s.failures} times; last error: {s.last_error}" for s in self.servers)
        return failed if len(self.servers) == 1 else f"all {len(self.servers)} servers failed: {failed}"
