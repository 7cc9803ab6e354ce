"""A Message Batch create body is checked whole before anything is stored: the first bad
request is named by its path, and a good body becomes the batch's input lines."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import orjson
import pytest

from inferbatch.blobstore import LocalBlobStore
from inferbatch.errors import InvalidRequest
from inferbatch.scheduler.validation import ParsedLine, parse_line
from inferbatch.services.message_batches import write_input

pytestmark = pytest.mark.unit


def _params(**extra: Any) -> dict[str, Any]:
    return {
        "model": "m",
        "max_tokens": 16,
        "messages": [{"role": "user", "content": "Hi"}],
        **extra,
    }


def _body(*requests: dict[str, Any]) -> io.BytesIO:
    return io.BytesIO(orjson.dumps({"requests": list(requests)}))


def _refused(tmp_path: Path, raw: io.BytesIO, max_requests: int = 100) -> InvalidRequest:
    blobs = LocalBlobStore(tmp_path)
    with pytest.raises(InvalidRequest) as exc:
        write_input(raw, blobs, "upload/x", max_requests)
    assert not blobs.exists("upload/x")
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]  # no partial blob either
    return exc.value


def test_a_good_body_becomes_batch_lines_with_the_params_unchanged(tmp_path: Path) -> None:
    params = _params(system="Be brief.", temperature=0.5, chat_template_kwargs={"x": 1})
    raw = _body(
        {"custom_id": "a-1", "params": params},
        {"custom_id": "B_2", "params": _params(stream=False)},
    )
    blobs = LocalBlobStore(tmp_path)
    written = write_input(raw, blobs, "upload/x", 100)
    assert written.requests == 2
    with blobs.open_reader("upload/x") as f:
        data = f.read()
    assert written.bytes == len(data) and len(written.sha256) == 64
    lines = [json.loads(line) for line in data.splitlines()]
    assert lines[0] == {
        "custom_id": "a-1",
        "method": "POST",
        "url": "/v1/messages",
        "body": params,
    }
    assert list(lines[0]["body"]) == list(params)  # key order kept
    # and ingest takes them as they are
    parsed = [parse_line(line, i + 1, "/v1/messages") for i, line in enumerate(data.splitlines())]
    assert all(isinstance(p, ParsedLine) for p in parsed)


@pytest.mark.parametrize(
    ("request_", "path", "words"),
    [
        (
            {"custom_id": "x", "params": {"model": "m", "messages": []}},
            "requests[0].params.max_tokens",
            "Field required",
        ),
        (
            {"custom_id": "x", "params": _params(max_tokens=0)},
            "requests[0].params.max_tokens",
            "greater than or equal to 1",
        ),
        (
            {"custom_id": "x", "params": _params(max_tokens="16")},
            "requests[0].params.max_tokens",
            "valid integer",
        ),
        (
            {"custom_id": "x", "params": _params(messages=[])},
            "requests[0].params.messages",
            "at least 1",
        ),
        (
            {"custom_id": "x", "params": _params(messages=[{"role": "system", "content": "x"}])},
            "requests[0].params.messages[0].role",
            "'user' or 'assistant'",
        ),
        (
            {"custom_id": "x", "params": _params(messages=[{"role": "user"}])},
            "requests[0].params.messages[0].content",
            "Field required",
        ),
        (
            {
                "custom_id": "x",
                "params": _params(messages=[{"role": "user", "content": [{"text": "x"}]}]),
            },
            "requests[0].params.messages[0].content",
            "block 0",
        ),
        (
            {"custom_id": "x", "params": _params(stream=True)},
            "requests[0].params.stream",
            "streaming is not supported",
        ),
        (
            {"custom_id": "x", "params": _params(model="")},
            "requests[0].params.model",
            "at least 1 character",
        ),
        (
            {"custom_id": "x", "params": _params(model="m\x00")},
            "requests[0].params.model",
            "NUL",
        ),
        ({"custom_id": "x", "params": "not an object"}, "requests[0].params", "valid dictionary"),
        ({"custom_id": "has space", "params": _params()}, "requests[0].custom_id", "pattern"),
        ({"custom_id": "x" * 65, "params": _params()}, "requests[0].custom_id", "pattern"),
        ({"params": _params()}, "requests[0].custom_id", "Field required"),
        ({"custom_id": "x", "params": _params(), "extra": 1}, "requests[0].extra", "Extra inputs"),
    ],
)
def test_a_bad_request_is_named_by_its_path(
    tmp_path: Path, request_: dict[str, Any], path: str, words: str
) -> None:
    error = _refused(tmp_path, _body(request_))
    assert error.param == path
    assert error.message.startswith(f"{path}: ") and words in error.message


def test_the_failing_index_is_named(tmp_path: Path) -> None:
    good = [{"custom_id": f"r{i}", "params": _params()} for i in range(3)]
    bad = {"custom_id": "r3", "params": _params(max_tokens=-1)}
    error = _refused(tmp_path, _body(*good, bad))
    assert error.param == "requests[3].params.max_tokens"


def test_duplicate_custom_ids_are_refused(tmp_path: Path) -> None:
    error = _refused(
        tmp_path,
        _body(
            {"custom_id": "a", "params": _params()},
            {"custom_id": "b", "params": _params()},
            {"custom_id": "a", "params": _params()},
        ),
    )
    assert error.param == "requests[2].custom_id" and "requests[0]" in error.message


@pytest.mark.parametrize(
    ("raw", "param", "words"),
    [
        (b"{not json", None, "not valid JSON"),
        (b"[]", None, "JSON object"),
        (b"", None, "not valid JSON"),
        (b"{}", "requests", "Field required"),
        (b'{"requests": []}', "requests", "at least 1"),
        (b'{"requests": {}}', "requests", "valid list"),
        (b'{"requests": [], "other": 1}', "requests", "at least 1"),
        (b'{"other": 1, "requests": []}', "other", "Extra inputs"),
        (
            orjson.dumps({"requests": [{"custom_id": "a", "params": _params()}]}) + b" trailing",
            None,
            "not valid JSON",
        ),
        (b'{"requests": [{"custom_id": "a", "params": {"model"', None, "not valid JSON"),
    ],
)
def test_a_bad_body_is_refused(tmp_path: Path, raw: bytes, param: str | None, words: str) -> None:
    error = _refused(tmp_path, io.BytesIO(raw))
    assert error.param == param and words in error.message


def test_more_requests_than_allowed_are_refused(tmp_path: Path) -> None:
    body = _body(*({"custom_id": f"r{i}", "params": _params()} for i in range(4)))
    error = _refused(tmp_path, body, max_requests=3)
    assert error.param == "requests" and "at most 3" in error.message
