"""Small pure pieces: durations, retry backoff, COPY escaping, output lines."""

from __future__ import annotations

import random
from datetime import timedelta

import orjson
import pytest

from inferbatch.config import Settings, parse_duration
from inferbatch.engines.client import engine_path, parse_retry_after
from inferbatch.engines.usage import Usage, usage_of
from inferbatch.ids import parse_request_public_id, request_public_id
from inferbatch.scheduler.finalize import result_line
from inferbatch.scheduler.ingest import copy_text
from inferbatch.worker.retry import backoff_seconds, is_retryable

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("24h", timedelta(hours=24)),
        ("30m", timedelta(minutes=30)),
        ("7d", timedelta(days=7)),
        ("90s", timedelta(seconds=90)),
        (" 4h ", timedelta(hours=4)),
    ],
)
def test_durations_parse(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "24", "h", "0h", "-1h", "1.5h", "1w", "24 hours"])
def test_bad_durations_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_settings_refuse_inverted_window_bounds() -> None:
    with pytest.raises(ValueError):
        Settings(min_completion_window="2d", max_completion_window="1d")


def test_backoff_grows_is_capped_and_honours_retry_after() -> None:
    rng = random.Random(1)
    delays = [backoff_seconds(n, base=1, cap=30, rng=rng) for n in range(1, 9)]
    assert all(
        0.5 * min(30, 2 ** (n - 1)) <= d <= min(30, 2 ** (n - 1))
        for n, d in zip(range(1, 9), delays, strict=True)
    )
    assert max(delays) <= 30
    assert backoff_seconds(1, base=1, cap=30, retry_after=12, rng=rng) == 12
    assert backoff_seconds(1, base=1, cap=30, retry_after=999, rng=rng) == 30


@pytest.mark.parametrize(
    ("status", "retry"),
    [(429, True), (500, True), (503, True), (408, True), (400, False), (404, False), (422, False)],
)
def test_retryable_statuses(status: int, retry: bool) -> None:
    assert is_retryable(status) is retry


def test_retry_after_header_forms() -> None:
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0


def test_engine_path_is_relative_to_the_base_url() -> None:
    assert engine_path("/v1/chat/completions") == "/chat/completions"
    assert engine_path("/v1/embeddings") == "/embeddings"


def test_copy_text_escapes_copy_specials() -> None:
    assert copy_text("a\tb\nc\\d\re") == "a\\tb\\nc\\\\d\\re"


def test_request_public_id_round_trips() -> None:
    assert parse_request_public_id(request_public_id(123456)) == 123456
    assert parse_request_public_id("batch_req_zz") is None
    assert parse_request_public_id("file-1") is None


def _row(**kw: object) -> dict[str, object]:
    base: dict[str, object] = {
        "id": 5,
        "custom_id": "c",
        "status": "completed",
        "response_status": 200,
        "response_request_id": "r1",
        "response_body": '{"ok":1}',
        "error": None,
    }
    return {**base, **kw}


def test_result_lines_follow_openai_format() -> None:
    ok, line = result_line(_row())
    assert ok and line.endswith(b"\n")
    assert line == (
        b'{"id":"batch_req_0000000000000005","custom_id":"c","response":'
        b'{"status_code":200,"request_id":"r1","body":{"ok":1}},"error":null}\n'
    )
    ok, line = result_line(
        _row(status="failed", response_status=400, response_body='{"error": {"message": "bad"}}')
    )
    assert not ok and b'"status_code":400' in line and b'"error":null' in line
    ok, line = result_line(_row(status="expired"))
    assert not ok and b'"response":null' in line and b'"code":"batch_expired"' in line
    ok, line = result_line(_row(status="cancelled", response_status=None))
    assert not ok and b'"code":"batch_cancelled"' in line
    ok, line = result_line(
        _row(
            status="failed", response_status=None, error={"code": "engine_timeout", "message": "t"}
        )
    )
    assert not ok and b'"error":{"code":"engine_timeout","message":"t"}' in line


def test_result_lines_keep_the_stored_body_text_on_one_line() -> None:
    stored = '{"b": 1,  "a": "x\\ny"}'
    ok, line = result_line(_row(response_body=stored))
    assert ok and stored.encode() in line  # as stored: key order and spacing kept
    ok, line = result_line(_row(response_body='{\n  "a": 1\n}'))
    assert line.count(b"\n") == 1 and b'"body":{"a":1}' in line
    assert orjson.loads(line)["response"]["body"] == {"a": 1}


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            {
                "usage": {
                    "prompt_tokens": 10,
                    "completion_tokens": 5,
                    "prompt_tokens_details": {"cached_tokens": 8},
                    "completion_tokens_details": {"reasoning_tokens": 3},
                }
            },
            Usage(10, 5, 8, 3),
        ),
        (  # a Response object's usage
            {
                "usage": {
                    "input_tokens": 7,
                    "output_tokens": 2,
                    "input_tokens_details": {"cached_tokens": 4},
                    "output_tokens_details": {"reasoning_tokens": 1},
                }
            },
            Usage(7, 2, 4, 1),
        ),
        ({"usage": {"prompt_tokens": 3}}, Usage(3, 0, None, None)),  # embeddings
        ({"usage": {"prompt_tokens": True, "completion_tokens": "4"}}, Usage(None, 0)),
        ({"object": "x"}, Usage()),
        ([1, 2], Usage()),
    ],
)
def test_token_counts_are_read_from_either_usage_shape(body: object, expected: Usage) -> None:
    assert usage_of(body) == expected
