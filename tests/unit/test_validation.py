"""Input line validation and the canonical request hash."""

from __future__ import annotations

import hashlib
import io
import json

import pytest

from inferbatch.scheduler.validation import (
    LineError,
    ParsedLine,
    canonical_json,
    check_file,
    parse_line,
)

pytestmark = pytest.mark.unit

EP = "/v1/chat/completions"
GOOD = {"custom_id": "a", "method": "POST", "url": EP, "body": {"model": "m", "messages": []}}


def _with(**changes: object) -> bytes:
    obj = {**GOOD, **changes}
    return json.dumps({k: v for k, v in obj.items() if v is not ...}).encode()


@pytest.mark.parametrize(
    ("raw", "code", "param"),
    [
        (b"{not json", "invalid_json_line", None),
        (b"[1, 2]", "invalid_json_line", None),
        (b'{"custom_id": "\xff\xfe"}', "invalid_utf8", None),
        (_with(custom_id=...), "invalid_custom_id", "custom_id"),
        (_with(custom_id=7), "invalid_custom_id", "custom_id"),
        (_with(custom_id=""), "invalid_custom_id", "custom_id"),
        (_with(method="GET"), "invalid_method", "method"),
        (_with(method=...), "invalid_method", "method"),
        (_with(url="/v1/embeddings"), "invalid_url", "url"),
        (_with(body=[1]), "invalid_body", "body"),
        (_with(body="text"), "invalid_body", "body"),
        (_with(body={"messages": []}), "missing_model", "body.model"),
        (_with(body={"model": 3}), "missing_model", "body.model"),
        (_with(body={"model": "m", "stream": True}), "invalid_stream", "body.stream"),
        (_with(body={"model": "m", "stream": "yes"}), "invalid_stream", "body.stream"),
    ],
)
def test_bad_line_is_rejected_with_its_code_and_line(
    raw: bytes, code: str, param: str | None
) -> None:
    result = parse_line(raw, 17, EP)
    assert isinstance(result, LineError)
    assert (result.code, result.param, result.line) == (code, param, 17)
    assert result.message


def test_good_line_keeps_its_body_in_order_and_hashes_the_canonical_form() -> None:
    result = parse_line(_with(body={"model": "m", "z": 1, "a": {"y": 2, "b": "é"}}), 3, EP)
    assert isinstance(result, ParsedLine)
    assert result.custom_id == "a" and result.model == "m" and result.line == 3
    assert result.body_json == '{"model":"m","z":1,"a":{"y":2,"b":"é"}}'
    expected = hashlib.sha256(
        json.dumps(
            {"url": EP, "body": {"z": 1, "model": "m", "a": {"y": 2, "b": "é"}}},
            sort_keys=True,
            separators=(",", ":"),
            ensure_ascii=False,
        ).encode()
    ).digest()
    assert result.input_hash == expected


def test_a_responses_line_needs_an_input() -> None:
    url = "/v1/responses"
    line = {"custom_id": "r", "method": "POST", "url": url, "body": {"model": "m"}}
    refused = parse_line(json.dumps(line).encode(), 4, url)
    assert isinstance(refused, LineError) and refused.param == "body.input"
    for given in ("Say hi.", [{"role": "user", "content": "Say hi."}]):
        line["body"] = {"model": "m", "input": given}
        assert isinstance(parse_line(json.dumps(line).encode(), 4, url), ParsedLine)


def test_stream_false_or_absent_is_accepted() -> None:
    for body in ({"model": "m", "stream": False}, {"model": "m", "stream": None}):
        assert isinstance(parse_line(_with(body=body), 1, EP), ParsedLine)


def test_hash_ignores_key_order_but_not_values() -> None:
    a = parse_line(_with(body={"model": "m", "x": 1, "y": 2}), 1, EP)
    b = parse_line(_with(body={"y": 2, "model": "m", "x": 1}), 1, EP)
    c = parse_line(_with(body={"y": 3, "model": "m", "x": 1}), 1, EP)
    assert isinstance(a, ParsedLine) and isinstance(b, ParsedLine) and isinstance(c, ParsedLine)
    assert a.input_hash == b.input_hash != c.input_hash


def test_canonical_json_is_compact_sorted_utf8() -> None:
    assert (
        canonical_json({"b": [1, {"d": 1, "c": 2}], "a": "ü"})
        == '{"a":"ü","b":[1,{"c":2,"d":1}]}'.encode()
    )


def test_a_whole_file_is_checked_line_by_line_before_any_batch() -> None:
    good = [_with(custom_id=f"c{i}") for i in range(3)]
    lines = [*good, b"", _with(custom_id="c1"), _with(method="GET"), b"{nope"]
    check = check_file(io.BytesIO(b"\n".join(lines) + b"\n"), max_requests=100)
    assert check.lines == 6 and check.error_count == 3
    assert [(e.code, e.line) for e in check.errors] == [
        ("duplicate_custom_id", 5),
        ("invalid_method", 6),
        ("invalid_json_line", 7),
    ]
    assert "line 2" in check.errors[0].message
    assert check_file(io.BytesIO(b"\n".join(good)), max_requests=100).error_count == 0
    too_many = check_file(io.BytesIO(b"\n".join(good)), max_requests=2)
    assert [e.code for e in too_many.errors] == ["too_many_requests"]
    assert [e.code for e in check_file(io.BytesIO(b"\n\n"), 10).errors] == ["empty_file"]
