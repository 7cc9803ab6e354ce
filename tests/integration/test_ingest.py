"""Ingest: a valid file becomes queued requests; every bad-input case fails the batch
with line-numbered errors and queues nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from inferbatch.blobstore import LocalBlobStore
from inferbatch.db import batches
from inferbatch.db.types import Pool
from inferbatch.scheduler.ingest import ingest_next
from tests.helpers import chat_file, chat_line
from tests.integration.fixtures import REQUESTS_JOINED, make_batch, make_user, utcnow

pytestmark = pytest.mark.integration

EP = "/v1/chat/completions"


def _raw(**obj: object) -> str:
    return json.dumps(obj)


GOOD = chat_line("ok-1")
BAD_CASES = [
    ("invalid_json", f"{GOOD}\n{{oops\n", "invalid_json_line", 2),
    ("invalid_utf8", GOOD + "\n", "invalid_utf8", 2),  # second line appended as bytes below
    (
        "missing_custom_id",
        f"{GOOD}\n" + _raw(method="POST", url=EP, body={"model": "m"}),
        "invalid_custom_id",
        2,
    ),
    (
        "non_string_custom_id",
        _raw(custom_id=5, method="POST", url=EP, body={"model": "m"}),
        "invalid_custom_id",
        1,
    ),
    ("duplicate_custom_id", f"{GOOD}\n{chat_line('x')}\n{GOOD}\n", "duplicate_custom_id", 3),
    (
        "method_not_post",
        _raw(custom_id="a", method="PUT", url=EP, body={"model": "m"}),
        "invalid_method",
        1,
    ),
    (
        "url_not_endpoint",
        _raw(custom_id="a", method="POST", url="/v1/embeddings", body={"model": "m"}),
        "invalid_url",
        1,
    ),
    ("body_not_object", _raw(custom_id="a", method="POST", url=EP, body=[1]), "invalid_body", 1),
    (
        "missing_model",
        _raw(custom_id="a", method="POST", url=EP, body={"messages": []}),
        "missing_model",
        1,
    ),
    (
        "stream_true",
        f"{GOOD}\n"
        + _raw(custom_id="s", method="POST", url=EP, body={"model": "m", "stream": True}),
        "invalid_stream",
        2,
    ),
    ("empty_file", "\n\n", "empty_file", 0),
]


async def _ingest(pool: Pool, blobs: LocalBlobStore, content: bytes, max_requests: int = 50_000):
    user = await make_user(pool)
    batch = await make_batch(pool, blobs, user, content)
    assert await ingest_next(pool, blobs, max_requests=max_requests, now=utcnow) == batch.id
    async with pool.connection() as conn:
        after = await batches.get(conn, batch.id, None)
        cur = await conn.execute(
            "SELECT count(*) AS n FROM requests WHERE batch_id = %s", (batch.id,)
        )
        row = await cur.fetchone()
    assert after is not None and row is not None
    return after, row["n"]


@pytest.mark.parametrize(
    ("name", "content", "code", "line"), BAD_CASES, ids=[c[0] for c in BAD_CASES]
)
async def test_bad_input_fails_the_batch_with_line_numbers(
    pool: Pool, tmp_path: Path, name: str, content: str, code: str, line: int
) -> None:
    blobs = LocalBlobStore(tmp_path)
    data = content.encode()
    if name == "invalid_utf8":
        data += b'{"custom_id": "\xc3\x28", "method": "POST"}\n'
    batch, queued = await _ingest(pool, blobs, data)
    assert batch.status == "failed" and batch.failed_at is not None
    assert queued == 0
    assert batch.errors is not None
    first = batch.errors[0]
    assert (first["code"], first["line"]) == (
        code,
        line or None if code == "empty_file" else line,
    ) or (first["code"] == code and code == "empty_file")
    assert first["message"]


async def test_too_many_requests_fails_at_the_first_line_over_the_limit(
    pool: Pool, tmp_path: Path
) -> None:
    batch, queued = await _ingest(pool, LocalBlobStore(tmp_path), chat_file(12), max_requests=10)
    assert batch.status == "failed" and queued == 0
    assert batch.errors is not None
    assert [(e["code"], e["line"]) for e in batch.errors] == [("too_many_requests", 11)]


async def test_many_bad_lines_are_listed_up_to_a_cap_with_a_summary(
    pool: Pool, tmp_path: Path
) -> None:
    content = ("{bad\n" * 250).encode()
    batch, _ = await _ingest(pool, LocalBlobStore(tmp_path), content)
    assert batch.errors is not None
    assert len(batch.errors) == 101
    assert batch.errors[99]["line"] == 100
    assert batch.errors[-1]["code"] == "more_errors"


async def test_valid_file_queues_every_request_in_the_spot_pool(pool: Pool, tmp_path: Path) -> None:
    content = chat_file(500, model="m1") + b"\n   \n"
    batch, queued = await _ingest(pool, LocalBlobStore(tmp_path), content)
    assert batch.status == "in_progress" and batch.in_progress_at is not None
    assert queued == 500 and batch.total_count == 500 and batch.model == "m1"
    async with pool.connection() as conn:
        cur = await conn.execute(
            f"""SELECT count(DISTINCT custom_id) AS ids, min(line) AS lo, max(line) AS hi,
                      bool_and(status = 'queued' AND pool = 'spot') AS all_queued,
                      count(DISTINCT input_hash) AS hashes
               FROM {REQUESTS_JOINED} WHERE batch_id = %s""",
            (batch.id,),
        )
        row = await cur.fetchone()
    assert row == {"ids": 500, "lo": 1, "hi": 500, "all_queued": True, "hashes": 500}


async def test_a_nul_character_fails_its_line_instead_of_the_ingest(
    pool: Pool, tmp_path: Path
) -> None:
    lines = [
        _raw(custom_id="a\u0000b", method="POST", url=EP, body={"model": "m", "messages": []}),
        _raw(custom_id="ok", method="POST", url=EP, body={"model": "m\u0000", "messages": []}),
        # inside the body it is kept: the body is stored as JSON text, escaped
        _raw(custom_id="fine", method="POST", url=EP, body={"model": "m", "x": "\u0000"}),
    ]
    batch, queued = await _ingest(pool, LocalBlobStore(tmp_path), "\n".join(lines).encode())
    assert batch.status == "failed" and queued == 0
    assert [(e["code"], e["line"]) for e in batch.errors or []] == [
        ("invalid_custom_id", 1),
        ("invalid_model", 2),
    ]
    only_body = (lines[2] + "\n").encode()
    batch, queued = await _ingest(pool, LocalBlobStore(tmp_path / "b"), only_body)
    assert batch.status == "in_progress" and queued == 1


async def test_special_characters_survive_the_copy(pool: Pool, tmp_path: Path) -> None:
    tricky = 'tab\there\nnewline back\\slash "quote" \u00e9\u4e2d \U0001f600'
    content = (chat_line("id\t\\1", tricky) + "\n").encode()
    batch, queued = await _ingest(pool, LocalBlobStore(tmp_path), content)
    assert batch.status == "in_progress" and queued == 1
    async with pool.connection() as conn:
        cur = await conn.execute(
            f"SELECT custom_id, body::json FROM {REQUESTS_JOINED} WHERE batch_id = %s", (batch.id,)
        )
        row = await cur.fetchone()
    assert row is not None
    assert row["custom_id"] == "id\t\\1"
    assert row["body"]["messages"][0]["content"] == tricky


async def test_cancel_during_validation_keeps_the_requests_for_the_error_file(
    pool: Pool, tmp_path: Path
) -> None:
    blobs = LocalBlobStore(tmp_path)
    user = await make_user(pool)
    batch = await make_batch(pool, blobs, user, chat_file(3))
    async with pool.connection() as conn:
        assert await batches.request_cancel(conn, batch.id, utcnow())
    await ingest_next(pool, blobs, max_requests=100, now=utcnow)
    async with pool.connection() as conn:
        after = await batches.get(conn, batch.id, None)
    assert after is not None
    assert after.status == "cancelling" and after.ingested_at is not None
    assert after.total_count == 3
