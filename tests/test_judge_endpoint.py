"""The endpoint judge backend against a real HTTP server (tests/judge_server.py): the real
SDK, real status codes, real timeouts and broken bodies; nothing is mocked."""

from __future__ import annotations

import json
import socket
import threading
import time
from itertools import pairwise

import pytest
from judge_server import (
    JudgeServer,
    echo_last,
    malformed,
    no_choices,
    no_usage,
    null_content,
    ok,
    sleep,
    status,
)

import ctbench.scoring.judge_endpoint as judge_endpoint
from ctbench.errors import UserError
from ctbench.scoring.judge_backends import ChatReply, JudgeUnavailable
from ctbench.scoring.judge_endpoint import EndpointBackend

WHERE = "tasks/essay.yaml: reward.judge.backend.endpoint"
MODEL = "judge-model"
KEY = "sk-test-0123456789"
DROP = object()  # a param left out


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No key from the developer's shell leaks into (or changes) a test."""
    for name in ("OPENAI_API_KEY", "JUDGE_KEY", "OPENAI_ORG_ID", "OPENAI_PROJECT_ID"):
        monkeypatch.delenv(name, raising=False)


def backend(server: JudgeServer, **params) -> EndpointBackend:
    return EndpointBackend(
        {"base_url": server.base_url, "model": MODEL, "backoff_s": 0.01, "timeout_s": 5, **params},
        WHERE,
    )


