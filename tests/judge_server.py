"""A fake OpenAI-compatible chat-completions server for judge tests.

The endpoint judge backend is tested against a real HTTP server on 127.0.0.1 rather than a
mocked SDK, so that what is exercised is what a run meets: the SDK's own parsing of bodies,
real timeouts, real status codes and headers. The server answers ``POST
/v1/chat/completions`` from a scripted queue of behaviours (one per request, in order) and,
once the queue is empty, from a default responder: a callable that takes the parsed request
body and returns the reply text, so that a judge test can plug in a judge that answers
``[[A]]`` or ``[[B]]`` depending on the prompt (it may also return a behaviour, e.g.
``status(500)``, to fail some requests by their content). Without one it echoes the last
message. Usage counts default to whitespace-separated words of the messages and the reply.

Usage::

    def test_x(judge_server):
        judge_server.script(status(500), ok("fine"))
        ...  # talk to judge_server.base_url
        assert len(judge_server.requests) == 2

The ``judge_server`` fixture is registered for every test through ``tests/conftest.py``.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

CHAT_PATH = "/v1/chat/completions"
_DEFAULT = 0  # an Answer status meaning "the default responder's reply"


@dataclass(frozen=True)
class Answer:
    """What the server sends back for one request."""

    status: int
    body: bytes
    headers: dict[str, str]
    delay_s: float = 0.0  # seconds to wait before answering (to make a client time out)


@dataclass(frozen=True)
class Received:
    """One request as the server saw it; header names are lower-case."""

    path: str
    headers: dict[str, str]
    body: Any  # the parsed JSON body, or the raw text when it was not JSON
    at: float  # time.monotonic() on arrival, to measure the client's waits


Behaviour = Callable[[Any], Answer]  # takes the parsed request body
# Takes the parsed request body, returns the reply text (or, to fail some requests by their
# content, a Behaviour such as status(500)).
Responder = Callable[[Any], "str | Behaviour"]


def _json_answer(
    payload: Any, status_code: int = 200, headers: dict[str, str] | None = None
) -> Answer:
    return Answer(
        status_code,
        json.dumps(payload).encode(),
        {"Content-Type": "application/json", **(headers or {})},
    )


def completion(
    text: str | None, body: Any, prompt_tokens: int | None, completion_tokens: int | None
) -> dict[str, Any]:
    """A chat-completion object as an OpenAI-compatible server returns it. Token counts left
    as None are counted as whitespace-separated words (of the messages, of the reply)."""
    if prompt_tokens is None:
        messages = body.get("messages", []) if isinstance(body, dict) else []
        prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in messages)
    if completion_tokens is None:
        completion_tokens = len((text or "").split())
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": 0,
        "model": body.get("model", "fake") if isinstance(body, dict) else "fake",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


def ok(
    text: str, *, prompt_tokens: int | None = None, completion_tokens: int | None = None
) -> Behaviour:
    """A normal 200 reply with ``text`` and a ``usage`` block."""
    return lambda body: _json_answer(completion(text, body, prompt_tokens, completion_tokens))


def no_usage(text: str) -> Behaviour:
    """A 200 reply without a ``usage`` block (some servers omit it)."""

    def answer(body: Any) -> Answer:
        payload = completion(text, body, 0, 0)
        del payload["usage"]
        return _json_answer(payload)

    return answer


def status(
    code: int,
    body: str | bytes | dict[str, Any] | None = None,
    *,
    headers: dict[str, str] | None = None,
) -> Behaviour:
    """An HTTP ``code`` with an OpenAI-style error body (``{"error": {"message": ...}}``) made
    from ``body`` when it is a string, ``body`` itself as JSON when it is a dict, or ``body``
    as it is, served as text/html, when it is bytes (a proxy's error page)."""
    if isinstance(body, bytes):
        raw = body
        return lambda _request: Answer(code, raw, {"Content-Type": "text/html", **(headers or {})})
    if body is None:
        body = f"fake server says {code}"
    payload = (
        {"error": {"message": body, "type": "fake", "code": code}}
        if isinstance(body, str)
        else body
    )
    return lambda _request: _json_answer(payload, code, headers)


def sleep(seconds: float, then: Behaviour | None = None) -> Behaviour:
    """Wait ``seconds`` before answering (with ``then``, or the default responder), so that
    a client with a shorter timeout gives up on this request."""

    def answer(body: Any) -> Answer:
        if then is None:
            return Answer(_DEFAULT, b"", {}, seconds)
        return replace(then(body), delay_s=seconds)

    return answer


def malformed(raw: bytes = b"{not json", content_type: str = "application/json") -> Behaviour:
    """A 200 whose body is not the JSON it claims to be."""
    return lambda _body: Answer(200, raw, {"Content-Type": content_type})


def no_choices() -> Behaviour:
    """A 200 with valid JSON whose ``choices`` list is empty."""

    def answer(body: Any) -> Answer:
        payload = completion("", body, 0, 0)
        payload["choices"] = []
        return _json_answer(payload)

    return answer


def null_content() -> Behaviour:
    """A 200 whose one choice has ``content: null``."""
    return lambda body: _json_answer(completion(None, body, 0, 0))


def echo_last(body: Any) -> str:
    """The default responder: the content of the last message, so replies tell which
    conversation they answer."""
    messages = body.get("messages", []) if isinstance(body, dict) else []
    return str(messages[-1].get("content", "")) if messages else ""


class JudgeServer:
    """A fake OpenAI-compatible server on 127.0.0.1 (an ephemeral port) in a daemon thread.

    ``requests`` lists what it received, in arrival order; ``script(*behaviours)`` queues
    answers for the next requests; ``default`` answers everything past the queue."""

    def __init__(self, default: Responder = echo_last) -> None:
        self.default: Responder = default
        self.requests: list[Received] = []
        self._queue: deque[Behaviour] = deque()
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._httpd.daemon_threads = True
        # Handlers still sleeping (a timed-out request) must not hold up the teardown.
        self._httpd.block_on_close = False
        # A short poll interval: shutdown() waits up to one interval, at every teardown.
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self._thread.start()

    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def script(self, *behaviours: Behaviour) -> None:
        """Answer the next requests with ``behaviours``, one each, in order."""
        with self._lock:
            self._queue.extend(behaviours)

    def chat_requests(self) -> list[Received]:
        with self._lock:
            return [r for r in self.requests if r.path == CHAT_PATH]

    def close(self) -> None:
        self._closing.set()
        self._httpd.shutdown()
        self._httpd.server_close()

    def _answer(self, path: str, headers: dict[str, str], raw: bytes) -> Answer:
        try:
            body: Any = json.loads(raw)
        except ValueError:
            body = raw.decode(errors="replace")
        with self._lock:
            self.requests.append(Received(path, headers, body, time.monotonic()))
            behaviour = self._queue.popleft() if self._queue else None
        if path != CHAT_PATH:
            return status(404, f"no route {path}")(body)
        if behaviour is None:
            return self._default_answer(body)
        answer = behaviour(body)
        if answer.status == _DEFAULT:  # sleep() without a follow-up
            answer = replace(self._default_answer(body), delay_s=answer.delay_s)
        return answer

    def _default_answer(self, body: Any) -> Answer:
        reply = self.default(body)
        return reply(body) if callable(reply) else ok(reply)(body)

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                headers = {k.lower(): v for k, v in self.headers.items()}
                answer = server._answer(self.path, headers, raw)
                if answer.delay_s and server._closing.wait(answer.delay_s):
                    return
                try:
                    self.send_response(answer.status)
                    for name, value in answer.headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(answer.body)))
                    self.end_headers()
                    self.wfile.write(answer.body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timed out) before the answer came

            def log_message(self, format: str, *args: Any) -> None:
                pass  # keep test output quiet

        return Handler


@pytest.fixture()
def judge_server() -> Iterator[JudgeServer]:
    """A fresh fake server per test, echoing the last message unless scripted."""
    server = JudgeServer()
    try:
        yield server
    finally:
        server.close()
