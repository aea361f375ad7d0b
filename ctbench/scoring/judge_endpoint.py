"""A judge behind an OpenAI-compatible chat-completions endpoint (vLLM, llama.cpp's server,
TGI, a hosted API).

Why the retry loop is ours rather than the SDK's: a run of hours must survive a judge that
restarts, rate-limits or returns half a body, and must stop with one clear line when it stays
down, so which faults are retried, how long each wait is and what the final message says are
spelled out here and tested against a real (fake) server. The SDK's own retries are off.

Retried: connection errors, timeouts, HTTP 408/409/429/5xx and malformed replies (a body
that is not JSON, or JSON without the chat-completion shape, no choices, a None content),
with exponential backoff ``backoff_s * 2**retry`` capped at 30 s, or the server's numeric
``Retry-After`` (capped too). Not retried: other 4xx (400, 401, 403, 404, ...), which a
retry cannot mend; they raise :class:`JudgeUnavailable` at once with the server's message.

The API key is read from the environment, never from the YAML, and never appears in
:meth:`EndpointBackend.identity` or in a message (a server echoing it is redacted).
"""

from __future__ import annotations

import json
import math
import os
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from typing import Any

import openai
from openai.types.chat import ChatCompletion

from ctbench.common.yamlspec import Fields
from ctbench.errors import UserError
from ctbench.scoring.judge_backends import ChatReply, Conversation, JudgeUnavailable

MAX_WAIT_S = 30.0  # the longest wait between two attempts, backoff or Retry-After
PLACEHOLDER_KEY = "EMPTY"  # what local servers (vLLM, llama.cpp) accept when none is set
DEFAULT_KEY_ENV = "OPENAI_API_KEY"
_RETRIED_STATUSES = {408, 409, 429}  # and every 5xx
_MESSAGE_LIMIT = 300  # characters of a server's message kept in ours


class _Fields(Fields):
    """:class:`Fields` whose errors name ``<where>.<key>``, as the judge's other keys do."""

    def error(self, key: str, message: str) -> UserError:
        return UserError(message, where=f"{self.path}.{key}" if key else self.path)


class _Abandoned(Exception):
    """Another conversation of the same call failed for good; this one stops retrying."""


