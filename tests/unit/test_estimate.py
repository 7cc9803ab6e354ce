"""The token estimate the enqueued-tokens quota counts: prompt characters / 4 plus the
most a request may write."""

from __future__ import annotations

import orjson
import pytest

from inferbatch.services.estimate import DEFAULT_MAX_TOKENS, LineEstimate, line_tokens


def _line(body: object, url: str = "/v1/chat/completions") -> bytes:
    return orjson.dumps({"custom_id": "a", "method": "POST", "url": url, "body": body})


@pytest.mark.parametrize(
    ("body", "url", "tokens"),
    [
        ({"messages": [{"role": "user", "content": "x" * 8}], "max_tokens": 5}, "", 3 + 5),
        ({"messages": [], "max_completion_tokens": 7, "max_tokens": 1}, "", 7),
        ({"input": "abcde", "max_output_tokens": 10}, "/v1/responses", 2 + 10),
        ({"prompt": "abcd"}, "/v1/completions", 1 + DEFAULT_MAX_TOKENS),
        ({"input": ["abcd", "efgh"], "max_tokens": 99}, "/v1/embeddings", 2),
        ({"system": "abcd", "messages": [], "max_tokens": 3}, "/v1/messages", 1 + 3),
    ],
)
def test_a_line_counts_its_prompt_by_characters_and_its_output_limit(
    body: object, url: str, tokens: int
) -> None:
    assert line_tokens(_line(body, url)) == tokens


def test_lines_that_are_not_requests_count_nothing() -> None:
    assert [line_tokens(b"not json"), line_tokens(b"  "), line_tokens(b"[1]")] == [0, 0, 0]


def test_a_file_fed_in_pieces_counts_lines_across_them_and_the_last_without_newline() -> None:
    body = {"messages": [{"content": "abcd"}], "max_tokens": 1}
    data = _line(body) + b"\n\n" + _line(body)
    whole = LineEstimate()
    whole.feed(data)
    pieces = LineEstimate()
    for i in range(0, len(data), 7):
        pieces.feed(data[i : i + 7])
    assert whole.total() == pieces.total() == 2 * (1 + 1)
