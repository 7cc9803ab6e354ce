"""Limits as a live api process answers them (uvicorn, h11): headers too large to parse
and bodies over their limit in the error envelope (431, 413), never a 500, and failed
keys rate limited as the official SDK sees it."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.stack import ADMIN_KEY, Stack

pytestmark = pytest.mark.e2e


@pytest.fixture
def api_only(db_url: str, tmp_path: Path) -> Iterator[Stack]:
    env = {"INFERBATCH_AUTH_FAILURES_PER_ADDRESS": "5", "INFERBATCH_MAX_JSON_BODY_BYTES": "65536"}
    s = Stack(db_url, tmp_path, engine_url="http://127.0.0.1:9/v1", env=env)
    s.start(spot=0, dedicated=0, scheduler=False)
    try:
        yield s
    finally:
        s.close()


def _raw(stack: Stack, request: bytes) -> bytes:
    """Send ``request`` on a fresh connection; everything the server answers."""
    with socket.create_connection(("127.0.0.1", stack.port), timeout=10) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def test_headers_over_the_limit_are_a_431_whether_or_not_they_can_be_parsed(
    api_only: Stack,
) -> None:
    auth = {"authorization": f"Bearer {ADMIN_KEY}"}
    over = httpx.get(api_only.url + "/v1/batches", headers={**auth, "x-pad": "p" * 20_000})
    assert over.status_code == 431
    assert over.json()["error"]["code"] == "request_header_fields_too_large"
    # past what the server parses at all: answered by the protocol, in the same shape
    huge = _raw(
        api_only,
        b"GET /v1/batches HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"p" * 60_000 + b"\r\n\r\n",
    )
    head, _, body = huge.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 431"), head
    assert b"request_header_fields_too_large" in body
    assert httpx.get(api_only.url + "/v1/batches", headers=auth).status_code == 200


def test_a_body_over_the_limit_is_a_413_with_or_without_a_length(api_only: Stack) -> None:
    auth = {"authorization": f"Bearer {ADMIN_KEY}", "content-type": "application/json"}
    body = b'{"name": "' + b"x" * 100_000 + b'"}'
    sized = httpx.post(api_only.url + "/v1/webhook_endpoints", headers=auth, content=body)
    assert sized.status_code == 413
    assert sized.json()["error"]["code"] == "request_too_large"

    def chunks() -> Iterator[bytes]:
        for i in range(0, len(body), 8192):
            yield body[i : i + 8192]

    streamed = httpx.post(api_only.url + "/v1/webhook_endpoints", headers=auth, content=chunks())
    assert streamed.status_code == 413, streamed.text
    assert streamed.json()["error"]["code"] == "request_too_large"
    listed = httpx.get(api_only.url + "/v1/webhook_endpoints", headers=auth)
    assert listed.status_code == 200 and listed.json()["data"] == []


def test_the_sdk_sees_failed_keys_limited_with_a_429(api_only: Stack) -> None:
    for n in range(5):
        with pytest.raises(openai.AuthenticationError):
            api_only.client(f"ib-guess{n}").batches.list()
    with pytest.raises(openai.RateLimitError) as limited:
        api_only.client().batches.list()  # the right key, from the limited address
    assert int(limited.value.response.headers["retry-after"]) >= 1
    assert limited.value.code == "rate_limit_exceeded"
