"""A deterministic OpenAI-compatible chat-completions server on 127.0.0.1, for tests, benchmarks and dry
runs of the pipeline without a model: `python -m facap_dataset.annotate.stub --port 8000`.

Answers are derived from the prompt (a caption for image prompts, a one-sentence modification for text
prompts). Behaviours for testing failure handling: `latency` (seconds per reply), `fail_first` (the first
N requests get HTTP 500), and `script`, a list of per-request overrides consumed in order:
"500", "malformed" (a JSON body cut short), "raw:<body>" (HTTP 200 with exactly that body), "empty",
"two-sentences", "slow:<seconds>", "trickle:<seconds>" (a valid reply sent a byte every 10 ms, for that
long), "429:<retry-after>" / "503:<retry-after>" (that status with a `Retry-After` header) or any other
string (sent as the answer). `arrivals` records when each request came in (time.monotonic()).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_COLOURS = ("red", "navy blue", "black", "white", "emerald green", "mustard yellow", "pink", "grey")
_CHANGES = ("with long sleeves", "sleeveless", "with a v-neck", "with a floral print", "in a shorter length",
            "with a fitted waist", "in soft cotton", "with side pockets")
TRICKLE_INTERVAL = 0.01


def canned_answer(prompt_text: str, has_image: bool) -> str:
    digest = int(hashlib.sha256(prompt_text.encode("utf-8")).hexdigest(), 16)
    colour, change = _COLOURS[digest % len(_COLOURS)], _CHANGES[(digest // 8) % len(_CHANGES)]
    if has_image:
        return (f"A {colour} garment {change}, made of a smooth woven fabric with a regular fit, "
                f"a round neckline and neat finished seams.")
    return f"Make it {colour} and {change}."


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that timed out and hung up is an expected event here, not a server error to print.
        pass


class StubServer:
    """Start with `start()` (or as a context manager); `url` is the base URL to give the client."""

    def __init__(self, *, latency: float = 0.0, fail_first: int = 0, script: list[str] | None = None,
                 port: int = 0):
        self.latency = latency
        self.fail_first = fail_first
        self.script = list(script or [])
        self.requests = 0
        self.arrivals: list[float] = []
        self.payloads: list[dict[str, Any]] = []
        self.authorizations: list[str | None] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        self._server = _QuietServer(("127.0.0.1", port), _handler(self))
        # A short poll interval so that stop() returns quickly (tests start and stop many servers).
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v1"

    def start(self) -> "StubServer":
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Serve in the calling thread (the command-line stub); `start` serves in a background thread."""
        self._server.serve_forever()

    def stop(self) -> None:
        self._server.shutdown()
        self.close()

    def close(self) -> None:
        self._server.server_close()

    def __enter__(self) -> "StubServer":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def track(self, change: int) -> None:
        with self._lock:
            self.in_flight += change
            self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def next_behaviour(self, payload: dict[str, Any], authorization: str | None) -> str | None:
        with self._lock:
            self.requests += 1
            self.arrivals.append(time.monotonic())
            self.payloads.append(payload)
            self.authorizations.append(authorization)
            if self.requests <= self.fail_first:
                return "500"
            return self.script.pop(0) if self.script else None


def _handler(stub: StubServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # One buffered write per reply and no Nagle delay: otherwise headers and body go out as two small
        # segments and delayed ACKs add ~40 ms to every reply, which would swamp the configured latency.
        wbufsize = -1
        disable_nagle_algorithm = True

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - BaseHTTPRequestHandler's name
            pass

        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if self.path != "/v1/chat/completions":
                return self._send(404, b'{"error": "not found"}')
            try:
                payload = json.loads(body)
                content = payload["messages"][-1]["content"]
            except (ValueError, KeyError, IndexError, TypeError):
                return self._send(400, b'{"error": "bad request"}')
            behaviour = stub.next_behaviour(payload, self.headers.get("Authorization"))
            stub.track(+1)
            try:
                self._reply(stub, behaviour, payload, content)
            finally:
                stub.track(-1)

        def _reply(self, stub: StubServer, behaviour: str | None, payload: dict[str, Any], content: Any) -> None:
            time.sleep(stub.latency)
            if behaviour == "500":
                return self._send(500, b'{"error": "internal error"}')
            if behaviour == "malformed":
                return self._send(200, b'{"choices": [{"message": {}}')
            kind, _, value = (behaviour or "").partition(":")
            if kind == "raw":
                return self._send(200, value.encode("utf-8"))
            if kind in ("429", "503"):
                return self._send(int(kind), b'{"error": "busy"}', {"Retry-After": value})
            trickle = float(value) if kind == "trickle" else 0.0
            if kind == "slow":
                time.sleep(float(value))
            if kind in ("slow", "trickle"):
                behaviour = None
            if isinstance(content, list):
                text = " ".join(part.get("text", "") for part in content if part.get("type") == "text")
                answer = canned_answer(text, has_image=any(p.get("type") == "image_url" for p in content))
            else:
                answer = canned_answer(content, has_image=False)
            if behaviour == "empty":
                answer = ""
            elif behaviour == "two-sentences":
                answer = "Make it red. Add long sleeves."
            elif behaviour is not None:
                answer = behaviour
            reply = {
                "id": "stub", "object": "chat.completion", "model": payload.get("model", ""),
                "choices": [{"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}],
            }
            body = json.dumps(reply).encode("utf-8")
            if trickle:
                return self._trickle(body, trickle)
            self._send(200, body)

        def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        def _trickle(self, body: bytes, seconds: float) -> None:
            """Headers at once, then a byte every 10 ms: each read is quick, the whole reply is not. The body is
            padded with spaces (still valid JSON) so that it lasts `seconds`."""
            body += b" " * max(0, int(seconds / TRICKLE_INTERVAL) - len(body))
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.flush()
            try:
                for index in range(len(body)):
                    self.wfile.write(body[index : index + 1])
                    self.wfile.flush()
                    time.sleep(TRICKLE_INTERVAL)
            except OSError:
                pass  # the client gave up: exactly what a deadline should do

    return Handler


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Serve canned OpenAI-compatible chat completions on 127.0.0.1.")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds to wait before each reply")
    args = parser.parse_args(argv)
    server = StubServer(latency=args.latency, port=args.port)
    print(f"serving {server.url} (Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