def conv(text: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": "You judge."}, {"role": "user", "content": text}]


def test_a_reply_carries_its_usage_and_the_request_carries_model_settings_and_key(
    judge_server: JudgeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JUDGE_KEY", KEY)
    judge_server.script(ok("verdict: [[A]]", prompt_tokens=11, completion_tokens=3))
    judge = backend(judge_server, api_key_env="JUDGE_KEY", temperature=0.3)

    assert judge.complete([conv("which is better?")], max_tokens=7) == [
        ChatReply("verdict: [[A]]", 11, 3)
    ]
    (request,) = judge_server.chat_requests()
    assert request.body["model"] == MODEL
    assert request.body["messages"] == conv("which is better?")
    assert request.body["max_tokens"] == 7
    assert request.body["temperature"] == 0.3
    assert request.headers["authorization"] == f"Bearer {KEY}"
    assert (judge.requests_made, judge.retries) == (1, 0)


def test_a_reply_without_usage_counts_zero_tokens(judge_server: JudgeServer) -> None:
    judge_server.script(no_usage("[[B]]"))
    assert backend(judge_server).complete([conv("x")], max_tokens=4) == [ChatReply("[[B]]", 0, 0)]


def test_the_key_defaults_to_openai_api_key_then_the_placeholder(
    judge_server: JudgeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend(judge_server).complete([conv("a")], max_tokens=4)
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    backend(judge_server).complete([conv("b")], max_tokens=4)
    first, second = judge_server.chat_requests()
    assert first.headers["authorization"] == "Bearer EMPTY"
    assert second.headers["authorization"] == f"Bearer {KEY}"


def test_replies_keep_input_order_while_requests_run_in_parallel(
    judge_server: JudgeServer,
) -> None:
    in_flight, most = 0, 0
    lock = threading.Lock()

    def slow_echo(body):
        # Earlier conversations answer later, so an unordered collection would show.
        nonlocal in_flight, most
        index = int(echo_last(body).split()[-1])
        with lock:
            in_flight += 1
            most = max(most, in_flight)
        time.sleep(0.05 * (8 - index))
        with lock:
            in_flight -= 1
        return f"reply {index}"

    judge_server.default = slow_echo
    judge = backend(judge_server, concurrency=4)
    replies = judge.complete([conv(f"item {i}") for i in range(8)], max_tokens=4)
    assert [r.text for r in replies] == [f"reply {i}" for i in range(8)]
    assert 2 <= most <= 4
    assert (judge.requests_made, judge.retries) == (8, 0)


def test_a_500_is_retried(judge_server: JudgeServer) -> None:
    judge_server.script(status(500, "overloaded"), ok("[[A]]"))
    judge = backend(judge_server)
    assert [r.text for r in judge.complete([conv("x")], max_tokens=4)] == ["[[A]]"]
    assert (judge.requests_made, judge.retries) == (2, 1)


def test_an_html_502_from_a_proxy_is_retried(judge_server: JudgeServer) -> None:
    judge_server.script(status(502, b"<html><body>Bad Gateway</body></html>"), ok("[[A]]"))
    judge = backend(judge_server)
    assert [r.text for r in judge.complete([conv("x")], max_tokens=4)] == ["[[A]]"]
    assert judge.retries == 1


def test_a_429_waits_as_long_as_retry_after_says(judge_server: JudgeServer) -> None:
    # Retry-After 0 overrides a long backoff ...
    judge_server.script(status(429, headers={"Retry-After": "0"}), ok("[[A]]"))
    judge = backend(judge_server, backoff_s=20)
    start = time.monotonic()
    assert judge.complete([conv("x")], max_tokens=4)[0].text == "[[A]]"
    assert time.monotonic() - start < 5
    assert judge.retries == 1
    # ... and a longer Retry-After overrides a short one.
    judge_server.script(status(429, headers={"Retry-After": "0.4"}), ok("[[B]]"))
    judge = backend(judge_server, backoff_s=0.01)
    assert judge.complete([conv("y")], max_tokens=4)[0].text == "[[B]]"
    limited, retried = judge_server.chat_requests()[-2:]
    assert retried.at - limited.at >= 0.4


def test_waits_are_capped(judge_server: JudgeServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(judge_endpoint, "MAX_WAIT_S", 0.05)
    judge_server.script(status(503, headers={"Retry-After": "3600"}), ok("[[A]]"))
    start = time.monotonic()
    assert backend(judge_server, backoff_s=100).complete([conv("x")], max_tokens=4)[0].text
    assert time.monotonic() - start < 5


def test_a_persistent_500_stops_with_one_line_naming_the_endpoint_and_resume(
    judge_server: JudgeServer,
) -> None:
    judge_server.default = lambda body: status(500, "the GPU fell off")
    judge = backend(judge_server, max_retries=3, backoff_s=0.05)
    with pytest.raises(JudgeUnavailable) as caught:
        judge.complete([conv("x")], max_tokens=4)
    message = str(caught.value)
    assert "\n" not in message
    for part in (judge_server.base_url, MODEL, "4 attempts", "HTTP 500", "the GPU fell off"):
        assert part in message
    assert "ctbench run --resume RUN_DIR" in message
    assert (judge.requests_made, judge.retries) == (4, 3)
    # The waits double: 0.05, 0.1, 0.2 s.
    times = [r.at for r in judge_server.chat_requests()]
    gaps = [b - a for a, b in pairwise(times)]
    for gap, least in zip(gaps, (0.05, 0.1, 0.2), strict=True):
        assert gap >= least


def test_a_timeout_is_retried(judge_server: JudgeServer) -> None:
    judge_server.script(sleep(1.0), ok("[[A]]"))
    judge = backend(judge_server, timeout_s=0.2)
    assert judge.complete([conv("x")], max_tokens=4)[0].text == "[[A]]"
    assert (judge.requests_made, judge.retries) == (2, 1)


def test_a_persistent_timeout_stops(judge_server: JudgeServer) -> None:
    judge_server.script(sleep(1.0), sleep(1.0), sleep(1.0))
    judge = backend(judge_server, timeout_s=0.2, max_retries=2)
    with pytest.raises(JudgeUnavailable, match=r"3 attempts; last error: no reply within"):
        judge.complete([conv("x")], max_tokens=4)
    assert judge.requests_made == 3


@pytest.mark.parametrize(
    "broken",
    [
        malformed(),  # "{not json" as application/json: the SDK raises JSONDecodeError
        malformed(b""),
        malformed(b"{not json", content_type="text/plain"),  # the SDK returns a str
        malformed(b"{}"),  # a ChatCompletion with choices=None
        malformed(b'{"choices": [{}]}'),  # a choice with message=None
        malformed(b'["a", "list"]'),
        no_choices(),
        null_content(),
    ],
    ids=[
        "not-json",
        "empty",
        "text-plain",
        "no-fields",
        "empty-choice",
        "list",
        "no-choices",
        "null-content",
    ],
)
def test_a_malformed_reply_is_retried(judge_server: JudgeServer, broken) -> None:
    judge_server.script(broken, ok("[[A]]"))
    judge = backend(judge_server)
    assert judge.complete([conv("x")], max_tokens=4)[0].text == "[[A]]"
    assert (judge.requests_made, judge.retries) == (2, 1)


def test_persistently_malformed_replies_stop(judge_server: JudgeServer) -> None:
    judge_server.default = lambda body: malformed()
    judge = backend(judge_server, max_retries=1)
    with pytest.raises(JudgeUnavailable, match=r"2 attempts; last error: malformed reply"):
        judge.complete([conv("x")], max_tokens=4)
    judge_server.default = lambda body: no_choices()
    with pytest.raises(JudgeUnavailable, match=r"last error: malformed reply: no choices"):
        judge.complete([conv("x")], max_tokens=4)


def test_a_refused_key_stops_at_once_naming_the_variable_not_the_key(
    judge_server: JudgeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JUDGE_KEY", KEY)
    judge_server.script(status(401, f"Incorrect API key provided: {KEY}"))
    judge = backend(judge_server, api_key_env="JUDGE_KEY", max_retries=4)
    with pytest.raises(JudgeUnavailable) as caught:
        judge.complete([conv("x")], max_tokens=4)
    message = str(caught.value)
    assert "HTTP 401" in message and "env var JUDGE_KEY" in message
    assert KEY not in message
    assert caught.value.where == f"{WHERE}.api_key_env"
    assert (judge.requests_made, judge.retries) == (1, 0)


@pytest.mark.parametrize("code", [400, 403, 404])
def test_client_errors_are_not_retried(judge_server: JudgeServer, code: int) -> None:
    judge_server.script(status(code, "no such model"))
    judge = backend(judge_server)
    with pytest.raises(JudgeUnavailable, match=f"HTTP {code}: no such model"):
        judge.complete([conv("x")], max_tokens=4)
    assert (judge.requests_made, judge.retries) == (1, 0)


def test_an_endpoint_that_is_not_there_stops() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1"
    judge = EndpointBackend({"base_url": url, "model": MODEL, "backoff_s": 0.01}, WHERE)
    with pytest.raises(JudgeUnavailable, match=r"5 attempts; last error: cannot connect") as caught:
        judge.complete([conv("x")], max_tokens=4)
    assert url in str(caught.value)


def test_one_conversation_failing_for_good_fails_the_call(judge_server: JudgeServer) -> None:
    judge_server.default = lambda body: (
        status(500, "poisoned") if echo_last(body) == "bad" else echo_last(body)
    )
    judge = backend(judge_server, max_retries=2, concurrency=3)
    items = [conv("a"), conv("bad"), conv("c"), conv("d")]
    with pytest.raises(JudgeUnavailable, match="poisoned"):
        judge.complete(items, max_tokens=4)


def test_identity_names_endpoint_model_and_temperature_never_the_key(
    judge_server: JudgeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JUDGE_KEY", KEY)
    judge = backend(judge_server, api_key_env="JUDGE_KEY", temperature=0)
    assert judge.identity() == {
        "kind": "endpoint",
        "base_url": judge_server.base_url,
        "model": MODEL,
        "temperature": 0.0,
    }
    assert KEY not in json.dumps(judge.identity())


@pytest.mark.parametrize(
    ("params", "field", "words"),
    [
        ({"base_url": DROP}, "base_url", "missing"),
        ({"model": DROP}, "model", "missing"),
        ({"base_url": "127.0.0.1:8000/v1", "model": MODEL}, "base_url", "http"),
        ({"api_key_env": "JUDGE_KEY"}, "api_key_env", "JUDGE_KEY is not set"),
        ({"timeout_s": -1}, "timeout_s", "positive"),
        ({"timeout_s": "60"}, "timeout_s", "expected float"),
        ({"max_retries": -1}, "max_retries", ">= 0"),
        ({"max_retries": 2.5}, "max_retries", "expected int"),
        ({"concurrency": 0}, "concurrency", "positive"),
        ({"temperature": True}, "temperature", "expected float"),
        ({"api_key": KEY}, "api_key", "unknown key"),
    ],
)
def test_bad_params_name_the_field(params: dict, field: str, words: str) -> None:
    full = {"base_url": "http://127.0.0.1:1/v1", "model": MODEL, **params}
    full = {key: value for key, value in full.items() if value is not DROP}
    with pytest.raises(UserError, match=words) as caught:
        EndpointBackend(full, WHERE)
    assert caught.value.where == f"{WHERE}.{field}"
    assert KEY not in str(caught.value)
