"""OpenAI's Uploads API end to end: real api, scheduler, worker and engine-sim processes,
driven with the official ``openai`` SDK (``client.uploads``), on the local blob store and
on a real S3-protocol server."""

from __future__ import annotations

import hashlib
from pathlib import Path

import httpx
import openai
import pytest

from tests.e2e.test_sdk import new_user_key, wait_batch
from tests.helpers import chat_file, chat_line, parse_jsonl
from tests.s3server import s3_server
from tests.stack import Stack

pytestmark = pytest.mark.e2e

KiB = 1024
MiB = 1024 * KiB


def blob_files(stack: Stack) -> list[str]:
    root = stack.workdir / "blobs"
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def _ran(client: openai.OpenAI, file_id: str, n: int) -> None:
    """A batch over ``file_id`` completes with one answer for each of its ``n`` lines."""
    batch = client.batches.create(
        input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    done = wait_batch(client, batch.id, timeout=120)
    assert done.status == "completed", done
    assert done.request_counts is not None
    assert (done.request_counts.total, done.request_counts.completed) == (n, n)
    out = parse_jsonl(client.files.content(done.output_file_id or "").text)
    assert sorted(r["custom_id"] for r in out) == sorted(f"req-{i}" for i in range(n))
    assert all(r["response"]["status_code"] == 200 for r in out)


def test_parts_sent_out_of_order_complete_into_a_file_a_batch_runs_on(stack: Stack) -> None:
    client = stack.client()
    content = chat_file(300)
    pieces = [content[:10_000], content[10_000:20_000], content[20_000:]]
    upload = client.uploads.create(
        bytes=len(content), filename="in.jsonl", mime_type="application/jsonl", purpose="batch"
    )
    assert upload.id.startswith("upload_") and upload.object == "upload"
    assert (upload.status, upload.file, upload.bytes) == ("pending", None, len(content))
    assert upload.expires_at == upload.created_at + 3600
    parts = {i: client.uploads.parts.create(upload_id=upload.id, data=pieces[i]) for i in (2, 0, 1)}
    assert all(p.object == "upload.part" and p.upload_id == upload.id for p in parts.values())
    assert all(p.id.startswith("part_") for p in parts.values())
    done = client.uploads.complete(
        upload_id=upload.id,
        part_ids=[parts[i].id for i in range(3)],
        md5=hashlib.md5(content).hexdigest(),
    )
    assert done.status == "completed" and done.file is not None
    assert (done.file.bytes, done.file.filename, done.file.purpose) == (
        len(content),
        "in.jsonl",
        "batch",
    )
    assert client.files.retrieve(done.file.id).bytes == len(content)
    assert client.files.content(done.file.id).content == content
    assert not any(name.startswith("part/") for name in blob_files(stack))
    _ran(client, done.file.id, 300)


def test_upload_file_chunked_uploads_a_file_from_disk(stack: Stack, tmp_path: Path) -> None:
    client = stack.client()
    path = tmp_path / "requests.jsonl"
    content = chat_file(2000)
    path.write_bytes(content)
    upload = client.uploads.upload_file_chunked(
        file=path,
        mime_type="application/jsonl",
        purpose="batch",
        bytes=path.stat().st_size,
        part_size=64 * KiB,
        md5=hashlib.md5(content).hexdigest(),
    )
    assert upload.status == "completed" and upload.file is not None
    assert upload.filename == "requests.jsonl" and upload.bytes == len(content)
    assert client.files.content(upload.file.id).content == content
    _ran(client, upload.file.id, 2000)


def test_bad_input_is_refused_with_typed_errors_and_nothing_is_kept(stack: Stack) -> None:
    client = stack.client()
    create = {"bytes": 10, "filename": "x.jsonl", "mime_type": "application/jsonl"}
    for bad, param in (
        ({"purpose": "nope"}, "purpose"),
        ({"purpose": "batch", "bytes": -1}, "bytes"),
        ({"purpose": "batch", "bytes": 8 * 1024**3 + 1}, "bytes"),
        ({"purpose": "batch", "mime_type": "image/png"}, "mime_type"),
        (
            {"purpose": "batch", "expires_after": {"anchor": "created_at", "seconds": 5}},
            "expires_after.seconds",
        ),
    ):
        with pytest.raises(openai.BadRequestError) as exc:
            client.uploads.create(**(create | bad))  # type: ignore[arg-type]
        assert exc.value.param == param, bad
    with pytest.raises(openai.BadRequestError) as exc:
        client.uploads.create(**create, purpose="batch", extra_body={"colour": "red"})  # type: ignore[arg-type]
    assert exc.value.param == "colour"
    raw = httpx.post(
        stack.url + "/v1/uploads",
        json={"filename": "x.jsonl"},
        headers={"authorization": f"Bearer {client.api_key}"},
    )
    assert raw.status_code == 400 and raw.json()["error"]["type"] == "invalid_request_error"

    with pytest.raises(openai.NotFoundError):
        client.uploads.parts.create(upload_id="upload_nope", data=b"x")
    upload = client.uploads.create(**create, purpose="batch")  # type: ignore[arg-type]
    first = client.uploads.parts.create(upload_id=upload.id, data=b"0123456")
    second = client.uploads.parts.create(upload_id=upload.id, data=b"789")
    other = client.uploads.create(**create, purpose="batch")  # type: ignore[arg-type]
    foreign = client.uploads.parts.create(upload_id=other.id, data=b"0123456789")
    with pytest.raises(openai.BadRequestError) as exc:
        client.uploads.complete(upload_id=upload.id, part_ids=[first.id, second.id], md5="0" * 32)
    assert exc.value.param == "md5"
    with pytest.raises(openai.BadRequestError) as exc:
        client.uploads.complete(upload_id=upload.id, part_ids=[first.id])
    assert exc.value.param == "part_ids" and "7 bytes" in exc.value.message
    with pytest.raises(openai.BadRequestError) as exc:
        client.uploads.complete(upload_id=upload.id, part_ids=[foreign.id])
    assert exc.value.param == "part_ids"
    with pytest.raises(openai.BadRequestError):
        client.uploads.complete(upload_id=upload.id, part_ids=[first.id, first.id])

    cancelled = client.uploads.cancel(upload.id)
    assert cancelled.status == "cancelled" and cancelled.file is None
    with pytest.raises(openai.ConflictError) as conflict:
        client.uploads.parts.create(upload_id=upload.id, data=b"late")
    assert conflict.value.response.headers["x-should-retry"] == "false"
    with pytest.raises(openai.ConflictError):
        client.uploads.complete(upload_id=upload.id, part_ids=[first.id, second.id])

    done = client.uploads.complete(upload_id=other.id, part_ids=[foreign.id])
    assert done.status == "completed" and done.file is not None
    with pytest.raises(openai.ConflictError, match="already completed"):
        client.uploads.complete(upload_id=other.id, part_ids=[foreign.id])
    with pytest.raises(openai.ConflictError):
        client.uploads.cancel(other.id)
    # one file, and only its bytes: no part blob, no refused compose left behind
    assert [f.id for f in client.files.list()] == [done.file.id]
    stored = blob_files(stack)
    assert len(stored) == 1 and stored[0].startswith("upload/"), stored


def test_an_upload_belongs_to_its_user(stack: Stack) -> None:
    alice = stack.client(new_user_key(stack, "alice"))
    bob = stack.client(new_user_key(stack, "bob"))
    content = chat_file(3)
    upload = alice.uploads.create(
        bytes=len(content), filename="a.jsonl", mime_type="application/jsonl", purpose="batch"
    )
    with pytest.raises(openai.NotFoundError):
        bob.uploads.parts.create(upload_id=upload.id, data=content)
    part = alice.uploads.parts.create(upload_id=upload.id, data=content)
    with pytest.raises(openai.NotFoundError):
        bob.uploads.complete(upload_id=upload.id, part_ids=[part.id])
    with pytest.raises(openai.NotFoundError):
        bob.uploads.cancel(upload.id)
    done = alice.uploads.complete(upload_id=upload.id, part_ids=[part.id])
    assert done.file is not None
    with pytest.raises(openai.NotFoundError):
        bob.files.retrieve(done.file.id)
    assert alice.files.content(done.file.id).content == content


def test_an_upload_to_object_storage_is_composed_there(db_url: str, tmp_path: Path) -> None:
    """Parts of 5 MiB and more are copied inside the bucket; the rest stream through."""
    lines = [chat_line(f"req-{i}", f"{i} " + "word " * 400) for i in range(6000)]
    content = ("\n".join(lines) + "\n").encode()
    assert len(content) > 11 * MiB
    path = tmp_path / "big.jsonl"
    path.write_bytes(content)
    with s3_server(log=tmp_path / "moto.log") as s3:
        bucket = s3.create_bucket()
        stack = Stack(db_url, tmp_path, env=bucket.env).start(spot=0, dedicated=0)
        try:
            client = stack.client()
            upload = client.uploads.upload_file_chunked(
                file=path,
                mime_type="application/jsonl",
                purpose="batch",
                bytes=len(content),
                part_size=5 * MiB,
                md5=hashlib.md5(content).hexdigest(),
            )
            assert upload.status == "completed" and upload.file is not None
            assert client.files.content(upload.file.id).content == content
            keys = s3.keys(bucket)
            assert len(keys) == 1 and keys[0].startswith(f"{bucket.prefix}/upload/"), keys
            assert s3.open_uploads(bucket) == []
            head = s3.client().head_object(Bucket=bucket.name, Key=keys[0])
            assert head["ContentLength"] == len(content)
        finally:
            stack.close()