def _one_line(text: str, limit: int = _MESSAGE_LIMIT) -> str:
    """A server's message squeezed into our one-line errors (HTML pages, tracebacks)."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _retry_after(headers: Mapping[str, str]) -> float | None:
    """The server's ``Retry-After`` in seconds when it is a number; an HTTP date or garbage
    is ignored (the backoff applies)."""
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def _usage_count(usage: Any, name: str) -> int:
    count = getattr(usage, name, None) if usage is not None else None
    return count if isinstance(count, int) and not isinstance(count, bool) else 0


def _reply_from(response: Any) -> ChatReply | str:
    """The reply in a parsed response, or why the response is malformed.

    The SDK does not validate a 200 body against the chat-completion schema (checked with
    openai 3.57.0 against tests/judge_server.py): ``{}`` or ``{"choices": null}`` come back as
    a ChatCompletion with ``choices=None``, ``{"choices": [{}]}`` as a Choice with
    ``message=None``, a JSON string or list, or any body served as text/plain or text/html,
    as a plain ``str``/``list``. So the shape is checked here, field by field."""
    if not isinstance(response, ChatCompletion):
        return f"malformed reply: expected a chat completion, got {type(response).__name__}"
    choices = response.choices
    if not isinstance(choices, list) or not choices:
        return "malformed reply: no choices"
    message = getattr(choices[0], "message", None)
    content = getattr(message, "content", None)
    if not isinstance(content, str):
        return "malformed reply: the first choice has no message content"
    usage = getattr(response, "usage", None)
    return ChatReply(
        content, _usage_count(usage, "prompt_tokens"), _usage_count(usage, "completion_tokens")
    )


class EndpointBackend:
    """A :class:`~ctbench.scoring.judge_backends.ChatBackend` over an OpenAI-compatible
    ``/chat/completions`` endpoint.

    Params (the ``endpoint:`` mapping of a judge's ``backend:``): ``base_url`` and ``model``
    (required); ``api_key_env`` (the name of the environment variable holding the key;
    without it ``OPENAI_API_KEY`` when set, else the placeholder ``EMPTY``); ``timeout_s``
    (60), ``max_retries`` (4), ``backoff_s`` (1.0), ``temperature`` (0.0) and
    ``concurrency`` (4 conversations of one call in flight at once).

    ``requests_made`` and ``retries`` count HTTP attempts and retried attempts since the
    backend was built, so the judge can book its calls.
    """

    def __init__(self, params: dict[str, Any], where: str) -> None:
        fields = _Fields(params, path=where)
        self.base_url: str = fields.get("base_url", str)
        self.model: str = fields.get("model", str)
        key_env: str | None = fields.get("api_key_env", str, None)
        self.timeout_s: float = fields.positive("timeout_s", float, 60.0)
        self.max_retries: int = fields.get("max_retries", int, 4)
        self.backoff_s: float = fields.get("backoff_s", float, 1.0)
        self.temperature: float = fields.get("temperature", float, 0.0)
        self.concurrency: int = fields.positive("concurrency", int, 4)
        fields.finish()
        if not self.base_url.startswith(("http://", "https://")):
            raise fields.error("base_url", f"expected an http(s) URL, got {self.base_url!r}")
        if not self.model.strip():
            raise fields.error("model", "expected the model name the endpoint serves")
        for key, value in (
            ("max_retries", self.max_retries),
            ("backoff_s", self.backoff_s),
            ("temperature", self.temperature),
        ):
            if value < 0 or not math.isfinite(value):
                raise fields.error(key, f"expected a number >= 0, got {value!r}")
        if not math.isfinite(self.timeout_s):
            raise fields.error("timeout_s", f"expected a finite number, got {self.timeout_s!r}")

        self.where = where
        self._key, self._key_source = self._resolve_key(key_env, fields)
        self.requests_made = 0
        self.retries = 0
        self._lock = threading.Lock()
        self._client = openai.OpenAI(
            base_url=self.base_url, api_key=self._key, timeout=self.timeout_s, max_retries=0
        )

    @staticmethod
    def _resolve_key(key_env: str | None, fields: Fields) -> tuple[str, str]:
        """The key and how to name where it came from in a message (never the key)."""
        if key_env is not None:
            key = os.environ.get(key_env)
            if not key:
                raise fields.error(
                    "api_key_env", f"the environment variable {key_env} is not set (or empty)"
                )
            return key, f"the key in env var {key_env}"
        key = os.environ.get(DEFAULT_KEY_ENV)
        if key:
            return key, f"the key in env var {DEFAULT_KEY_ENV}"
        return PLACEHOLDER_KEY, (
            f"the placeholder key {PLACEHOLDER_KEY!r} (no api_key_env given, "
            f"{DEFAULT_KEY_ENV} unset)"
        )

    def identity(self) -> dict[str, Any]:
        return {
            "kind": "endpoint",
            "base_url": self.base_url,
            "model": self.model,
            "temperature": self.temperature,
        }

    def complete(
        self, conversations: Sequence[Conversation], *, max_tokens: int
    ) -> list[ChatReply]:
        """Replies in input order; up to ``concurrency`` conversations are in flight at once.
        When one fails for good the others stop retrying and its error is raised.

        Token counts are the endpoint's ``usage``; a server that sends none counts 0."""
        items = list(conversations)
        stop = threading.Event()
        if self.concurrency == 1 or len(items) <= 1:
            return [self._complete_one(c, max_tokens, stop) for c in items]
        workers = min(self.concurrency, len(items))
        with ThreadPoolExecutor(workers, thread_name_prefix="judge-endpoint") as pool:
            futures = [pool.submit(self._complete_one, c, max_tokens, stop) for c in items]
            done, _ = wait(futures, return_when=FIRST_EXCEPTION)
            failed = [f for f in futures if f in done and f.exception() is not None]
            if failed:
                stop.set()
                for future in futures:
                    future.cancel()
                errors = [f.exception() for f in failed]
                raise next((e for e in errors if not isinstance(e, _Abandoned)), errors[0])
            return [f.result() for f in futures]

    def close(self) -> None:
        """Closes the HTTP connection pool (also done when the backend is collected)."""
        self._client.close()

    def _complete_one(
        self, messages: Conversation, max_tokens: int, stop: threading.Event
    ) -> ChatReply:
        last_error = ""
        wait_s: float | None = None  # the server's Retry-After for the next wait
        for attempt in range(self.max_retries + 1):
            if attempt:
                delay = self.backoff_s * 2 ** (attempt - 1) if wait_s is None else wait_s
                if stop.wait(min(delay, MAX_WAIT_S)):
                    raise _Abandoned()
                with self._lock:
                    self.retries += 1
            elif stop.is_set():
                raise _Abandoned()
            with self._lock:
                self.requests_made += 1
            wait_s = None
            try:
                response = self._client.chat.completions.create(
                    model=self.model,
                    messages=messages,  # type: ignore[arg-type]
                    max_tokens=max_tokens,
                    temperature=self.temperature,
                )
            except openai.APIStatusError as exc:
                if not (exc.status_code in _RETRIED_STATUSES or exc.status_code >= 500):
                    raise self._refused(exc) from None
                last_error = f"HTTP {exc.status_code}: {self._server_message(exc)}"
                wait_s = _retry_after(exc.response.headers)
                continue
            except openai.APITimeoutError:
                last_error = f"no reply within timeout_s={self.timeout_s:g} s"
                continue
            except openai.APIConnectionError as exc:
                cause = exc.__cause__ or exc
                last_error = f"cannot connect: {self._redact(_one_line(str(cause)))}"
                continue
            # A body that is not JSON, served as JSON, raises json.JSONDecodeError straight
            # out of the SDK (openai 3.57.0, unwrapped); APIResponseValidationError is only
            # raised in the SDK's strict mode, which we do not use, but is handled the same
            # in case a release turns it on. A malformed body served as text comes back as a
            # str and is caught by _reply_from.
            except (json.JSONDecodeError, openai.APIResponseValidationError) as exc:
                last_error = f"malformed reply: body is not valid JSON ({_one_line(str(exc))})"
                continue
            reply = _reply_from(response)
            if isinstance(reply, ChatReply):
                return reply
            last_error = reply
        raise JudgeUnavailable(
            f"judge endpoint {self.base_url} (model {self.model}) gave no usable reply after "
            f"{self.max_retries + 1} attempts; last error: {last_error}. Verdicts obtained so "
            "far are cached in the run folder: resume with `ctbench run --resume RUN_DIR` "
            "once the endpoint is back"
        )

    def _refused(self, exc: openai.APIStatusError) -> JudgeUnavailable:
        """The error for a status a retry cannot mend; 401/403 point at the key."""
        code, said = exc.status_code, self._server_message(exc)
        head = f"judge endpoint {self.base_url} (model {self.model}) answered HTTP {code}: {said}"
        if code in (401, 403):
            return JudgeUnavailable(
                f"{head}; it refused {self._key_source}: set a key it accepts",
                where=f"{self.where}.api_key_env",
            )
        if code == 404:
            return JudgeUnavailable(
                f"{head}; check base_url (it ends with /v1 for most servers) and model",
                where=self.where,
            )
        return JudgeUnavailable(f"{head}; not retried", where=self.where)

    def _server_message(self, exc: openai.APIStatusError) -> str:
        """The server's own words: ``error.message`` of an OpenAI-style body, else the body."""
        body = exc.body
        if isinstance(body, dict):
            body = body.get("message", body)
        if body is None or body == "":
            body = exc.response.reason_phrase or "(empty body)"
        return self._redact(_one_line(body if isinstance(body, str) else json.dumps(body)))

    def _redact(self, text: str) -> str:
        """Hides the key where a server quotes it back (some 401 messages do)."""
        if self._key != PLACEHOLDER_KEY and len(self._key) >= 4:
            text = text.replace(self._key, "<redacted>")
        return text
